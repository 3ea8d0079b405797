"""The figures of ``fedlab-compare``, drawn from a :class:`~fedlab.reports.comparison.Comparison`.

The reports' own figures are the Pareto fronts (one per front of the compared runs'
trackers) and ``--metric`` per round; every tracker of the compared runs adds its own
(:meth:`~fedlab.trackers.base.Tracker.comparison_figures`), so this module names none. A
figure with no data is not drawn: its builder returns the reason instead, and a stale PNG
of that name from an earlier comparison is removed, so the folder never shows a plot the
tables no longer support.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from fedlab.record.run_dir import save_figure
from fedlab.reports.comparison import Comparison
from fedlab.reports.metrics import Front

#: Points labelled on a Pareto plot when there are at most this many (else the front only).
MAX_LABELS = 15
#: A cost axis spanning more than this factor is drawn in log scale (epsilon often does).
LOG_SPAN = 100.0


@dataclass(frozen=True)
class Point:
    """One row of the comparison on a trade-off plot."""

    label: str
    x: float  # cost
    y: float  # objective
    xerr: float | None
    yerr: float | None
    on_front: bool


def figures(result: Comparison) -> Iterator[tuple[str, Figure | str]]:
    """(file name, figure or why it is not drawn) of every figure, in the order they are
    reported: the fronts, ``--metric`` per round, then each tracker's figures (each tracker
    class once, in the runs' order). Built one at a time, as they are written."""
    for front in result.fronts:
        yield f"pareto_{front.name}.png", pareto_figure(result, front)
    per_round = result.figures.per_round(result.metric_column, result.metric, cumulative=False)
    yield f"{result.metric}_per_round.png", per_round
    for cls in result.trackers:
        for stem, figure in cls.comparison_figures(result).items():
            yield f"{stem}.png", figure


def write_plots(result: Comparison, out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Write every figure that has data into ``out``: (file names written, (name, why) skipped)."""
    written, skipped = [], []
    for name, figure in figures(result):
        if isinstance(figure, str):
            (out / name).unlink(missing_ok=True)
            skipped.append((name, figure))
            continue
        save_figure(figure, out / name)
        written.append(name)
    return written, skipped


def pareto_points(result: Comparison, front: Front) -> list[Point]:
    """The rows compared on ``front``: values, or a group's means with the half-widths of
    their Student-t 95 % confidence intervals."""
    points = []
    for row in result.rows:
        on_front = row.fronts[front.name]
        if on_front is None:
            continue
        x, y = row.mean[front.cost], row.mean[result.metric]
        assert x is not None and y is not None  # metrics.mark_fronts compared only these
        xerr, yerr = row.ci[front.cost], row.ci[result.metric]
        points.append(Point(row.label, x, y, xerr, yerr, on_front))
    return points


def pareto_figure(result: Comparison, front: Front) -> Figure | str:
    """The objective against one cost, the front drawn as the staircase that bounds what
    the runs achieved (every point below and right of it is dominated)."""
    points = pareto_points(result, front)
    if not points:
        return f"no completed run records {front.cost}"
    fig = Figure(figsize=(7, 4.8))
    ax = fig.add_subplot()
    best = sorted((p for p in points if p.on_front), key=lambda p: (p.x, p.y))
    right = max(p.x for p in points)
    xs = [p.x for p in best] + ([right] if right > best[-1].x else [])
    ys = [p.y for p in best] + ([best[-1].y] if right > best[-1].x else [])
    ax.step(xs, ys, where="post", color="C0", lw=1.5, label="Pareto front", zorder=2)
    for on_front, style in ((False, {"color": "0.6", "s": 30}), (True, {"color": "C0", "s": 55})):
        chosen = [p for p in points if p.on_front is on_front]
        if chosen:
            ax.scatter(
                [p.x for p in chosen],
                [p.y for p in chosen],
                label="on the front" if on_front else "dominated",
                zorder=3,
                **style,
            )
    with_err = [p for p in points if p.xerr is not None or p.yerr is not None]
    if with_err:
        ax.errorbar(
            [p.x for p in with_err],
            [p.y for p in with_err],
            xerr=[p.xerr or 0.0 for p in with_err],
            yerr=[p.yerr or 0.0 for p in with_err],
            fmt="none",
            ecolor="0.5",
            elinewidth=0.8,
            capsize=2,
            zorder=1,
        )
    for p in points:
        if p.on_front or len(points) <= MAX_LABELS:
            ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    positive = [p.x for p in points if p.x > 0]
    if len(positive) == len(points) and max(positive) / min(positive) > LOG_SPAN:
        ax.set_xscale("log")
    what = "groups (mean ± 95% CI)" if result.grouped else "runs"
    ax.set(
        xlabel=front.axis,
        ylabel=result.metric,
        title=result.figures.title(
            f"{result.metric} vs {front.name}, {sum(p.on_front for p in points)} of "
            f"{len(points)} {what} on the front"
        ),
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig
