"""The carbon tracker's part of the reports, written from the run record alone.

The card splits the run's energy and emissions into the parts the record stores
(``results.carbon``, docs/carbon.md): the clients' compute on the host, the server's work,
the host's overhead (idle capacity, Ray, start-up: what the attribution leaves over, plus
the time outside rounds) and the modelled communication. Those four add up to the total,
and the card shows them so, each with its unit, so a reader can check it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedlab.record.reader import Run, number, shown

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fedlab.reports.comparison import Comparison

#: The card's rows: (label, ``results.carbon`` key of the part's kWh, of its kgCO2e).
PARTS = (
    ("client compute (on the host)", "compute_kwh", "compute_kg"),
    ("server", "server_kwh", "server_kg"),
    ("host overhead (idle capacity, Ray, start-up)", "overhead_kwh", "overhead_kg"),
    ("communication (modelled)", "communication_kwh", "communication_kg"),
    ("**total**", "energy_kwh", "emissions_kg"),
)


def _how(carbon: dict[str, Any]) -> str:
    """How the host's energy was obtained, from the record's ``estimated`` flag.

    Without a hardware counter (the usual case on cloud VMs) CodeCarbon *estimates* CPU
    power from load and RAM power from installed memory (docs/carbon.md). A record without
    the flag is called an estimate too: the card must not claim a measurement it cannot show.
    """
    if carbon.get("estimated") is False:
        return "measured by a hardware energy counter"
    return "estimated by CodeCarbon's power model (no hardware energy counter was read)"


def _clock_lines(intensity: dict[str, Any], clock: dict[str, Any]) -> list[str]:
    """With hourly traces: what kind of intensity the bill uses and when training ran on the
    simulated clock (a saving from shifting depends on both: Green Mirage, arXiv 2402.03550)."""
    if intensity.get("source") != "trace":
        return []
    sources = ", ".join(f"{r}: {s}" for r, s in sorted((intensity.get("regions") or {}).items()))
    met = clock.get("deadline_met")
    deadline = (
        f", deadline {clock['deadline_hours']:g} h {'met' if met else 'missed'}"
        if clock.get("deadline_hours") is not None and met is not None else ""
    )
    return [
        f"- Intensities are hourly **{intensity.get('kind', 'average')}** traces ({sources}); "
        f"decisions used the {intensity.get('forecast', 'perfect')} forecast, the bill the "
        "actual trace.",
        f"- Simulated clock: {clock.get('start_utc')} to {clock.get('end_utc')} "
        f"({shown(clock.get('sim_hours'), '.3g')} h, of which "
        f"{shown(clock.get('wait_hours'), '.3g')} h waiting), policy "
        f"{clock.get('policy', 'immediate')}{deadline}.",
    ]


def card_section(run: Run) -> str:
    """The model card's "Carbon footprint" section ("Not tracked" when carbon was off)."""
    carbon, communication = run.section("carbon"), run.section("communication")
    head = ["## Carbon footprint", ""]
    if number(carbon.get("emissions_kg")) is None:
        return "\n".join(
            [
                *head,
                "Not tracked: the run was made with carbon tracking off, so the record "
                "holds no energy or emissions figures.",
            ]
        )
    power_model = carbon.get("power_model")
    down, up = number(communication.get("bytes_down")), number(communication.get("bytes_up"))
    lines = [
        *head,
        "| part | energy (kWh) | emissions (kgCO2e) |",
        "| --- | ---: | ---: |",
        *(
            f"| {label} | {shown(carbon.get(kwh), '.3g')} | {shown(carbon.get(kg), '.3g')} |"
            for label, kwh, kg in PARTS
        ),
        "",
        "Assumptions:",
        "",
        f"- Host energy {_how(carbon)}; power model: {power_model or 'not recorded'}.",
        f"- Host grid: {carbon.get('country') or 'n/a'} at "
        f"{shown(carbon.get('intensity_g_per_kwh'), '.0f')} gCO2e/kWh "
        f"({carbon.get('intensity_source') or 'source not recorded'}); client compute is "
        "charged at the host's intensity, where the electricity was drawn.",
        "- Communication is modelled, not measured: bytes moved x a per-link kWh/GB "
        "(attributional, docs/carbon.md), at each client's region intensity; "
        f"{shown(down, '.0f')} bytes down and {shown(up, '.0f')} bytes up.",
        "- All clients ran on one host: per-client compute is that host's energy shared by "
        "CPU time, not a measurement of client devices.",
        *_clock_lines(carbon.get("intensity") or {}, run.section("clock")),
    ]
    regions = carbon.get("regions") or {}
    if regions:
        lines += [
            "",
            "| client region | clients | compute kgCO2e | communication kgCO2e | total kgCO2e |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {name} | {r.get('clients', 'n/a')} | {shown(r.get('compute_kg'), '.3g')} | "
            f"{shown(r.get('communication_kg'), '.3g')} | {shown(r.get('emissions_kg'), '.3g')} |"
            for name, r in sorted(regions.items())
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# the run's own pictures
# --------------------------------------------------------------------------------------


def run_figures(run: Run) -> dict[str, Figure]:
    """``timeline.png`` of a run on a dated clock with intensity traces: each region's trace
    over the run's period, the forecast each round was planned on, the rounds as bars and the
    clients as dots at the intensity they were charged (:func:`timeline_figure`)."""
    from fedlab.config.clock import parse_utc
    from fedlab.reports.timeline import timeline_figure
    from fedlab.trackers.carbon.traces import load_traces

    described = run.section("carbon").get("intensity") or {}
    if described.get("source") != "trace":
        return {}
    spans = [
        (int(r["round"]), parse_utc(r["sim_start_utc"]), parse_utc(r["sim_end_utc"]))
        for r in run.rounds if r.get("sim_start_utc")
    ]
    if not spans:
        return {}
    files = {
        region: source for region, source in described["regions"].items()
        if not str(source).startswith("bundled")
    }
    traces = load_traces(files or None, described["regions"], described.get("kind", "average"))
    a, b = spans[0][1] - 6 * 3600, max(s[2] for s in spans) + 6 * 3600
    intensity = {
        region: (w.times.tolist(), w.values.tolist())
        for region, trace in traces.items() if (w := trace.window(max(a, trace.start),
                                                                  min(b, trace.end)))
    }
    forecast = {
        region: ([s[1] for s in spans], [float(r[f"forecast_{region}"]) for r in run.rounds
                                         if r.get("sim_start_utc")])
        for region in intensity if f"forecast_{region}" in (run.rounds[-1] if run.rounds else {})
    }
    clients = [
        (parse_utc(c["sim_start_utc"]), c["region"]) for c in run.clients
        if c.get("sim_start_utc") and c.get("region") in intensity
    ]
    title = f"{run.section('clock').get('policy', 'immediate')} | {run.path.name}"
    figure = timeline_figure(intensity, spans, clients, forecast or None,
                             kind=described.get("kind", "average"), title=title)
    return {"timeline": figure}


# fedlab-compare
# --------------------------------------------------------------------------------------


def comparison_figures(comparison: Comparison) -> dict[str, Figure | str]:
    """Emissions per round (and their running total), and per client region."""
    per_round = comparison.figures.per_round("emissions_kg", "kgCO2e", cumulative=True)
    return {"emissions_per_round": per_round, "emissions_per_region": region_figure(comparison)}


def _regions(run: Run) -> dict[str, tuple[float, float]]:
    """``results.carbon.regions`` as region -> (compute kg, communication kg)."""
    out = {}
    for name, totals in (run.section("carbon").get("regions") or {}).items():
        compute, comm = totals.get("compute_kg"), totals.get("communication_kg")
        if compute is not None or comm is not None:
            out[str(name)] = (float(compute or 0.0), float(comm or 0.0))
    return out


def _row_regions(runs: list[Run], group: bool) -> dict[str, tuple[float, float]]:
    """A row's per-region (compute kg, communication kg): a run's own, or the mean over a
    group's completed runs that record regions."""
    used = [_regions(run) for run in runs if run.completed or not group]
    used = [regions for regions in used if regions]
    if not used:
        return {}
    names = sorted({name for regions in used for name in regions})
    return {
        name: tuple(
            sum(regions.get(name, (0.0, 0.0))[k] for regions in used) / len(used) for k in (0, 1)
        )
        for name in names
    }


def region_figure(comparison: Comparison) -> Figure | str:
    """Per run or group (the mean of its completed runs), one bar per client region:
    compute emissions below, communication above; bars named as the other figures name the
    comparison's rows."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    kit = comparison.figures
    bars = [
        (row, name, _row_regions(row.runs, row.group))
        for row, name in zip(comparison.rows, kit.names, strict=True)
    ]
    bars = [(row, name, regions) for row, name, regions in bars if regions]
    if not bars:
        return "no run records emissions per region"
    names = sorted({region for _, _, regions in bars for region in regions})
    palette = dict(zip(names, kit.colors(len(names)), strict=True))
    width = 0.8 / len(names)
    fig = Figure(figsize=(min(kit.max_width, max(6.0, 1.0 + 0.35 * len(bars) * len(names))), 4.5))
    ax = fig.add_subplot()
    for i, (_, _, regions) in enumerate(bars):
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
        [name if row.n else f"{name}\n({row.status})" for row, name, _ in bars],
        rotation=30 if len(bars) > 6 else 0,
        ha="right" if len(bars) > 6 else "center",
        fontsize=8,
    )
    grouped = comparison.grouped
    ax.set(
        xlabel="group (mean of its completed runs)" if grouped else "run",
        ylabel="kgCO2e",
        title=kit.title("Emissions per client region"),
    )
    handles = [Patch(color=palette[name], label=name) for name in names]
    handles += [
        Patch(facecolor="0.5", label="compute (solid)"),
        Patch(facecolor="0.5", alpha=0.45, hatch="///", label="communication (hatched)"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(alpha=0.3, axis="y")
    return fig
