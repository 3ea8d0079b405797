"""Reports find every tracker through the record: the reader, a user-defined tracker in
fedlab-compare, the model card and curves.png, and the layering that keeps reports on top."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread
from test_compare import write_run

from fedlab.record.reader import BUILTIN_TRACKERS, load_run
from fedlab.record.run_dir import read_csv, write_csv, write_json
from fedlab.reports.compare import compare, main
from fedlab.reports.curves import plot_curves
from fedlab.reports.metrics import fronts_for, metrics_for
from fedlab.reports.model_card import write_model_card
from fedlab.trackers.base import Objective, Panel, Tracker
from fedlab.trackers.carbon.tracker import CarbonTracker
from fedlab.trackers.devices.tracker import DevicesTracker
from fedlab.trackers.privacy.tracker import PrivacyTracker


class StepsTracker(Tracker):
    """A researcher's tracker, outside fedlab: local steps, a cost accuracy is traded against."""

    name = "steps"
    round_columns = ("steps",)
    objectives = (
        Objective(
            "local_steps",
            (("steps", "total"),),
            header="steps",
            front="steps",
            axis="local SGD steps",
            fmt=".0f",
        ),
    )

    @classmethod
    def card_section(cls, run: Any) -> str | None:
        return f"## Local steps\n\n{run.section('steps').get('total')} steps in all."

    @classmethod
    def run_panels(cls, run: Any) -> list[Panel]:
        rounds, values = run.round_values("steps")
        return [
            Panel("Steps", "round", "steps", (("steps", tuple(map(float, rounds)), tuple(values)),))
        ]

    @classmethod
    def comparison_figures(cls, comparison: Any) -> dict[str, Any]:
        return {
            "steps_per_round": comparison.figures.per_round("steps", "steps", cumulative=False),
            "steps_histogram": "not drawn on purpose",
        }


STEPS = f"{StepsTracker.__module__}.{StepsTracker.__qualname__}"


def with_steps(run_dir: Path, total: int, *, ghost: bool = False) -> Path:
    """Add the steps tracker's section, column and name to a record (and, with ``ghost``, a
    tracker whose module is not installed here)."""
    results = json.loads((run_dir / "results.json").read_text())
    results["steps"] = {"total": total}
    results["trackers"] = {**BUILTIN_TRACKERS, "steps": STEPS}
    if ghost:
        results["trackers"]["ghost"] = "not_installed_here.GhostTracker"
    write_json(run_dir / "results.json", results)
    rows = read_csv(run_dir / "rounds.csv")
    for row in rows:
        row["steps"] = "" if row["round"] == "0" else str(total // (len(rows) - 1))
    write_csv(run_dir / "rounds.csv", rows, [*rows[0], "steps"])
    return run_dir


def with_sim_clock(run_dir: Path) -> Path:
    """Give a record the devices tracker's clock columns: 2 s of device time per round."""
    rows = read_csv(run_dir / "rounds.csv")
    for row in rows:
        r = int(row["round"])
        row["sim_start_s"], row["sim_duration_s"] = ("", "") if r == 0 else (2.0 * (r - 1), 2.0)
    write_csv(run_dir / "rounds.csv", rows, [*rows[0], "sim_start_s", "sim_duration_s"])
    return run_dir


# --------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------


def test_a_record_without_tracker_names_has_the_builtins(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run"))
    assert "trackers" not in run.results
    assert run.trackers == [PrivacyTracker, CarbonTracker, DevicesTracker]


def test_trackers_in_record_order_and_an_unimportable_one_skipped(tmp_path: Path) -> None:
    run_dir = with_steps(write_run(tmp_path / "run"), 30, ghost=True)
    with pytest.warns(UserWarning, match="not_installed_here.GhostTracker"):
        run = load_run(run_dir)
        assert run.trackers == [PrivacyTracker, CarbonTracker, DevicesTracker, StepsTracker]
    results = json.loads((run_dir / "results.json").read_text())
    results["trackers"] = {"carbon": BUILTIN_TRACKERS["carbon"], "json": "json.JSONDecoder"}
    write_json(run_dir / "results.json", results)
    with pytest.warns(UserWarning, match="not a fedlab Tracker"):
        assert load_run(run_dir).trackers == [CarbonTracker]


def test_clients_csv_is_read_only_when_used(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", client_accuracy={1: [0.5, 0.7]})
    run = load_run(run_dir)
    assert "clients" not in vars(run)
    (run_dir / "clients.csv").unlink()
    assert load_run(run_dir).clients == []
    write_run(tmp_path / "again", client_accuracy={1: [0.5, 0.7]})
    clients = load_run(tmp_path / "again").clients
    assert [(r["client"], r["accuracy"]) for r in clients] == [("0", "0.5"), ("1", "0.7")]


def test_reader_and_tracker_reports_stay_below_the_reports_package() -> None:
    modules = [
        "fedlab.record.reader",
        "fedlab.trackers.privacy.report",
        "fedlab.trackers.carbon.report",
        "fedlab.trackers.devices.report",
    ]
    code = (
        f"import sys; import {', '.join(modules)}; "
        "print(sorted(m for m in sys.modules if m.startswith('fedlab.reports')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------
# Metrics and fronts from the trackers
# --------------------------------------------------------------------------------------


def test_builtin_metrics_and_fronts_keep_their_columns() -> None:
    metrics = metrics_for([PrivacyTracker, CarbonTracker, DevicesTracker])
    assert [m.name for m in metrics] == [
        "accuracy", "loss", "federated_accuracy", "federated_loss",
        "epsilon", "delta", "energy_kwh", "emissions_kg", "compute_kg", "communication_kg",
        "bytes", "bytes_down", "bytes_up", "rounds_completed", "duration_s",
        "edge_kwh", "edge_kg", "sim_time_s", "personalized_accuracy", "personalized_worst_10pct",
    ]  # fmt: skip
    fronts = fronts_for(metrics)
    assert [(f.name, f.cost) for f in fronts] == [
        ("carbon", "emissions_kg"),
        ("privacy", "epsilon"),
        ("edge", "edge_kg"),
    ]
    assert [m.name for m in metrics_for([])][:2] == ["accuracy", "loss"]
    assert fronts_for(metrics_for([])) == []


def test_a_user_tracker_is_compared_carded_and_plotted(tmp_path: Path, capsys) -> None:
    root = tmp_path / "sweep"
    for job, (acc, steps) in enumerate([(0.8, 30), (0.85, 60), (0.7, 90)]):
        with_steps(write_run(root / str(job), seed=job, accuracy=acc, emissions=0.001), steps)
    result = compare([root])
    assert result.trackers == [PrivacyTracker, CarbonTracker, DevicesTracker, StepsTracker]
    # measured costs first, then in the order of the metrics (optional ones, edge, last)
    assert [f.name for f in result.fronts] == ["carbon", "privacy", "steps", "edge"]
    # 0.85 with 60 steps beats 0.7 with 90; 0.8 with 30 is the cheapest
    assert {row.label: row.fronts["steps"] for row in result.rows} == {
        "0": True,
        "1": True,
        "2": False,
    }

    out = tmp_path / "report"
    assert main([str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("run")).split()
    assert header.index("steps") == header.index("comm") + 2  # after the built-in costs
    assert header[-2:] == ["pareto", "steps"]  # no run has edge devices: no pareto edge
    assert "skipped steps_histogram.png: not drawn on purpose" in printed
    columns = list(read_csv(out / "comparison.csv")[0])
    assert columns[columns.index("communication_kg") + 1] == "local_steps"
    assert columns.index("pareto_steps") == columns.index("pareto_privacy") + 1
    assert float(read_csv(out / "comparison.csv")[1]["local_steps"]) == 60
    for name in ("pareto_steps.png", "steps_per_round.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert "pareto steps: maximize accuracy, minimize steps" in (out / "comparison.md").read_text()

    card = write_model_card(root / "1").read_text()
    assert "## Local steps\n\n60 steps in all." in card
    assert (
        card.index("## Carbon footprint")
        < card.index("## Local steps")
        < card.index("## Reproduce")
    )

    plot_curves(root / "1")
    assert imread(root / "1" / "curves.png").shape[1] == 3 * 5 * 110  # accuracy, loss, steps


# --------------------------------------------------------------------------------------
# curves.png
# --------------------------------------------------------------------------------------


def test_curves_have_a_third_panel_only_with_simulated_devices(tmp_path: Path) -> None:
    plain = write_run(tmp_path / "plain")
    plot_curves(plain)
    assert imread(plain / "curves.png").shape[1] == 2 * 5 * 110  # 5 in per panel at 110 dpi

    timed = with_sim_clock(write_run(tmp_path / "timed"))
    run = load_run(timed)
    (panel,) = DevicesTracker.run_panels(run)
    assert (panel.title, panel.xlabel) == ("Time to accuracy", "simulated device time (s)")
    ((label, seconds, accuracy),) = panel.series
    assert label == "centralized" and seconds == (0.0, 2.0, 4.0, 6.0)
    assert (
        list(accuracy)
        == run.round_values("central_accuracy")[1]
        == pytest.approx([0.1, 0.1 + 0.7 / 3, 0.1 + 1.4 / 3, 0.8])
    )
    plot_curves(timed)
    image = imread(timed / "curves.png")
    assert image.shape[1] == 3 * 5 * 110 and image[..., :3].std() > 0.05
