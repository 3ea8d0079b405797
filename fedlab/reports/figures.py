"""Plotting helpers shared by the figures of ``fedlab-compare`` and those of the trackers.

Every figure of a comparison gives a run (or a group, with ``--by``) the same colour and
draws an incomplete run dashed, so the figures read together. Trackers reach these helpers
through :attr:`Comparison.figures <fedlab.reports.comparison.Comparison.figures>` rather
than by importing this package, which keeps ``fedlab.trackers`` below ``fedlab.reports``.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
``pyplot``: no global backend switch (importing this from a notebook leaves its backend
alone), no figure registry to leak, safe from threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedlab.record.reader import distinguishing_overrides

if TYPE_CHECKING:
    from fedlab.record.reader import Run
    from fedlab.reports.comparison import Comparison

#: More entries than this and a legend hides the plot; the tables name every run anyway.
MAX_LEGEND = 16
#: Widest figure in inches: past it, bars get thinner rather than the image wider.
MAX_WIDTH = 16.0


def colors(n: int) -> list[Any]:
    """``n`` distinguishable colours (tab10, then tab20 for more)."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def legend(ax: Axes, entries: list[tuple[str, Any]], *, dashed: bool) -> None:
    """Colour legend (left out past :data:`MAX_LEGEND` entries), plus the dashed-line key."""
    handles = [Line2D([], [], color=c, label=label) for label, c in entries]
    if len(handles) > MAX_LEGEND:
        handles = []
    if dashed:
        handles.append(Line2D([], [], color="0.3", ls="--", label="incomplete run"))
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best")


class Figures:
    """The helpers bound to one comparison: a colour per row (run, or group with ``--by``),
    each of its runs drawn in its row's colour."""

    max_width = MAX_WIDTH  # widest figure in inches

    def __init__(self, comparison: Comparison) -> None:
        self.comparison = comparison
        rows = comparison.rows
        palette = colors(len(rows))
        self._by_run = {id(run): palette[i] for i, row in enumerate(rows) for run in row.runs}
        self.names = self._names()
        self._entries = list(zip(self.names, palette, strict=True))

    def _names(self) -> list[str]:
        """Per row, how a figure names it: a group's label; a run's label with the overrides
        that tell it from the others, when it is a bare job number of a multirun."""
        rows = self.comparison.rows
        if self.comparison.grouped:
            return [row.label for row in rows]
        typed = distinguishing_overrides([row.runs[0] for row in rows])
        return [
            f"{row.label}: {words}" if words and row.label.isdigit() else row.label
            for row, words in zip(rows, typed, strict=True)
        ]

    @staticmethod
    def colors(n: int) -> list[Any]:
        """``n`` distinguishable colours, for what is not a run (client regions, say)."""
        return colors(n)

    def line(self, ax: Axes, run: Run, xs: Sequence[float], ys: Sequence[float]) -> None:
        """One run's line: its colour, dashed when the run is incomplete."""
        style = {"color": self._by_run[id(run)], "ls": "-" if run.completed else "--", "lw": 1.2}
        ax.plot(xs, ys, marker="o", ms=2.5, **style)

    def legend(self, ax: Axes, runs: Sequence[Run]) -> None:
        """The colour legend of the comparison's rows, with the dashed-line key when one of
        ``runs`` (those drawn) is incomplete."""
        legend(ax, self._entries, dashed=any(not run.completed for run in runs))

    def title(self, what: str) -> str:
        """A figure title naming what is drawn and the sweep or run it is drawn from."""
        name = self.comparison.name
        return f"{what}: {name}" if name else what

    def per_round(self, column: str, ylabel: str, *, cumulative: bool) -> Figure | str:
        """``column`` of ``rounds.csv`` per round, with a second panel of the running total
        when ``cumulative``; the reason when no run has the column.

        One line per row of the comparison: a run's own values, or for a group the mean of
        its completed runs at each round with a band from their minimum to their maximum
        (a band of n = 2 or 3 seeds' t-interval would be mostly the t quantile); a group's
        incomplete runs are drawn dashed, on their own.
        """
        drawn: list[Run] = []
        fig = Figure(figsize=(11, 4.2) if cumulative else (7, 4.5))
        axes = fig.subplots(1, 2) if cumulative else [fig.add_subplot()]
        for row in self.comparison.rows:
            series = [(run, *run.round_values(column)) for run in row.runs]
            series = [(run, rounds, values) for run, rounds, values in series if rounds]
            done = [s for s in series if s[0].completed] if row.group else []
            for run, rounds, values in series if len(done) < 2 else []:
                drawn.append(run)
                self.line(axes[0], run, rounds, values)
                if cumulative:
                    self.line(axes[1], run, rounds, list(accumulate(values)))
            if len(done) < 2:
                continue
            drawn += [run for run, _, _ in series]
            for run, rounds, values in series:
                if not run.completed:
                    self.line(axes[0], run, rounds, values)
            self.band(axes[0], done, cumulative=False)
            if cumulative:
                self.band(axes[1], done, cumulative=True)
        if not drawn:
            return f"no run has {column} in rounds.csv"
        banded = any(row.group and row.n > 1 for row in self.comparison.rows)
        what = f"{ylabel} per round" + (" (mean, band: min-max over seeds)" if banded else "")
        axes[0].set(xlabel="round", ylabel=ylabel, title=self.title(what))
        if cumulative:
            axes[1].set(xlabel="round", ylabel=f"{ylabel}, cumulative", title="running total")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.legend(axes[-1], drawn)
        return fig

    def band(
        self, ax: Axes, series: Sequence[tuple[Run, list[int], list[float]]], *, cumulative: bool
    ) -> None:
        """A group's mean line and min-max band over the rounds all of ``series`` have."""
        by_round: dict[int, list[float]] = {}
        for _, rounds, values in series:
            totals = list(accumulate(values)) if cumulative else values
            for r, v in zip(rounds, totals, strict=True):
                by_round.setdefault(r, []).append(v)
        rounds = sorted(r for r, vs in by_round.items() if len(vs) == len(series))
        color = self._by_run[id(series[0][0])]
        means = [sum(by_round[r]) / len(series) for r in rounds]
        ax.plot(rounds, means, color=color, marker="o", ms=2.5, lw=1.5)
        lows, highs = [min(by_round[r]) for r in rounds], [max(by_round[r]) for r in rounds]
        ax.fill_between(rounds, lows, highs, color=color, alpha=0.2, lw=0)
