"""Beyond one simulation on one machine: an existing Ray cluster, Hydra launchers for sweeps,
and fedlab's replacement for the simulation engine's fixed 0.1 s message loop.

The ``simulation``-marked tests start real processes: a Ray head on this machine (in its own
temp dir and process group, so no other Ray on the machine sees or loses it) and a parallel
joblib sweep.
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
import tempfile
import threading
import time
from pathlib import Path
from queue import Queue
from types import SimpleNamespace

import flwr
import pytest
from hydra import compose, initialize_config_module

from fedlab.config.schema import SimulationConfig, register_configs
from fedlab.engines import ray as ray_engine

BIN = Path(sys.executable).parent
EXE = BIN / "fedlab-run"
CONF = Path(__file__).resolve().parents[1] / "conf"
LAUNCHERS = sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))


# --- Ray cluster ---------------------------------------------------------------------------


def test_cluster_address_connects_without_starting_ray() -> None:
    init_args = ray_engine.backend_config(SimulationConfig(ray_address="10.0.0.1:6379"))[
        "init_args"
    ]
    assert init_args["address"] == "10.0.0.1:6379" and "num_cpus" not in init_args
    with pytest.raises(ValueError, match=r"simulation.ray_num_cpus: must be null"):
        SimulationConfig(ray_address="auto", ray_num_cpus=4)  # a ConfigError, at start-up


def _free_ports(count: int) -> list[int]:
    """Free TCP ports outside Ray's default worker range (10002-19999)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10000 <= port < 20000 and port not in ports:
            ports.append(port)
    return ports


@pytest.fixture()
def ray_head():
    """A Ray head node on this machine, as `ray start --head` makes one; yields its address.

    ``--block`` keeps the head's processes children of one process in a session of its own:
    stopping it stops exactly them (`ray stop` would kill every Ray on the machine, including
    other people's simulations). Its own temp dir keeps it out of /tmp/ray, where a plain
    ``ray.init()`` elsewhere would find it and connect to it.
    """
    temp_dir = tempfile.mkdtemp(prefix="fl-ray-", dir="/tmp")  # Ray's socket paths are short
    port, client_port, agent_port = _free_ports(3)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    log_path = Path(temp_dir) / "head.log"
    with log_path.open("w") as log:
        head = subprocess.Popen(
            [
                str(BIN / "ray"), "start", "--head", "--block",
                "--node-ip-address=127.0.0.1", f"--port={port}",
                f"--ray-client-server-port={client_port}",
                f"--dashboard-agent-listen-port={agent_port}",
                "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                f"--temp-dir={temp_dir}",
            ],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log_path.read_text():
            assert head.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start within 120 s"
            time.sleep(0.5)
        yield SimpleNamespace(address=f"127.0.0.1:{port}", process=head, temp_dir=Path(temp_dir))
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # anything left of that session: ours
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.simulation
def test_run_on_an_existing_ray_cluster(ray_head, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [str(EXE), "simulation=ray_cluster", f"simulation.ray_address={ray_head.address}",
         "num_clients=4", "num_rounds=2", "carbon=off", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["rounds_completed"] == 2
    assert results["accuracy"] > 0.5
    # The clients ran in worker processes of that cluster (their logs are in its session) ...
    logs = ray_head.temp_dir / "session_latest" / "logs"
    assert list(logs.glob("worker-*.out")), sorted(p.name for p in logs.iterdir())
    # ... and Flower's ray.shutdown() at the end only disconnected the driver: the cluster runs on.
    assert ray_head.process.poll() is None
    status = subprocess.run(
        [str(BIN / "ray"), "status", f"--address={ray_head.address}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0 and "2.0 CPU" in status.stdout, status.stdout + status.stderr


# --- Hydra launchers -----------------------------------------------------------------------


def _hydra_cfg(*overrides: str):
    register_configs()
    with initialize_config_module(config_module="fedlab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_every_launcher_config_composes() -> None:
    assert {"parallel", "slurm"} <= set(LAUNCHERS)
    for name in LAUNCHERS:
        launcher = _hydra_cfg(f"hydra/launcher={name}").hydra.launcher
        assert launcher._target_.startswith("hydra_plugins."), name


def test_parallel_is_joblib_and_slurm_is_submitit() -> None:
    joblib = _hydra_cfg("hydra/launcher=parallel").hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 2
    slurm = _hydra_cfg("hydra/launcher=slurm", "hydra.launcher.partition=cpu").hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.timeout_min, slurm.cpus_per_task, slurm.nodes) == (
        "cpu",
        60,
        8,
        1,
    )


def test_cfg_hydra_shows_the_launcher(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(EXE), "hydra/launcher=joblib", "hydra.launcher.n_jobs=3", "--cfg", "hydra"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "JoblibLauncher" in result.stdout and "n_jobs: 3" in result.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.simulation
def test_joblib_sweep_runs_in_parallel(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [str(EXE), "-m", "hydra/launcher=parallel", "num_clients=2", "num_rounds=1",
         "carbon=off", "simulation=local", "simulation.ray_num_cpus=1", "seed=1,2",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for job in ("0", "1"):
        results = json.loads((sweep / job / "results.json").read_text())
        assert results["status"] == "completed" and results["rounds_completed"] == 1
    assert "fedlab: multirun: 2 runs" in result.stdout


# --- The simulation engine's message loop --------------------------------------------------


class _FakeState:
    """The part of Flower's InMemoryLinkState that the engine loop uses."""

    def __init__(self) -> None:
        self.message_ins_store: dict[str, SimpleNamespace] = {}
        self.calls = 0

    def add(self, msg_id: str, node: int) -> None:
        meta = SimpleNamespace(dst_node_id=node, delivered_at="")
        self.message_ins_store[msg_id] = SimpleNamespace(id=msg_id, metadata=meta)

    def get_message_ins(self, node_id: int, limit: int | None) -> list:
        self.calls += 1
        found = [
            m
            for m in self.message_ins_store.values()
            if m.metadata.dst_node_id == node_id and not m.metadata.delivered_at
        ][:limit]
        for m in found:
            m.metadata.delivered_at = "now"
        return found


@pytest.fixture()
def restore_engine(monkeypatch):
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    monkeypatch.setattr(raybackend, "RayBackend", raybackend.RayBackend)
    monkeypatch.setattr(ray_engine, "_engine_poll_s", ray_engine._engine_poll_s)
    monkeypatch.delenv("FEDLAB_FLOWER_ENGINE", raising=False)
    return SimpleNamespace(vce_api=vce_api, raybackend=raybackend)


def test_engine_is_changed_only_on_flwr_1_42(restore_engine, monkeypatch) -> None:
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    vce_api, raybackend = restore_engine.vce_api, restore_engine.raybackend
    assert ray_engine.speed_up_engine(0.01) is True
    assert vce_api.add_messages_to_queue is ray_engine._add_messages_to_queue
    assert issubclass(raybackend.RayBackend, RayBackend) and raybackend.RayBackend.fedlab
    patched_backend = raybackend.RayBackend
    assert ray_engine.speed_up_engine(0.02) is True  # again (multirun): no subclass of subclass
    assert raybackend.RayBackend is patched_backend and ray_engine._engine_poll_s == 0.02
    for version, env in (("1.43.0", None), ("1.42.0", "1")):
        monkeypatch.setattr(flwr, "__version__", version)
        if env:
            monkeypatch.setenv("FEDLAB_FLOWER_ENGINE", env)
        assert ray_engine.speed_up_engine(0.01) is False  # Flower's own engine, restored
        assert vce_api.add_messages_to_queue is ray_engine._flower_engine["loop"]
        assert raybackend.RayBackend is ray_engine._flower_engine["backend"]
        assert not getattr(raybackend.RayBackend, "fedlab", False)


def test_engine_loop_delivers_within_its_interval_in_node_order(restore_engine) -> None:
    ray_engine.speed_up_engine(0.005)
    state, queue, stop = _FakeState(), Queue(), threading.Event()
    nodes = {30: 0, 10: 1, 20: 2}  # node id -> partition id, in registration order
    loop = threading.Thread(
        target=restore_engine.vce_api.add_messages_to_queue, args=(state, queue, nodes, stop)
    )
    loop.start()
    try:
        time.sleep(0.1)
        assert state.calls == 0  # nothing waiting: no per-node scans at all
        started = time.perf_counter()
        for msg_id, node in (("a", 20), ("b", 30), ("c", 99)):  # 99: not a node of this run
            state.add(msg_id, node)
        first = queue.get(timeout=1)
        latency = time.perf_counter() - started
        second = queue.get(timeout=1)
        assert [first.id, second.id] == ["b", "a"]
        assert latency < 0.05  # Flower's loop: up to 0.1 s
        time.sleep(0.05)
        assert queue.empty() and state.message_ins_store["c"].metadata.delivered_at == ""
    finally:
        stop.set()
        loop.join(timeout=5)
    assert not loop.is_alive()
