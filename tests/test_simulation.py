"""The real thing, kept small: fedlab-run on Flower's Ray simulation engine (about 15 s and
2 GiB per simulation here, so only these few)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedlab.record import read_csv

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
    result = _fedlab_run(*ARGS, f"hydra.run.dir={run_dir}", cwd=tmp_path)
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
