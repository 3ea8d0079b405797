"""``curves.png`` of a run, drawn from its record.

Two panels every run has (test accuracy and loss per round, centralized and federated),
then the panels of the run's trackers (:meth:`~fedlab.trackers.base.Tracker.run_panels`:
accuracy on the simulated device clock, say). Drawn from the record through
:mod:`fedlab.record.reader`, not from the live run, so the picture can be redrawn for any
record and always shows what the record holds.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from fedlab.record.reader import Run, load_run
from fedlab.record.run_dir import save_figure
from fedlab.trackers.base import Panel

CURVES = "curves.png"
#: Width of one panel in inches: the figure widens with each panel instead of squeezing them.
PANEL_WIDTH = 5.0
HEIGHT = 3.8

#: A panel's line: label, x values, y values (:attr:`Panel.series`).
Series = tuple[str, tuple[float, ...], tuple[float, ...]]


def _per_round(run: Run, what: str) -> tuple[Series, ...]:
    """The centralized and federated series of ``what`` (accuracy, loss) per round; a series
    the record has no value for is left out."""
    series: list[Series] = []
    for prefix, label in (("central", "centralized"), ("federated", "federated")):
        rounds, values = run.round_values(f"{prefix}_{what}")
        if rounds:
            series.append((label, tuple(float(r) for r in rounds), tuple(values)))
    return tuple(series)


def run_panels(run: Run) -> list[Panel]:
    """Accuracy and loss per round, then every tracker's panels in the record's order."""
    generic = [
        Panel("Test accuracy", "round", "accuracy", _per_round(run, "accuracy")),
        Panel("Test loss", "round", "loss", _per_round(run, "loss")),
    ]
    return generic + [panel for cls in run.trackers for panel in cls.run_panels(run)]


def curves_figure(panels: list[Panel]) -> Figure:
    """The panels side by side, each series a line with round markers."""
    fig = Figure(figsize=(PANEL_WIDTH * len(panels), HEIGHT))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        for label, xs, ys in panel.series:
            ax.plot(xs, ys, marker="o", ms=3, label=label)
        ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel, title=panel.title)
        ax.grid(alpha=0.3)
        if panel.series:
            ax.legend()
    return fig


def plot_curves(run_dir: Path) -> None:
    """Write ``curves.png`` into ``run_dir`` from its record (atomically)."""
    save_figure(curves_figure(run_panels(load_run(run_dir))), run_dir / CURVES)


def plot_run_figures(run_dir: Path) -> list[Path]:
    """Write every tracker's own pictures (:meth:`~fedlab.trackers.base.Tracker.run_figures`)
    into ``run_dir`` as ``<stem>.png``; returns the files written."""
    run = load_run(run_dir)
    written = []
    for cls in run.trackers:
        for stem, figure in cls.run_figures(run).items():
            save_figure(figure, run_dir / f"{stem}.png")
            written.append(run_dir / f"{stem}.png")
    return written
