"""SIGTERM and SIGHUP (``kill``, SLURM preemption, a closed terminal) sent to a real
``fedlab-run`` process: the run ends as ``interrupted`` with its checkpoint intact, exit 143, on
the in-process engine and on Ray (whose driver handler would otherwise abort, exit 134)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_simulation import _checkpoint_round

EXE = Path(sys.executable).parent / "fedlab-run"
ARGS = ["num_clients=3", "num_rounds=200", "carbon=off", "model.hidden=[16]"]


def _signal_mid_run(run_dir: Path, signum: int, *args: str) -> tuple[int, str, dict]:
    process = subprocess.Popen(
        [str(EXE), *ARGS, *args, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while _checkpoint_round(run_dir / "checkpoint.safetensors") < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stdout + stderr, json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_terminating_signal_ends_the_run_as_interrupted(tmp_path: Path, signum: int) -> None:
    run_dir = tmp_path / "run"
    code, output, results = _signal_mid_run(run_dir, signum, "simulation=inprocess")
    assert code == 143, output[-2000:]
    assert results["status"] == "interrupted"
    assert results["error"] == f"{signal.Signals(signum).name} received"
    assert 2 <= results["rounds_completed"] < 200
    assert f"fedlab-run resume={run_dir}" in output and "Traceback" not in output
    # the checkpoint is intact: the run resumes from it (and is refused nothing)
    assert _checkpoint_round(run_dir / "checkpoint.safetensors") >= 2


@pytest.mark.simulation
@pytest.mark.parametrize("engine", ["local", "pool"], ids=["ray", "pool"])
def test_sigterm_on_ray_is_an_interruption_not_an_abort(tmp_path: Path, engine: str) -> None:
    """On Ray and on the process pool (the default engine here), SIGTERM interrupts."""
    run_dir = tmp_path / "run"
    code, output, results = _signal_mid_run(run_dir, signal.SIGTERM, f"simulation={engine}")
    assert code == 143, output[-2000:]
    assert results["status"] == "interrupted" and results["error"] == "SIGTERM received"
