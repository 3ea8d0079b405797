"""fedlab on Flower's Deployment Engine, over loopback, with the commands of docs/deployment.md.

The end-to-end test starts a SuperLink (TLS, SuperNode authentication) and two SuperNodes as
subprocesses, submits a 2-client, 2-round run with ``flwr run`` and checks the record the
ServerApp wrote, including that the final model is bit-for-bit the one the same config gives
in-process. Measured: 86 s on the shared 2-core machine at load average 8.5 (Flower starts a
ClientApp process per message, and an idle SuperNode waits 3 s between polls).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedlab.config.schema import ConfigError
from fedlab.fl.client_app import ClientSpec
from fedlab.record.run_dir import load_model, read_csv

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OVERRIDES = ("num_clients=2", "num_rounds=2", "carbon=off")
# The end-to-end run skips federated evaluation: each phase costs a ClientApp process per node
# and a 3 s SuperNode poll (the evaluate handler is covered in-process below).
DEPLOYED = (*OVERRIDES, "strategy.fraction_evaluate=0")


# ---------------------------------------------------------------- in-process parts (fast)


def _context(run_config: dict, node_config: dict | None = None):
    from flwr.app import Context, RecordDict

    return Context(
        run_id=7,
        node_id=1,
        node_config=node_config or {"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config=run_config,
    )


def test_overrides_come_from_the_run_config() -> None:
    from fedlab.engines.deployment import overrides_of

    assert overrides_of({"overrides": "strategy=fedprox 'model.hidden=[16, 8]'"}) == [
        "strategy=fedprox",
        "model.hidden=[16, 8]",
    ]
    assert overrides_of({}) == []
    with pytest.raises(ConfigError, match="resume"):
        overrides_of({"overrides": "resume=outputs/x"})


def test_bad_overrides_are_one_config_error() -> None:
    from fedlab.engines.deployment import compose_config

    with pytest.raises(ConfigError, match="overrides"):
        compose_config(["strategy=nope"])


def test_a_node_derives_its_spec_and_prepares_data_once(tmp_path, compose_cfg, monkeypatch) -> None:
    from fedlab.config.experiment import Experiment
    from fedlab.data.partition import FederatedData
    from fedlab.engines import deployment

    context = _context({"overrides": " ".join(OVERRIDES)}, {"partition-id": 1})
    monkeypatch.setenv(deployment.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(deployment, "_specs", {})
    spec = deployment.client_spec(context)
    deployment._specs.clear()  # a new ClientApp process: derived again, data reused
    again = deployment.client_spec(context)
    assert isinstance(spec, ClientSpec) and spec == again
    assert [p.name for p in tmp_path.iterdir()] == [Path(spec.data_path).name]
    exp = Experiment.from_config(compose_cfg(*OVERRIDES))
    assert spec.model == dict(exp.cfg.model) and spec.seed == exp.cfg.seed
    cached, fresh = FederatedData.load(Path(spec.data_path)), exp.load_data()
    for a, b in zip(cached.client_train, fresh.client_train, strict=True):
        assert (a == b).all()


@pytest.mark.parametrize("extra", [(), ("strategy=scaffold", "num_rounds=3")])
def test_deployed_clientapp_trains_like_the_simulation_one(
    run_inprocess, tmp_path, monkeypatch, extra
) -> None:
    """The module-level ClientApp (spec from run_config) gives the closure's model exactly;
    a stateful algorithm's nodes keep their clients' state in their own cache folder."""
    from fedlab.engines import deployment

    overrides = (*OVERRIDES, *extra)
    monkeypatch.setenv(deployment.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(deployment, "_specs", {})

    def deployed(spec):
        def app(msg, context):
            context.run_config = {"overrides": " ".join(overrides)}
            return deployment.clientapp(msg, context)

        return app

    _, _, closure, _ = run_inprocess(*overrides)
    _, _, from_run_config, _ = run_inprocess(*overrides, app_override={0: deployed, 1: deployed})
    a = load_model(closure.dir / "model.safetensors")
    b = load_model(from_run_config.dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(deployment._specs) == 1
    if extra:  # node-local state, none in the server's run directory
        assert sorted(p.name for p in (tmp_path / "cache" / "client_state").iterdir())
        assert not (from_run_config.dir / "client_state").exists()


def test_polling_grid_collects_replies_and_respects_the_timeout() -> None:
    from types import SimpleNamespace

    from fedlab.engines.deployment import PollingGrid

    class Grid:
        def __init__(self) -> None:
            self.pulls = 0

        def push_messages(self, messages):
            return ["a", "b"]

        def pull_messages(self, ids):
            self.pulls += 1
            if self.pulls == 1:
                return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id="a"))]
            return []

        def get_node_ids(self):
            return [1, 2]

    grid = PollingGrid(Grid(), interval=0.01)
    started = time.monotonic()
    replies = grid.send_and_receive([], timeout=0.2)
    assert len(replies) == 1 and 0.2 <= time.monotonic() - started < 2
    assert grid.get_node_ids() == [1, 2]  # everything else is Flower's Grid


# ------------------------------------------------------- SuperLink + SuperNodes (slow)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on port {port} after {timeout:g} s:\n{log.read_text()[-3000:]}")


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pids: set[int]) -> dict[int, str | None]:
    """Every process below ``pids`` (Flower's SuperExec, ServerApp and ClientApp processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found: dict[int, str | None] = {}
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = _start_time(child)
                todo.append(child)
    return found


class Processes:
    """The subprocesses a test starts; :meth:`stop` ends them and everything they started."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.logs / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.logs,
            )
        self.started.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM to each process and its descendants, SIGKILL to any left after 10 s."""
        mine = {p.pid for p in self.started if p.poll() is None}
        below = _descendants(mine)
        every = {pid: _start_time(pid) for pid in mine} | below

        def signal_all(sig: int) -> None:
            for pid, started in every.items():
                if started is not None and _start_time(pid) == started:  # still that process
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)

        signal_all(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        signal_all(signal.SIGKILL)
        for process in self.started:
            process.wait(timeout=10)


def _run(env: dict[str, str], *args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


@pytest.mark.deployment
@pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("ssh-keygen")),
    reason="scripts/make_certs.sh needs openssl and ssh-keygen",
)
def test_tls_deployment_with_node_authentication(tmp_path, run_inprocess) -> None:
    certs, home, logs, run_dir = (tmp_path / d for d in ("certs", "flwr", "logs", "run"))
    logs.mkdir()
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "make_certs.sh"), str(certs), "2"],
        check=True,
        capture_output=True,
    )
    link = _free_port()
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
        "FEDLAB_CACHE_DIR": str(tmp_path / "cache"),
    }
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "fedlab-test"\n\n'
        f'[superlink.fedlab-test]\naddress = "127.0.0.1:{link}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n'
    )
    processes = Processes(env, logs)
    try:
        superlink = processes.start(
            "superlink",
            "flower-superlink",
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "server.pem"),
            "--ssl-keyfile",
            str(certs / "server.key"),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--port",
            str(link),
        )
        _wait_for_port(link, superlink, logs / "superlink.log")
        for k in range(2):
            _run(env, "flwr", "supernode", "register", str(certs / f"node-{k}.pub"), "fedlab-test")
            processes.start(
                f"supernode-{k}",
                "flower-supernode",
                "--superlink",
                f"127.0.0.1:{link}",
                "--root-certificates",
                str(certs / "ca.crt"),
                "--auth-supernode-private-key",
                str(certs / f"node-{k}"),
                "--port",
                str(_free_port()),
                "--node-config",
                f"partition-id={k} num-partitions=2",
            )
        output = _run(
            env,
            "flwr",
            "run",
            str(ROOT),
            "fedlab-test",
            "--stream",
            "--run-config",
            f'overrides="{" ".join(DEPLOYED)}" run-dir="{run_dir}"',
            timeout=300,
        )
    finally:
        processes.stop()
    node_logs = "\n".join(p.read_text()[-1500:] for p in sorted(logs.glob("*.log")))
    assert (run_dir / "results.json").exists(), output[-3000:] + node_logs

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed", results.get("error")
    assert results["rounds_completed"] == 2
    assert results["overrides"] == list(DEPLOYED)
    rounds = read_csv(run_dir / "rounds.csv")
    assert [int(r["round"]) for r in rounds] == [0, 1, 2]
    assert float(rounds[-1]["central_accuracy"]) > 0.5  # 10 classes: chance is 0.1
    clients = read_csv(run_dir / "clients.csv")
    for server_round in (1, 2):
        rows = [r for r in clients if int(r["round"]) == server_round]
        assert sorted(int(r["client"]) for r in rows) == [0, 1]
        assert all(r["status"] == "ok" and r["phase"] == "train" for r in rows)
    assert "fedlab: completed 2 rounds" in output

    # The same experiment in-process (no Flower engine) gives the same model, bit for bit.
    _, _, record, _ = run_inprocess(*DEPLOYED)
    deployed, inprocess = (
        load_model(run_dir / "model.safetensors"),
        load_model(record.dir / "model.safetensors"),
    )
    assert deployed.keys() == inprocess.keys()
    assert all(torch.equal(deployed[k], inprocess[k]) for k in deployed)
    assert results["accuracy"] == record.results["accuracy"]
