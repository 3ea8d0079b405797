"""What ``fedlab-compare`` computed, as one object: the data its tables, CSVs and figures
are written from, and what trackers' ``comparison_figures`` receive.

It lives apart from :mod:`fedlab.reports.compare` (the command) and
:mod:`fedlab.reports.plots` (the figures) so that both, and the trackers, import it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedlab.record.reader import Run
from fedlab.reports.metrics import TARGETS, Front, Row
from fedlab.trackers.base import Objective, Tracker

if TYPE_CHECKING:
    from fedlab.reports.figures import Figures


@dataclass
class Comparison:
    """Everything ``fedlab-compare`` reports, computed before anything is written."""

    runs: list[Run]
    rows: list[Row]  # per run, or per group with --by
    by: list[str]
    metric: str
    run_rows: list[Row]  # always per run (comparison.csv, and the second table with --by)
    notes: list[str]
    trackers: list[type[Tracker]] = field(default_factory=list)  # of the runs, each once
    metrics: list[Objective] = field(default_factory=list)  # columns of comparison.csv
    fronts: list[Front] = field(default_factory=list)
    name: str = ""  # the sweep or run compared (its folder), for the figures' titles
    seed_grouped: bool = False  # rows are the runs that differ only in seed (no --by)

    @property
    def grouped(self) -> bool:
        """Whether the rows are groups of runs (``--by``, or runs differing only in seed)."""
        return bool(self.by) or self.seed_grouped

    @property
    def metric_column(self) -> str:
        """The ``rounds.csv`` column of ``--metric`` (``central_accuracy`` for accuracy)."""
        return TARGETS[self.metric][1]

    @property
    def figures(self) -> Figures:
        """Plotting helpers bound to this comparison (a colour per run or group, the legend,
        per-round lines), so a tracker's figures match the others without importing
        :mod:`fedlab.reports`. Matplotlib is imported only when a figure is drawn."""
        from fedlab.reports.figures import Figures

        return Figures(self)
