"""The devices tracker's part of the reports, written from the run record alone.

Everything here is on the *simulated* device clock (``rounds.csv`` ``sim_start_s`` and
``sim_duration_s``): time to accuracy is what a deployment on those devices would take,
which the host's wall clock says nothing about.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedlab.record.reader import Run, shown
from fedlab.trackers.base import Panel

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fedlab.reports.comparison import Comparison


def sim_time_points(run: Run, column: str) -> list[tuple[float, float]]:
    """``column`` of ``rounds.csv`` at the simulated time each round ended, from 0 s for the
    initial model (round 0); empty when no training round was on the device clock."""
    rounds, values = run.round_values(column)
    starts = dict(zip(*run.round_values("sim_start_s"), strict=True))
    spans = dict(zip(*run.round_values("sim_duration_s"), strict=True))
    if not any(r > 0 for r in spans):
        return []
    return [
        (0.0 if r == 0 else starts[r] + spans[r], v)
        for r, v in zip(rounds, values, strict=True)
        if r == 0 or (r in starts and r in spans)
    ]


def card_section(run: Run) -> str | None:
    """The model card's "Simulated edge devices" section: what the same training would cost
    on the clients' devices (a model); None when the run simulated no devices."""
    devices = run.section("devices")
    if not devices:
        return None
    lines = [
        "## Simulated edge devices",
        "",
        f"Modelled, not measured (docs/devices.md): on its devices this training would take "
        f"{shown(devices.get('sim_time_s'), '.3g')} s of simulated time and "
        f"{shown(devices.get('edge_kwh'), '.3g')} kWh ({shown(devices.get('edge_kg'), '.3g')} "
        f"kgCO2e at the clients' grids); {devices.get('clients_missed_deadline', 0)} "
        "client-rounds missed the deadline.",
        "",
        "| device | clients | GFLOP | compute s | transfer s | kWh | kgCO2e |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, d in sorted((devices.get("by_device") or {}).items()):
        lines.append(
            f"| {name} | {d.get('clients', 'n/a')} | {shown(d.get('flops', 0) / 1e9, '.3g')} "
            f"| {shown(d.get('compute_s'), '.3g')} | {shown(d.get('transfer_s'), '.3g')} "
            f"| {shown(d.get('kwh'), '.3g')} | {shown(d.get('kg'), '.3g')} |"
        )
    sources: dict[str, Any] = devices.get("profiles") or {}
    if sources:
        lines += [
            "",
            "Profiles: " + "; ".join(f"{k}: {v.get('source')}" for k, v in sources.items()),
        ]
    return "\n".join(lines)


def run_panels(run: Run) -> list[Panel]:
    """``curves.png``'s third panel: centralized accuracy on the device clock (none without
    simulated devices)."""
    points = sim_time_points(run, "central_accuracy")
    if not points:
        return []
    seconds, accuracy = zip(*points, strict=True)
    return [
        Panel(
            title="Time to accuracy",
            xlabel="simulated device time (s)",
            ylabel="accuracy",
            series=(("centralized", seconds, accuracy),),
        )
    ]


def comparison_figures(comparison: Comparison) -> dict[str, Figure | str]:
    """``<metric>_vs_sim_time``: every run's ``--metric`` against the simulated clock."""
    return {f"{comparison.metric}_vs_sim_time": sim_time_figure(comparison)}


def sim_time_figure(comparison: Comparison) -> Figure | str:
    """The ``--metric`` against the simulated edge-device clock (time to accuracy): each
    round's value at the simulated time its round ended, from 0 s for the initial model."""
    from matplotlib.figure import Figure

    series = [(run, sim_time_points(run, comparison.metric_column)) for run in comparison.runs]
    series = [(run, points) for run, points in series if points]
    if not series:
        return "no run has simulated devices (devices group) in rounds.csv"
    kit, ylabel = comparison.figures, comparison.metric
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for run, points in series:
        seconds, values = zip(*points, strict=True)
        kit.line(ax, run, seconds, values)
    ax.set(
        xlabel="simulated edge-device time (s)",
        ylabel=ylabel,
        title=f"{ylabel} against simulated time",
    )
    ax.grid(alpha=0.3)
    kit.legend(ax, [run for run, _ in series])
    return fig
