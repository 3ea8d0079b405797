"""The objective values of a finished run, for a multi-objective search.

A search (``experiments/optuna_pareto.py``, or a Hydra sweeper) must optimise the same
numbers, in the same directions, that ``fedlab-compare`` later ranks the runs by; so it takes
them from the same :class:`~fedlab.trackers.base.Objective` declarations, read from the
run's record, rather than from a list of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedlab.record.reader import BUILTIN_TRACKERS, load_run, tracker_class
from fedlab.reports.metrics import metric_value, metrics_for
from fedlab.trackers.base import Objective, Tracker


def search_objectives(
    names: Sequence[str], trackers: Sequence[type[Tracker]] | None = None
) -> list[Objective]:
    """The objectives ``names`` as ``trackers`` (default: the built-in ones) and the reports
    declare them, so a study's directions are known before its first trial; ``ValueError``
    naming the unknown one and the choices."""
    if trackers is None:
        found = (tracker_class(path) for path in BUILTIN_TRACKERS.values())
        trackers = [cls for cls in found if cls is not None]
    known = {m.name: m for m in metrics_for(trackers)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown objective '{unknown[0]}': choose from {', '.join(known)}")
    return [known[n] for n in names]


def directions(names: Sequence[str]) -> list[str]:
    """Optuna's directions (``maximize``/``minimize``) of the objectives ``names``."""
    return ["maximize" if o.direction == "max" else "minimize" for o in search_objectives(names)]


def objective_values(run_dir: Path, names: Sequence[str]) -> list[float]:
    """The values of ``names`` for the completed run in ``run_dir``, as ``fedlab-compare``
    reads them; ``ValueError`` when the run did not complete or lacks a value (a trial
    without its numbers must fail, not rank as zero)."""
    run = load_run(run_dir)
    if not run.completed:
        raise ValueError(f"{run_dir}: run {run.status}, not completed")
    values = []
    for objective in search_objectives(names, run.trackers):
        value = metric_value(objective, run)
        if value is None:
            raise ValueError(f"{run_dir}: the record has no value for '{objective.name}'")
        values.append(value)
    return values
