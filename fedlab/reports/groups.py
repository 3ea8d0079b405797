"""Rows of ``fedlab-compare`` that stand for several runs, and what a reader must be told
to believe a comparison of them.

Groups come from ``--by``, or, without it, from runs that differ only in seed (a sweep's
repeats): a front is decided on a group's mean and spread (:mod:`fedlab.reports.stats`),
never on one seed. :func:`honesty_notes` states the statistics used (or that there were
none), warns about groups with too few seeds, names the objective of every front and says
which numbers are noisy measurements and which deterministic models.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedlab.record.reader import Run, cell, distinguishing_overrides
from fedlab.reports.comparison import Comparison
from fedlab.reports.metrics import TARGETS, Row
from fedlab.reports.stats import ALPHA, LEVEL, MIN_SEEDS
from fedlab.reports.table import display_key
from fedlab.trackers.base import Objective

#: Units of the energy and emissions objectives, measured or modelled.
ENERGY_UNITS = ("kWh", "kgCO2e")


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value is not the same in every run (absent counts as a value), in
    config order: the knobs the comparison is about."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.config))
    missing = object()
    return [k for k in keys if len({cell(r.config.get(k, missing)) for r in runs}) > 1]


def group_label(by: Sequence[str], values: tuple[str, ...]) -> str:
    """A ``--by`` group's name: its value for one key, ``key=value, ...`` for several."""
    if len(by) == 1:
        return values[0] or "-"
    return ", ".join(f"{display_key(k)}={v}" for k, v in zip(by, values, strict=True))


def group_runs(
    runs: Sequence[Run], by: Sequence[str], metrics: Sequence[Objective], *, seeds: bool = False
) -> list[Row]:
    """One row per distinct combination of the ``by`` values, in order of first appearance.

    ``seeds``: the groups are the runs that differ only in seed; they are named by the
    overrides their runs were started with when those tell them apart.
    """
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(cell(run.value(k)) for k in by), []).append(run)
    labels = [group_label(by, values) if by else "all runs" for values in groups]
    if seeds:
        typed = distinguishing_overrides([m[0] for m in groups.values()], seed=False)
        if all(typed) and len(set(typed)) == len(typed):
            labels = typed
    return [
        Row.of(label, members, {k: members[0].value(k) for k in by}, metrics, group=True)
        for label, members in zip(labels, groups.values(), strict=True)
    ]


def seed_group_keys(runs: Sequence[Run], keys: Sequence[str]) -> list[str] | None:
    """The keys to group by when runs differ in seed, grouping over it joins some of them
    and leaves two groups or more to compare (the differing keys but the seed); else None.
    Runs that differ in nothing but the seed stay one row each (what else is there to see),
    with a warning that their front is seed noise."""
    if "seed" not in keys:
        return None
    others = [k for k in keys if k != "seed"]
    distinct = len({tuple(cell(r.config.get(k)) for k in others) for r in runs})
    return others if 1 < distinct < len(runs) else None


def inherit_fronts(groups: Sequence[Row], run_rows: Sequence[Row]) -> None:
    """Give each run row its group's front flags: one seed of a group has no interval of
    its own, and ranking seeds one by one would pick winners out of their noise."""
    by_run = {id(r.runs[0]): r for r in run_rows}
    for group in groups:
        for run in group.runs:
            row = by_run[id(run)]
            for name, flag in group.fronts.items():
                row.fronts[name] = flag if run.completed else None
                row.ties[name] = []


def honesty_notes(result: Comparison) -> list[str]:
    """What a reader must know to believe the fronts: the statistics used (or that there
    were none), groups with too few seeds, the objective of each front, and which numbers
    are noisy measurements and which deterministic models."""
    notes = []
    level = f"{LEVEL:.0%}"
    if result.grouped:
        notes.append(
            f"group cells: mean ± half-width of the Student-t {level} confidence interval of "
            "the mean over the group's completed runs (n); a group is off a front only if "
            f"another is significantly better on both of its objectives (two-sided Welch "
            f"t-test, {ALPHA:.0%}); its runs take the group's front flags"
        )
        few = [f"{row.label} (n={row.n})" for row in result.rows if 0 < row.n < MIN_SEEDS]
        if few:
            notes.append(
                f"warning: fewer than {MIN_SEEDS} completed seeds in {', '.join(few)}: wide "
                "intervals, weak front calls"
            )
    else:
        if differing_keys(result.runs) == ["seed"]:
            notes.append(
                "warning: these runs differ only in seed: which of them is on a front is "
                "seed noise, not a finding"
            )
        notes.append(
            "single runs (n = 1 each): no confidence interval; fronts compare the recorded "
            "values as they are, so a difference within seed noise can decide them (repeat "
            "seeds to get a test)"
        )
    goal = "maximize" if TARGETS[result.metric][0] else "minimize"
    for front in result.fronts:
        if all(row.fronts[front.name] is None for row in result.rows):
            continue
        ties = sorted(
            {
                " ~ ".join(sorted([row.label, *row.ties[front.name]]))
                for row in result.rows
                if row.ties.get(front.name)
            }
        )
        kind = "measured, noisy" if front.measured else "deterministic"
        line = f"pareto {front.name}: {goal} {result.metric}, minimize {front.label} ({kind})"
        if ties:
            line += f"; indistinguishable (~): {'; '.join(ties)}"
        notes.append(line)
    shown = [
        m
        for m in result.metrics
        if m.header and any(r.mean[m.name] is not None for r in result.rows)
    ]
    measured = [m.header for m in shown if m.measured]
    modelled = [m.header for m in shown if m.unit in ENERGY_UNITS and not m.measured]
    if measured:
        notes.append(
            f"measured host energy (noisy: varies with wall time): {', '.join(measured)}; "
            f"modelled (deterministic from counted bytes/work): {', '.join(modelled) or 'none'}"
        )
    return notes
