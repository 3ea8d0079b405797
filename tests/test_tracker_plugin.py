"""A tracker added through config only (tests/plugins/wallclock_tracker.py, no edit under
fedlab/): its columns reach the record, its summary results.json, its state survives
``resume=``, and it appears in fedlab-compare and the model card."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedlab.trackers.base import Tracker, order

EXE = Path(sys.executable).parent
PLUGINS = Path(__file__).resolve().parent / "plugins"  # importable by fedlab-run via PYTHONPATH
TRACKER = "+trackers.wallclock._target_=wallclock_tracker.WallClockTracker"
ARGS = ("simulation=inprocess", "num_clients=4", "num_rounds=4", TRACKER)


def _run(tool: str, *args: str, cwd: Path, fail_at: int | None = None):
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    env.pop("WALLCLOCK_FAIL_AT_ROUND", None)
    if fail_at is not None:
        env["WALLCLOCK_FAIL_AT_ROUND"] = str(fail_at)
    return subprocess.run([str(EXE / tool), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run interrupted at the end of round 3 (after round 2's checkpoint), then resumed."""
    tmp = tmp_path_factory.mktemp("plugin")
    run_dir = tmp / "run"
    broken = _run("fedlab-run", *ARGS, f"hydra.run.dir={run_dir}", cwd=tmp, fail_at=3)
    assert broken.returncode == 1, broken.stderr[-2000:]
    first = json.loads((run_dir / "results.json").read_text())
    assert first["status"] == "failed" and first["rounds_completed"] == 2
    assert "asked to fail at round 3" in first["error"]
    done = _run("fedlab-run", f"resume={run_dir}", cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir


def test_columns_summary_and_state_survive_resume(resumed: Path) -> None:
    results = json.loads((resumed / "results.json").read_text())
    assert results["status"] == "completed" and results["rounds_completed"] == 4
    assert results["trackers"]["wallclock"] == "wallclock_tracker.WallClockTracker"
    rounds = _rows(resumed / "rounds.csv")
    assert list(rounds[0])[-2:] == ["wall_s", "client_rounds"]  # after every fedlab column
    # 4 clients train each round; the count restarts from the checkpoint's, not from zero
    assert [r["client_rounds"] for r in rounds] == ["", "4", "8", "12", "16"]
    clients = _rows(resumed / "clients.csv")
    trained = [float(r["wall_s"]) for r in clients if r["phase"] == "train"]
    assert len(trained) == 16 and all(s > 0 for s in trained)
    section = results["wallclock"]
    assert section["client_rounds"] == 16
    # the total is every recorded row's seconds: rounds 1-2 from before the failure included
    assert math.isclose(section["total_s"], sum(trained), rel_tol=1e-9)
    assert section["joules_per_client_s"] > 0  # it read carbon's energy: ``after`` ordered it


def test_card_and_compare_show_the_tracker(resumed: Path, tmp_path: Path) -> None:
    card = (resumed / "model_card.md").read_text()
    assert "## Client wall-clock time" in card and "16 client-rounds" in card
    out = tmp_path / "report"
    result = _run("fedlab-compare", str(resumed), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "client wall s" in result.stdout
    (row,) = _rows(out / "comparison.csv")
    total = json.loads((resumed / "results.json").read_text())["wallclock"]["total_s"]
    assert math.isclose(float(row["wall_s"]), total, rel_tol=1e-9)
    assert "pareto_wallclock" in row


def test_order_runs_dependencies_first_and_refuses_cycles() -> None:
    def tracker(name: str, after: tuple[str, ...]) -> type[Tracker]:
        return type(name, (Tracker,), {"name": name, "after": after})

    a, b, c = tracker("a", ("c",)), tracker("b", ()), tracker("c", ("missing",))
    assert [t.name for t in order([a, b, c])] == ["c", "a", "b"]
    with pytest.raises(ValueError, match="depends on itself"):
        order([tracker("x", ("y",)), tracker("y", ("x",))])


@pytest.mark.parametrize(("before", "recorded"), [(False, 2), (True, 1)])
def test_a_tracker_can_stop_the_run_with_its_own_status(
    tmp_path: Path, before: bool, recorded: int
) -> None:
    run_dir = tmp_path / "run"
    result = _run(
        "fedlab-run", "simulation=inprocess", "num_clients=3", "num_rounds=4", "carbon=off",
        "+trackers.stopper._target_=stopping_tracker.StoppingTracker",
        f"+trackers.stopper.before={str(before).lower()}", f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        "fedlab-run: error: run stopped: stop_test"
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "stop_test" and results["rounds_completed"] == recorded
    assert results["stopped"]["round"] == recorded
    assert len(_rows(run_dir / "rounds.csv")) == recorded + 1  # round 0 too
    assert (run_dir / "model_card.md").exists() and (run_dir / "checkpoint.safetensors").exists()
