"""The real thing, kept small: fedlab-run on Flower's Ray simulation engine (about 15 s and
2 GiB per simulation here, so only these few)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedlab.record.run_dir import read_csv

pytestmark = pytest.mark.simulation
EXE = Path(sys.executable).parent / "fedlab-run"
ARGS = ["num_clients=4", "num_rounds=3", "model.hidden=[32]", "strategy=fedprox",
        "stragglers.fraction=0.5", "failures.rate=0.2", "client.local_epochs=2"]


def _fedlab_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_run_on_ray_writes_a_complete_record(tmp_path: Path, run_inprocess) -> None:
    run_dir = tmp_path / "run"
    result = _fedlab_run(*ARGS, "simulation=local", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert sum(line.startswith("round ") for line in lines) == 4  # rounds 0..3, one line each
    assert "completed 3 rounds" in result.stdout and "gCO2e" in result.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["rounds_completed"] == 3
    for name in ("config.yaml", "rounds.csv", "clients.csv", "model.safetensors",
                 "partition.png", "curves.png", "emissions.csv", "run.log"):
        assert (run_dir / name).stat().st_size > 0, name
    rounds = read_csv(run_dir / "rounds.csv")
    assert [r["round"] for r in rounds] == ["0", "1", "2", "3"]
    assert results["carbon"]["energy_kwh"] > 0
    # Ray's scheduling order must not matter: the same config in-process, client by client
    # in a fixed order, gives bit-identical results.
    _, _, local, _ = run_inprocess(*ARGS)
    assert local.results["accuracy"] == results["accuracy"]
    assert local.results["loss"] == results["loss"]
    assert read_csv(local.dir / "rounds.csv")[-1]["clients_failed"] == rounds[-1]["clients_failed"]
    # So does fedlab-run's own in-process backend (no Ray at all).
    serial = tmp_path / "inprocess"
    _fedlab_run(*ARGS, "simulation=inprocess", f"hydra.run.dir={serial}", cwd=tmp_path)
    same = json.loads((serial / "results.json").read_text())
    assert same["status"] == "completed"
    assert (same["accuracy"], same["loss"]) == (results["accuracy"], results["loss"])
    assert read_csv(serial / "clients.csv") and same["carbon"]["energy_kwh"] > 0


def test_multirun_runs_simulations_back_to_back_and_reproducibly(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    _fedlab_run("-m", "num_clients=3", "num_rounds=2", "carbon=off", "seed=7,7",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    first, second = (json.loads((sweep / str(i) / "results.json").read_text()) for i in (0, 1))
    assert first["status"] == second["status"] == "completed"
    assert first["accuracy"] == second["accuracy"] and first["loss"] == second["loss"]
    assert first["carbon"]["energy_kwh"] is None  # carbon=off
    # Rerunning the same multirun skips every finished run and says so.
    again = _fedlab_run("-m", "num_clients=3", "num_rounds=2", "carbon=off", "seed=7,7",
                        f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert "2 runs" in again.stdout and "2 skipped (already completed)" in again.stdout
    assert json.loads((sweep / "0" / "results.json").read_text()) == first


def _checkpoint_round(path: Path) -> int:
    """The round in a safetensors checkpoint's metadata (read without importing torch)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            return int(json.loads(f.read(size))["__metadata__"]["round"])
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_run_resumes_to_the_same_result(tmp_path: Path, run_inprocess) -> None:
    """SIGKILL in the middle of a run, then `fedlab-run resume=DIR`: the same accuracy, loss
    and epsilon as the run never interrupted, with carbon counted over both parts."""
    import os
    import signal
    import time

    args = ["num_clients=4", "num_rounds=12", "model.hidden=[32]", "strategy=fedadam",
            "privacy=local", "client.local_epochs=3", "simulation=local"]
    run_dir = tmp_path / "run"
    process = subprocess.Popen([str(EXE), *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while _checkpoint_round(run_dir / "checkpoint.safetensors") < 3:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the driver, its Ray daemons and client actors
    process.wait()
    killed = json.loads((run_dir / "results.json").read_text())
    assert killed["status"] == "running" and killed["rounds_completed"] < 12

    result = _fedlab_run(f"resume={run_dir}", cwd=tmp_path)
    assert "resuming" in result.stdout
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["status"] == "completed" and resumed["rounds_completed"] == 12
    assert len(resumed["resumed"]) == 1
    rounds = read_csv(run_dir / "rounds.csv")
    assert [int(r["round"]) for r in rounds] == list(range(13))  # no round lost or doubled
    assert all(float(r["energy_kwh"]) > 0 for r in rounds[1:])  # carbon of both parts

    _, _, never_stopped, _ = run_inprocess(*args)
    assert resumed["accuracy"] == never_stopped.results["accuracy"]
    assert resumed["loss"] == never_stopped.results["loss"]
    assert resumed["privacy"]["epsilon"] == never_stopped.results["privacy"]["epsilon"]


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path: Path) -> None:
    import signal
    import time

    run_dir = tmp_path / "run"
    # A background shell (nohup, `&`) starts its children with SIGINT ignored; restore the
    # default so the run receives Ctrl-C as it would in a terminal.
    process = subprocess.Popen(
        [str(EXE), "num_clients=3", "num_rounds=40", "carbon=off", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while _checkpoint_round(run_dir / "checkpoint.safetensors") < 1:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and results["rounds_completed"] >= 1
    assert f"fedlab-run resume={run_dir}" in stdout + stderr
    assert "Traceback" not in stderr
