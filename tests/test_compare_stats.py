"""An honest fedlab-compare: confidence intervals over seeds, fronts decided by significance,
indistinguishable rows marked, too few seeds warned about, and the figures that show it.

The records are hand-built (tests/test_compare.py's ``write_run``), so every number is known.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from test_compare import write_run

from fedlab.record.run_dir import read_csv
from fedlab.reports.compare import compare, main
from fedlab.reports.stats import ci_halfwidth, significantly_better, welch_p

# Published Student-t quantiles t(0.975, df) (any statistics table): df 1, 2, 4.
T975 = {1: 12.7062, 2: 4.3027, 4: 2.7764}


def test_ci_halfwidth_uses_the_published_t_quantiles() -> None:
    assert ci_halfwidth([1.0, 2.0, 3.0]) == pytest.approx(T975[2] * 1.0 / math.sqrt(3), rel=1e-4)
    assert ci_halfwidth([0.80, 0.82]) == pytest.approx(
        T975[1] * statistics.stdev([0.80, 0.82]) / math.sqrt(2), rel=1e-4
    )
    values = [0.1, 0.4, 0.2, 0.6, 0.3]
    assert ci_halfwidth(values) == pytest.approx(
        T975[4] * statistics.stdev(values) / math.sqrt(5), rel=1e-4
    )
    assert ci_halfwidth([0.5]) is None and ci_halfwidth([]) is None


def test_welch_p_matches_the_textbook_example() -> None:
    # Welch's t-test, Wikipedia's first example: t = -2.46, df = 25.0, p = 0.021.
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    stats_a = (statistics.fmean(a), statistics.stdev(a), len(a))
    stats_b = (statistics.fmean(b), statistics.stdev(b), len(b))
    assert welch_p(*stats_a, *stats_b) == pytest.approx(0.021, abs=0.0005)
    assert significantly_better(stats_b, stats_a, maximize=True) is True
    assert significantly_better(stats_a, stats_b, maximize=True) is False
    assert significantly_better(stats_a, stats_b, maximize=False) is True
    # deterministic numbers (no spread): any difference is significant, none is not
    assert welch_p(1.0, 0.0, 2, 1.0, 0.0, 2) == 1.0 and welch_p(1.0, 0.0, 2, 2.0, 0.0, 2) == 0.0
    assert significantly_better((1.0, None, 1), (0.0, None, 1), maximize=True) is None


def sweep_2x2(root: Path, *, by_hand: bool = False) -> Path:
    """The issue's 2x2 sweep: fedavg/fedprox x 2 seeds, identical accuracy per seed, fedprox
    ~3 % less (noisy, measured) emissions."""
    runs = {
        "fedavg": [(0.80, 0.0100), (0.82, 0.0106)],
        "fedprox": [(0.80, 0.0097), (0.82, 0.0103)],
    }
    job = 0
    for strategy, values in runs.items():
        for seed, (acc, kg) in enumerate(values):
            write_run(root / str(job), strategy=strategy, seed=seed, accuracy=acc, emissions=kg)
            job += 1
    return root


@pytest.mark.parametrize("by", [["strategy"], []])
def test_noise_puts_no_group_on_a_front_alone(tmp_path: Path, by: list[str]) -> None:
    result = compare([sweep_2x2(tmp_path / "sweep")], by=by)
    assert result.grouped and len(result.rows) == 2  # without --by: grouped over seeds
    assert [row.fronts["carbon"] for row in result.rows] == [True, True]
    assert [len(row.ties["carbon"]) for row in result.rows] == [1, 1]
    assert all(row.fronts["carbon"] for row in result.run_rows)  # runs take their group's flag
    assert any("warning: fewer than 3 completed seeds" in note for note in result.notes)


def test_cli_marks_the_2x2_groups_indistinguishable_and_warns(tmp_path: Path, capsys) -> None:
    root = sweep_2x2(tmp_path / "sweep")
    assert main([str(root), "--by", "strategy"]) == 0
    out = capsys.readouterr().out
    fedprox = next(line for line in out.splitlines() if line.startswith("fedprox"))
    assert fedprox.split()[-2] == "~"
    ci = T975[1] * statistics.stdev([0.80, 0.82]) / math.sqrt(2)
    assert f"0.8100 ± {ci:.4f}" in fedprox
    assert "Student-t 95% confidence interval" in out and "Welch t-test" in out
    assert "pareto carbon: maximize accuracy, minimize kgCO2e (measured, noisy)" in out
    assert "indistinguishable (~): fedavg ~ fedprox" in out
    assert "modelled (deterministic from counted bytes/work): comm kg" in out
    report = (root / "comparison.md").read_text()
    assert "warning: fewer than 3 completed seeds in fedavg (n=2), fedprox (n=2)" in report
    groups = {g["strategy"]: g for g in read_csv(root / "comparison_groups.csv")}
    assert float(groups["fedprox"]["accuracy_ci95"]) == pytest.approx(ci, rel=1e-4)
    assert groups["fedprox"]["tied_carbon"] == "fedavg"


def write_groups(root: Path, groups: dict[str, list[tuple[float, float]]]) -> Path:
    job = 0
    for strategy, values in groups.items():
        for seed, (acc, kg) in enumerate(values):
            write_run(root / str(job), strategy=strategy, seed=seed, accuracy=acc, emissions=kg)
            job += 1
    return root


def test_a_group_significantly_better_on_both_dominates(tmp_path: Path) -> None:
    root = write_groups(
        tmp_path / "sweep",
        {
            "fedavg": [(0.90, 0.0010), (0.91, 0.00101), (0.92, 0.00099)],
            "fedprox": [(0.80, 0.0020), (0.81, 0.00202), (0.79, 0.00198)],
        },
    )
    rows = {row.label: row for row in compare([root], by=["strategy"]).rows}
    assert rows["fedavg"].fronts["carbon"] is True and rows["fedavg"].ties["carbon"] == []
    assert rows["fedprox"].fronts["carbon"] is False
    assert not any("fewer than 3" in n for n in compare([root], by=["strategy"]).notes)


def test_better_on_one_objective_only_keeps_both_on_the_front(tmp_path: Path) -> None:
    # fedavg is significantly more accurate; the kg differ by noise only: neither dominates,
    # and they are distinguishable (accuracy), so both are plain "on the front".
    root = write_groups(
        tmp_path / "sweep",
        {
            "fedavg": [(0.90, 0.0010), (0.91, 0.0012), (0.92, 0.0008)],
            "fedprox": [(0.80, 0.0011), (0.81, 0.0009), (0.79, 0.0010)],
        },
    )
    rows = compare([root], by=["strategy"]).rows
    assert [(r.fronts["carbon"], r.ties["carbon"]) for r in rows] == [(True, []), (True, [])]


def test_single_runs_say_there_is_no_interval(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write_run(root / "0", strategy="fedavg", accuracy=0.8, emissions=0.001)
    write_run(root / "1", strategy="fedprox", accuracy=0.8, emissions=0.002)
    result = compare([root])
    assert not result.grouped
    assert [row.fronts["carbon"] for row in result.rows] == [True, False]  # plain Pareto
    assert any("single runs (n = 1 each): no confidence interval" in n for n in result.notes)


def test_runs_differing_only_in_seed_are_flagged_as_noise(tmp_path: Path) -> None:
    root = tmp_path / "seeds"
    for seed in range(3):
        write_run(root / str(seed), seed=seed, accuracy=0.8 + seed / 100, emissions=0.001)
    notes = compare([root]).notes
    assert any("differ only in seed" in n for n in notes)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------

REGIONS = {
    "FRA": {"clients": 2, "compute_kg": 0.004, "communication_kg": 0.001, "emissions_kg": 0.005},
    "POL": {"clients": 2, "compute_kg": 0.003, "communication_kg": 0.001, "emissions_kg": 0.004},
}


def seeded_sweep(root: Path) -> Path:
    job = 0
    for strategy in ("fedavg", "fedprox"):
        for seed in range(3):
            write_run(
                root / str(job),
                strategy=strategy,
                seed=seed,
                accuracy=0.8 + seed / 100,
                emissions=0.01,
                regions=REGIONS,
            )
            job += 1
    return root


def test_per_round_figure_draws_a_mean_and_a_band_per_group(tmp_path: Path) -> None:
    from fedlab.reports.plots import figures

    result = compare([seeded_sweep(tmp_path / "sweep")], by=["strategy"])
    drawn = dict(figures(result))
    ax = drawn["accuracy_per_round.png"].axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2  # a line and a band per group
    mean_line = ax.lines[0]
    finals = [0.8, 0.81, 0.82]  # write_run reaches its accuracy in the last round
    assert mean_line.get_ydata()[-1] == pytest.approx(statistics.fmean(finals))
    assert "min-max" in ax.get_title() and result.name in ax.get_title()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert all(float(t).is_integer() for t in ticks)
    region_ax = drawn["emissions_per_region.png"].axes[0]
    assert [t.get_text() for t in region_ax.get_xticklabels()] == ["fedavg", "fedprox"]
    assert region_ax.get_xlabel() and result.name in region_ax.get_title()


def test_region_bars_of_single_runs_are_named_by_their_overrides(tmp_path: Path) -> None:
    from fedlab.reports.plots import figures

    root = tmp_path / "sweep"
    write_run(root / "0", strategy="fedavg", emissions=0.01, regions=REGIONS)
    write_run(root / "1", strategy="fedprox", emissions=0.01, regions=REGIONS)
    result = compare([root])
    region_ax = dict(figures(result))["emissions_per_region.png"].axes[0]
    labels = [t.get_text() for t in region_ax.get_xticklabels()]
    assert labels == ["0: strategy=fedavg", "1: strategy=fedprox"]
    assert region_ax.get_xlabel() == "run"
