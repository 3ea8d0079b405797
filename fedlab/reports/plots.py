"""The figures of ``fedlab-compare``, drawn from a :class:`~fedlab.reports.compare.Comparison`.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through
``pyplot``: no global backend switch (importing this from a notebook leaves its backend
alone), no figure registry to leak, safe from threads. A figure with no data is not drawn:
its builder returns the reason instead, and a stale PNG of that name from an earlier
comparison is removed, so the folder never shows a plot the tables no longer support.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from fedlab.reports.compare import FRONTS, OBJECTIVES, Comparison, Front, Run
from fedlab.record.run_dir import save_figure

#: More entries than this and a legend hides the plot; the tables name every run anyway.
MAX_LEGEND = 16
#: Points labelled on a Pareto plot when there are at most this many (else the front only).
MAX_LABELS = 15
#: A cost axis spanning more than this factor is drawn in log scale (epsilon often does).
LOG_SPAN = 100.0
#: Widest figure in inches: past it, bars get thinner rather than the image wider.
MAX_WIDTH = 16.0


@dataclass(frozen=True)
class Point:
    """One row of the comparison on a trade-off plot."""

    label: str
    x: float  # cost
    y: float  # objective
    xerr: float | None
    yerr: float | None
    on_front: bool


def write_plots(result: Comparison, out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Write every figure that has data into ``out``: (file names written, (name, why) skipped)."""
    column = OBJECTIVES[result.metric][1]
    builders: list[tuple[str, Callable[[], Figure | str]]] = [
        *((f"pareto_{f.name}.png", lambda f=f: pareto_figure(result, f)) for f in FRONTS),
        (
            f"{result.metric}_per_round.png",
            lambda: per_round_figure(result, column, result.metric, cumulative=False),
        ),
        (
            "emissions_per_round.png",
            lambda: per_round_figure(result, "emissions_kg", "kgCO2e", cumulative=True),
        ),
        ("emissions_per_region.png", lambda: region_figure(result)),
        (
            f"{result.metric}_vs_sim_time.png",
            lambda: sim_time_figure(result, column, result.metric),
        ),
    ]
    written, skipped = [], []
    for name, build in builders:
        figure = build()
        if isinstance(figure, str):
            (out / name).unlink(missing_ok=True)
            skipped.append((name, figure))
            continue
        save_figure(figure, out / name)
        written.append(name)
    return written, skipped


def _colors(n: int) -> list[Any]:
    """``n`` distinguishable colours (tab10, then tab20 for more)."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _run_colors(result: Comparison) -> tuple[dict[int, Any], list[tuple[str, Any]]]:
    """A colour per run (one per group with ``--by``) and the legend entries for them."""
    rows = result.rows
    palette = _colors(len(rows))
    by_run = {id(run): palette[i] for i, row in enumerate(rows) for run in row.runs}
    return by_run, [(row.label, palette[i]) for i, row in enumerate(rows)]


def pareto_points(result: Comparison, front: Front) -> list[Point]:
    """The rows compared on ``front`` (means, and std with ``--by``)."""
    points = []
    for row in result.rows:
        on_front = row.fronts[front.name]
        if on_front is None:
            continue
        x, y = row.mean[front.cost], row.mean[result.metric]
        assert x is not None and y is not None  # compare.mark_fronts compared only these
        points.append(Point(row.label, x, y, row.std[front.cost], row.std[result.metric], on_front))
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
    what = "groups (mean ± std)" if result.grouped else "runs"
    ax.set(
        xlabel=front.axis,
        ylabel=result.metric,
        title=f"{result.metric} vs {front.name}: {sum(p.on_front for p in points)} of "
        f"{len(points)} {what} on the front",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def per_round_figure(
    result: Comparison, column: str, ylabel: str, *, cumulative: bool
) -> Figure | str:
    """``column`` of ``rounds.csv`` per round for every run (incomplete runs dashed), with a
    second panel of the running total when ``cumulative``."""
    series = [(run, *run.round_values(column)) for run in result.runs]
    series = [(run, rounds, values) for run, rounds, values in series if rounds]
    if not series:
        return f"no run has {column} in rounds.csv"
    colors, legend = _run_colors(result)
    fig = Figure(figsize=(11, 4.2) if cumulative else (7, 4.5))
    axes = fig.subplots(1, 2) if cumulative else [fig.add_subplot()]
    for run, rounds, values in series:
        style = {"color": colors[id(run)], "ls": "-" if run.completed else "--", "lw": 1.2}
        axes[0].plot(rounds, values, marker="o", ms=2.5, **style)
        if cumulative:
            axes[1].plot(rounds, list(accumulate(values)), marker="o", ms=2.5, **style)
    axes[0].set(xlabel="round", ylabel=ylabel, title=f"{ylabel} per round")
    if cumulative:
        axes[1].set(xlabel="round", ylabel=f"{ylabel}, cumulative", title="running total")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend(axes[-1], legend, dashed=any(not run.completed for run, _, _ in series))
    return fig


def sim_time_figure(result: Comparison, column: str, ylabel: str) -> Figure | str:
    """``column`` against the simulated edge-device clock (time to accuracy): each round's
    value at the simulated time its round ended, from 0 s for the initial model."""
    series = []
    for run in result.runs:
        rounds, values = run.round_values(column)
        starts = dict(zip(*run.round_values("sim_start_s"), strict=True))
        spans = dict(zip(*run.round_values("sim_duration_s"), strict=True))
        points = [
            (0.0 if r == 0 else starts[r] + spans[r], v)
            for r, v in zip(rounds, values, strict=True)
            if r == 0 or (r in starts and r in spans)
        ]
        if any(r > 0 for r in spans):
            series.append((run, points))
    if not series:
        return "no run has simulated devices (devices group) in rounds.csv"
    colors, legend = _run_colors(result)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for run, points in series:
        seconds, values = zip(*points, strict=True)
        style = {"color": colors[id(run)], "ls": "-" if run.completed else "--", "lw": 1.2}
        ax.plot(seconds, values, marker="o", ms=2.5, **style)
    ax.set(
        xlabel="simulated edge-device time (s)",
        ylabel=ylabel,
        title=f"{ylabel} against simulated time",
    )
    ax.grid(alpha=0.3)
    _legend(ax, legend, dashed=any(not run.completed for run, _ in series))
    return fig


def _legend(ax: Axes, entries: list[tuple[str, Any]], *, dashed: bool) -> None:
    """Colour legend (left out past :data:`MAX_LEGEND` entries), plus the dashed-line key."""
    handles = [Line2D([], [], color=c, label=label) for label, c in entries]
    if len(handles) > MAX_LEGEND:
        handles = []
    if dashed:
        handles.append(Line2D([], [], color="0.3", ls="--", label="incomplete run"))
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="best")


def region_figure(result: Comparison) -> Figure | str:
    """Per run, one bar per client region: compute emissions below, communication above."""
    bars = [(run, _regions(run)) for run in result.runs]
    bars = [(run, regions) for run, regions in bars if regions]
    if not bars:
        return "no run records emissions per region"
    names = sorted({region for _, regions in bars for region in regions})
    palette = dict(zip(names, _colors(len(names)), strict=True))
    width = 0.8 / len(names)
    fig = Figure(figsize=(min(MAX_WIDTH, max(6.0, 1.0 + 0.35 * len(bars) * len(names))), 4.5))
    ax = fig.add_subplot()
    for i, (_, regions) in enumerate(bars):
        for j, name in enumerate(names):
            compute, comm = regions.get(name, (0.0, 0.0))
            x = i - 0.4 + width * (j + 0.5)
            ax.bar(x, compute, width, color=palette[name], edgecolor="white", lw=0.5)
            ax.bar(
                x,
                comm,
                width,
                bottom=compute,
                color=palette[name],
                alpha=0.45,
                hatch="///",
                edgecolor="white",
                lw=0.5,
            )
    ax.set_xticks(
        range(len(bars)),
        [run.label if run.completed else f"{run.label}\n({run.status})" for run, _ in bars],
        rotation=30 if len(bars) > 6 else 0,
        ha="right" if len(bars) > 6 else "center",
        fontsize=8,
    )
    ax.set(ylabel="kgCO2e", title="Emissions per client region and run")
    handles = [Patch(color=palette[name], label=name) for name in names]
    handles += [
        Patch(facecolor="0.5", label="compute (solid)"),
        Patch(facecolor="0.5", alpha=0.45, hatch="///", label="communication (hatched)"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(alpha=0.3, axis="y")
    return fig


def _regions(run: Run) -> dict[str, tuple[float, float]]:
    """``results.carbon.regions`` as region -> (compute kg, communication kg)."""
    regions = (run.results.get("carbon") or {}).get("regions") or {}
    out = {}
    for name, totals in regions.items():
        compute, comm = totals.get("compute_kg"), totals.get("communication_kg")
        if compute is not None or comm is not None:
            out[str(name)] = (float(compute or 0.0), float(comm or 0.0))
    return out
