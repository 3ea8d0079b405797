"""Pictures of carbon-aware scheduling in time (issue #18): when the rounds ran against the
grid's intensity, and how much a deferral policy avoided over a replay sweep.

:func:`timeline_figure` answers "did the policy wait for the trough?": each region's
intensity as the step function the ledger charges (docs: a trace row holds until the next
one), the forecast the policy saw dashed beside it, the rounds as spans (the unshaded gaps
are the waits) and each client's training as a dot on its region's curve, at the intensity
it was charged. :func:`avoided_figure` answers "how much, and when?": the spread of the
avoided share over many start dates per policy, and the same against the start date, where
seasons show (solar troughs in summer, windy weeks in winter).

Times are POSIX epoch seconds (UTC), as the design of issue #18 fixes; the x axes show UTC
dates. Like the trackers' figures, matplotlib is imported inside the functions, so importing
this module costs nothing until a figure is drawn, and figures are built on
``matplotlib.figure.Figure`` without pyplot (save them with
:func:`fedlab.record.run_dir.save_figure`, which writes the PNG atomically).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Per region: (epoch seconds, gCO2e/kWh) of a step function, as rounds.csv and traces hold it.
Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]

#: Round numbers are written on their spans up to this many rounds (past it they overlap).
MAX_ROUND_LABELS = 30
#: Client dots are opaque up to this many; past it the alpha falls so density still reads
#: (20,000 clients of one round would otherwise be a single blot).
OPAQUE_DOTS = 200
#: The view reaches this share of the run's span past its first and last moment.
PAD = 0.05
#: The padding of a run that spans no time (one instant): an hour either side.
PAD_S = 3600.0
DAY_S = 86400.0
#: The keys every row of a replay sweep must have.
AVOIDED_KEYS = ("start_utc", "policy", "region", "emissions_kg", "avoided_pct")


class TimelineError(ValueError):
    """Input a figure cannot be drawn from; one line naming the argument and row."""


def _utc(t: float) -> str:
    """Epoch seconds as the ISO 8601 UTC text the traces use."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date_num(t: np.ndarray | float) -> Any:
    """Epoch seconds to matplotlib date numbers (days since matplotlib's date epoch, which
    an rcParams setting can move, so it is read rather than assumed to be 1970)."""
    from matplotlib import dates

    return dates.date2num(datetime(1970, 1, 1, tzinfo=UTC)) + np.asarray(t, dtype=float) / DAY_S


def _date_axis(ax: Axes, label: str) -> None:
    """UTC dates on the x axis, labelled concisely (only what changes between ticks)."""
    from matplotlib import dates

    locator = dates.AutoDateLocator(tz=UTC)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=UTC))
    ax.set_xlabel(label)


def _series(key: str, region: str, pair: Any) -> tuple[np.ndarray, np.ndarray]:
    """One region's (times, values) as float arrays, checked as the traces are."""
    where = f"{key}[{region}]"
    try:
        times, values = (np.asarray(column, dtype=float) for column in pair)
    except (TypeError, ValueError) as err:
        raise TimelineError(f"{where}: expected (times, values) of numbers ({err})") from None
    if times.ndim != 1 or times.shape != values.shape:
        raise TimelineError(f"{where}: {times.size} times but {values.size} values")
    if not times.size:
        raise TimelineError(f"{where}: no rows")
    bad = np.flatnonzero(~(np.isfinite(times) & np.isfinite(values)))
    if bad.size:
        raise TimelineError(f"{where} row {bad[0]}: time and value must be finite numbers")
    back = np.flatnonzero(np.diff(times) <= 0)
    if back.size:
        raise TimelineError(f"{where} row {back[0] + 1}: times must be strictly increasing")
    return times, values


def _rounds(rounds: Sequence[tuple[int, float, float]]) -> np.ndarray:
    """The rounds as an (n, 3) array of (number, start, end), sorted by start."""
    if not rounds:
        raise TimelineError("rounds: no rounds to draw")
    try:
        table = np.array([(float(n), float(a), float(b)) for n, a, b in rounds])
    except (TypeError, ValueError) as err:
        raise TimelineError(f"rounds: expected (number, start, end) per round ({err})") from None
    for i, (number, start, end) in enumerate(table):
        if not (math.isfinite(start) and math.isfinite(end)):
            raise TimelineError(f"rounds[{i}] (round {number:.0f}): start and end must be finite")
        if end < start:
            raise TimelineError(
                f"rounds[{i}] (round {number:.0f}): ends at {_utc(end)}, before its start "
                f"{_utc(start)}"
            )
    return table[np.argsort(table[:, 1], kind="stable")]


@dataclass(frozen=True)
class _Step:
    """A region's step function: row i's value holds over [times[i], ends[i])."""

    times: np.ndarray
    values: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, times: np.ndarray, values: np.ndarray, right: float) -> _Step:
        """The last row holds for the trace's own step (the median spacing of its rows); a
        trace of one row has no step, so it holds to ``right``, the edge of the view."""
        last = times[-1] + float(np.median(np.diff(times))) if times.size > 1 else right
        return cls(times, values, np.append(times[1:], max(last, times[-1])))

    def at(self, t: np.ndarray) -> np.ndarray:
        """Values at ``t``; NaN where the trace does not cover ``t``."""
        i = np.searchsorted(self.times, t, side="right") - 1
        inside = (i >= 0) & (t < self.ends[np.clip(i, 0, None)])
        return np.where(inside, self.values[np.clip(i, 0, None)], np.nan)


def _draw_step(ax: Axes, step: _Step, view: tuple[float, float], where: str, **style: Any) -> None:
    """The rows of ``step`` that overlap ``view``, as a post-step line ending where the last
    row stops holding (a year's trace under a day's run draws only that day)."""
    keep = (step.ends > view[0]) & (step.times < view[1])
    if not keep.any():
        raise TimelineError(
            f"{where}: covers {_utc(step.times[0])} to {_utc(step.ends[-1])}, outside the "
            f"rounds and clients ({_utc(view[0])} to {_utc(view[1])})"
        )
    times = np.append(step.times[keep], step.ends[keep][-1])
    values = np.append(step.values[keep], step.values[keep][-1])
    ax.step(_date_num(times), values, where="post", **style)


def _blocks(table: np.ndarray) -> list[tuple[float, float]]:
    """Back-to-back rounds merged into one (start, end) block: the gaps left are the waits."""
    blocks: list[tuple[float, float]] = []
    for _, start, end in table:
        if blocks and start <= blocks[-1][1]:
            blocks[-1] = (blocks[-1][0], max(blocks[-1][1], end))
        else:
            blocks.append((start, end))
    return blocks


def _clients(clients: Sequence[tuple[float, str]], regions: Sequence[str]) -> dict[str, Any]:
    """Client times grouped by region, checked against the regions that have a trace."""
    by_region: dict[str, list[float]] = {}
    for i, entry in enumerate(clients):
        try:
            t, region = float(entry[0]), str(entry[1])
        except (TypeError, ValueError, IndexError) as err:
            raise TimelineError(f"clients[{i}]: expected (time, region) ({err})") from None
        if region not in regions:
            raise TimelineError(
                f"clients[{i}]: region {region!r} has no intensity trace "
                f"(have: {', '.join(regions)})"
            )
        if not math.isfinite(t):
            raise TimelineError(f"clients[{i}]: time must be a finite number")
        by_region.setdefault(region, []).append(t)
    return {region: np.asarray(times) for region, times in by_region.items()}


def timeline_figure(
    intensity: Series,
    rounds: Sequence[tuple[int, float, float]],
    clients: Sequence[tuple[float, str]] = (),
    forecast: Series | None = None,
    kind: str = "average",
    title: str = "",
) -> Figure:
    """Intensity per region over UTC time with the run's rounds and clients on it.

    ``intensity`` and ``forecast`` map a region to (epoch seconds, gCO2e/kWh) rows of a
    step function; ``rounds`` are (round number, start, end) in epoch seconds; ``clients``
    (time, region) are drawn on their region's curve, at the intensity they were charged.
    The view spans the rounds and clients (padded), not the whole trace, so a year's
    trace can be passed for a day's run. ``kind`` names what the numbers are (average,
    marginal, market) on the y axis; ``title`` names the run. Raises :class:`TimelineError`
    for empty or inconsistent input.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from fedlab.reports.figures import colors

    if not intensity:
        raise TimelineError("intensity: no region has a trace")
    regions = list(intensity)
    actual = {region: _series("intensity", region, intensity[region]) for region in regions}
    predicted = {
        region: _series("forecast", region, pair) for region, pair in (forecast or {}).items()
    }
    for region in predicted:
        if region not in actual:
            raise TimelineError(
                f"forecast[{region}]: no intensity trace for that region "
                f"(have: {', '.join(regions)})"
            )
    table = _rounds(rounds)
    dots = _clients(clients, regions)
    moments = [table[:, 1].min(), table[:, 2].max()] + [
        bound for times in dots.values() for bound in (times.min(), times.max())
    ]
    lo, hi = min(moments), max(moments)
    pad = PAD * (hi - lo) if hi > lo else PAD_S
    view = (lo - pad, hi + pad)

    fig = Figure(figsize=(11, 5.5))
    ax, strip = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    palette = dict(zip(regions, colors(len(regions)), strict=True))
    for block_start, block_end in _blocks(table):
        ax.axvspan(*_date_num([block_start, block_end]), color="0.5", alpha=0.12, lw=0)
    n_dots = sum(times.size for times in dots.values())
    alpha = 0.8 if n_dots <= OPAQUE_DOTS else max(0.05, 0.8 * OPAQUE_DOTS / n_dots)
    for region in regions:
        step = _Step.of(*actual[region], right=view[1])
        _draw_step(
            ax, step, view, f"intensity[{region}]", color=palette[region], lw=1.4, label=region
        )
        if region in predicted:
            guess = _Step.of(*predicted[region], right=view[1])
            _draw_step(
                ax,
                guess,
                view,
                f"forecast[{region}]",
                color=palette[region],
                lw=1.1,
                ls="--",
                label=f"{region} forecast",
            )
        if region in dots:
            times = dots[region]
            ys = step.at(times)
            outside = np.flatnonzero(np.isnan(ys))
            if outside.size:
                raise TimelineError(
                    f"clients: a {region} client at {_utc(times[outside[0]])} lies outside "
                    f"the {region} trace ({_utc(step.times[0])} to {_utc(step.ends[-1])})"
                )
            ax.scatter(
                _date_num(times),
                ys,
                s=14 if n_dots <= OPAQUE_DOTS else 5,
                color=palette[region],
                alpha=alpha,
                lw=0,
                zorder=3,
                label=f"{region} clients",
            )

    lefts = _date_num(table[:, 1])
    widths = _date_num(table[:, 2]) - lefts
    shades = ["0.35" if i % 2 == 0 else "0.6" for i in range(len(table))]
    strip.barh(0.0, widths, left=lefts, height=0.8, color=shades, lw=0)
    if len(table) <= MAX_ROUND_LABELS:
        for number, left, width in zip(table[:, 0], lefts, widths, strict=True):
            strip.text(
                left + width / 2,
                0.0,
                f"{number:.0f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white",
            )
    strip.set_yticks([])
    strip.set_ylim(-0.6, 0.6)
    strip.set_ylabel("rounds")
    ax.set_xlim(*_date_num(view))
    _date_axis(strip, "time (UTC)")

    waits = np.clip(table[1:, 1] - np.maximum.accumulate(table[:-1, 2]), 0.0, None).sum()
    what = f"Carbon intensity and {len(table)} round{'s' * (len(table) != 1)}"
    if waits > 0:
        what += f", {waits / 3600:.1f} h waited between rounds"
    ax.set(ylabel=f"gCO2e/kWh ({kind})", title=f"{what}: {title}" if title else what)
    ax.grid(alpha=0.3)
    strip.grid(alpha=0.3, axis="x")
    handles: list[Any] = [Line2D([], [], color=palette[region], label=region) for region in regions]
    if predicted:
        handles.append(Line2D([], [], color="0.3", ls="--", label="forecast"))
    if dots:
        handles.append(Line2D([], [], color="0.3", marker="o", ls="", label=f"client ({n_dots})"))
    handles.append(Patch(color="0.5", alpha=0.25, label="rounds running"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    return fig


@dataclass(frozen=True)
class _Result:
    """One row of a replay sweep: a policy's run from one start date in one region."""

    start: datetime
    policy: str
    region: str
    emissions_kg: float
    avoided_pct: float


def _start(text: Any, i: int) -> datetime:
    """``start_utc`` as an aware UTC datetime (``Z`` or ``+00:00``)."""
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        when = None
    if when is None or when.utcoffset() is None or when.utcoffset().total_seconds() != 0:
        raise TimelineError(f"rows[{i}].start_utc: {text!r} is not an ISO 8601 UTC time")
    return when


def _results(rows: Sequence[Mapping[str, Any]]) -> list[_Result]:
    """The sweep's rows, checked: every key there, numbers finite, one row per
    (start, policy, region)."""
    if not rows:
        raise TimelineError("rows: no replay results to draw")
    out, seen = [], set()
    for i, row in enumerate(rows):
        missing = [key for key in AVOIDED_KEYS if key not in row]
        if missing:
            raise TimelineError(f"rows[{i}]: missing key {missing[0]!r}")
        numbers = []
        for key in ("emissions_kg", "avoided_pct"):
            try:
                value = float(row[key])
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                raise TimelineError(f"rows[{i}].{key}: {row[key]!r} is not a finite number")
            numbers.append(value)
        result = _Result(
            _start(row["start_utc"], i), str(row["policy"]), str(row["region"]), *numbers
        )
        if result.emissions_kg < 0:
            raise TimelineError(f"rows[{i}].emissions_kg: {row['emissions_kg']!r} is negative")
        key = (result.start, result.policy, result.region)
        if key in seen:
            raise TimelineError(
                f"rows[{i}]: a second row for {row['start_utc']}, {result.policy}, {result.region}"
            )
        seen.add(key)
        out.append(result)
    return out


def avoided_figure(
    rows: Sequence[Mapping[str, Any]], baseline: str = "immediate", title: str = ""
) -> Figure:
    """A replay sweep's avoided emissions: per region (a column each), the distribution of
    ``avoided_pct`` over the start dates per policy, median written beside each box, above
    the same against the start date, a line per policy.

    ``rows`` hold ``start_utc``, ``policy``, ``region``, ``emissions_kg`` and
    ``avoided_pct`` (the percentage of ``baseline``'s emissions, same start and region,
    that the policy avoided). The baseline's own rows (0 by definition) are not drawn as a
    policy; their median emissions head each column, the scale the percentages are of.
    Raises :class:`TimelineError` for empty or inconsistent rows.
    """
    from matplotlib.figure import Figure

    from fedlab.reports.figures import MAX_WIDTH, colors

    results = _results(rows)
    policies = list(dict.fromkeys(r.policy for r in results if r.policy != baseline))
    if not policies:
        raise TimelineError(f"rows: no policy other than the baseline {baseline!r}")
    regions = sorted({r.region for r in results})
    palette = dict(zip(policies, colors(len(policies)), strict=True))
    panel = max(4.5, 1.5 + 0.9 * len(policies))
    fig = Figure(figsize=(min(MAX_WIDTH, panel * len(regions)), 8.0))
    axes = fig.subplots(2, len(regions), squeeze=False)
    ylabel = f"% of {baseline} emissions avoided"
    for column, region in enumerate(regions):
        top, bottom = axes[0][column], axes[1][column]
        mine = [r for r in results if r.region == region]
        base = [r.emissions_kg for r in mine if r.policy == baseline]
        head = f"{region}: {baseline} median {np.median(base):.3g} kgCO2e" if base else region
        for x, policy in enumerate(policies):
            runs = sorted((r for r in mine if r.policy == policy), key=lambda r: r.start)
            if not runs:
                continue
            pct = np.array([r.avoided_pct for r in runs])
            box = top.boxplot(
                [pct],
                positions=[x],
                widths=0.5,
                patch_artist=True,
                medianprops={"color": "black"},
                flierprops={"ms": 3},
            )
            box["boxes"][0].set(facecolor=palette[policy], alpha=0.5)
            median = float(np.median(pct))
            note = top.text(x + 0.28, median, f"{median:.1f}%", va="center", fontsize=7)
            note.set_gid(f"median:{policy}")
            bottom.plot(
                [r.start for r in runs],
                pct,
                color=palette[policy],
                marker="o",
                ms=2,
                lw=1.0,
                label=policy,
            )
        top.set_xticks(
            range(len(policies)), policies, rotation=20 if len(policies) > 3 else 0, fontsize=8
        )
        top.set_xlim(-0.6, len(policies) - 0.4)
        top.set(
            title=head,
            xlabel="policy (box: quartiles over start dates; number: median)",
            ylabel=ylabel if column == 0 else "",
        )
        bottom.set(title=f"{region}: by start date", ylabel=ylabel if column == 0 else "")
        _date_axis(bottom, "start date (UTC)")
        for ax in (top, bottom):
            ax.axhline(0.0, color="0.4", lw=0.8)
            ax.grid(alpha=0.3)
    axes[1][-1].legend(fontsize=7, loc="best")
    starts = len({r.start for r in results})
    what = f"Emissions avoided against {baseline} over {starts} start date{'s' * (starts != 1)}"
    fig.suptitle(f"{what}: {title}" if title else what)
    return fig
