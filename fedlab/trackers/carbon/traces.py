"""Carbon intensity that changes by the hour: traces as step functions (docs/carbon.md).

A trace is a region's grid intensity over time, one value per row. Each value holds from its
row's timestamp until the next row's; the last row holds for the trace's own step (the
median spacing of its rows). Energy drawn over ``[a, b)`` is spread uniformly over the
interval, so its emissions are ``kwh * mean(a, b) / 1000`` with ``mean`` the exact
time-weighted mean of the step function: energy that crosses an hour boundary is charged
partly at each hour's intensity, in proportion to the time spent in each.

Times are POSIX epoch seconds (float, UTC). Files are CSV with the header
``timestamp_utc,gco2_per_kwh`` and ISO 8601 UTC timestamps (``2020-01-01T00:00:00Z``;
``+00:00`` is accepted), strictly increasing, values finite and >= 0.

Three traces are bundled (Germany, Great Britain, France, hourly, 2019-12-20 to 2021-01-09):
average life-cycle intensities that Wiesner et al. derived from ENTSO-E production data
(``traces/README.md`` gives the source and the citation).
"""

from __future__ import annotations

import bisect
import csv
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import numpy as np

#: What the bundled numbers are: the average intensity of the electricity produced.
BUNDLED_KIND = "average"
#: What a trace's numbers can be: average (all generation), marginal (the plant that
#: answers extra demand), market (a supplier's contractual, market-based figure).
KINDS = ("average", "marginal", "market")
HEADER = ("timestamp_utc", "gco2_per_kwh")
_BUNDLED_FILES = {"DEU": "DEU_2020.csv", "FRA": "FRA_2020.csv", "GBR": "GBR_2020.csv"}


class TraceError(ValueError):
    """A bad trace file, a region without a trace, or a period a trace does not cover.

    The message is one line naming the file and 1-based data row, or the region and the
    periods asked and covered, so a config error can be fixed without a traceback.
    """


def parse_utc(text: str) -> float:
    """ISO 8601 UTC timestamp -> epoch seconds; ``ValueError`` for anything else.

    A timestamp without an offset is refused rather than read as UTC: a local-time export
    would otherwise shift every value by the zone's offset without anyone noticing.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (end it in Z for UTC)")
    if moment.utcoffset() != timedelta(0):
        raise ValueError(f"{text!r} is not UTC (end it in Z or +00:00)")
    return moment.timestamp()


def format_utc(t: float) -> str:
    """Epoch seconds -> ``2020-06-15T10:30:00Z`` (to the nearest second)."""
    return datetime.fromtimestamp(round(t), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _period(a: float, b: float) -> str:
    return f"[{format_utc(a)}, {format_utc(b)})"


@dataclass(frozen=True, eq=False)
class IntensityTrace:
    """One region's intensity as a step function over epoch seconds.

    ``last_step_s`` is how long the last row holds when that is known from elsewhere (a
    window cut out of a longer trace); ``None`` means the median spacing of the rows.
    The arrays are copied and made read-only, and the cumulative integral is computed once
    here (vectorised), so :meth:`mean` costs two binary searches however long the trace is:
    a replay sweep calls it millions of times. The searches run on Python lists with
    :mod:`bisect`, about 1 µs a call, since ``np.searchsorted`` on one scalar spends most of
    its 1.4 µs converting the argument.
    """

    region: str
    times: np.ndarray
    values: np.ndarray
    kind: str = "average"
    source: str = ""
    last_step_s: float | None = None
    _edges: list[float] = field(init=False, repr=False)
    _cumulative: list[float] = field(init=False, repr=False)
    _levels: list[float] = field(init=False, repr=False)
    _span: tuple[float, float] = field(init=False, repr=False)
    _median_step: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        where = self.source or f"trace {self.region}"
        times = np.array(self.times, dtype=np.float64)
        values = np.array(self.values, dtype=np.float64)
        if times.ndim != 1 or times.shape != values.shape:
            raise TraceError(f"{where}: times and values must be 1-D arrays of one length")
        if times.size == 0 or (times.size == 1 and self.last_step_s is None):
            raise TraceError(f"{where}: needs at least 2 rows to know how long a row holds")
        if not (np.all(np.isfinite(times)) and np.all(np.diff(times) > 0)):
            raise TraceError(f"{where}: times must be finite and strictly increasing")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise TraceError(f"{where}: values must be finite and >= 0")
        if self.kind not in KINDS:
            raise TraceError(f"{where}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        median = float(np.median(np.diff(times))) if times.size > 1 else float(self.last_step_s)
        step = median if self.last_step_s is None else self.last_step_s
        if not (math.isfinite(step) and step > 0):
            raise TraceError(f"{where}: last_step_s must be a positive number of seconds")
        edges = np.append(times, times[-1] + step)
        cumulative = np.concatenate(([0.0], np.cumsum(values * np.diff(edges))))
        times.flags.writeable = values.flags.writeable = False
        object.__setattr__(self, "region", self.region.strip().upper())
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "_edges", edges.tolist())
        object.__setattr__(self, "_cumulative", cumulative.tolist())
        object.__setattr__(self, "_levels", values.tolist())
        object.__setattr__(self, "_span", (float(edges[0]), float(edges[-1])))
        object.__setattr__(self, "_median_step", median)

    @classmethod
    def from_csv(cls, path: str | Path, region: str, kind: str = "average") -> IntensityTrace:
        """Read and validate a trace CSV; any problem is a one-line ``TraceError``
        ``"<path> row N: ..."``: N counts rows from 1 after the header (blank lines, which are
        skipped, count too, so the row is line N + 1 in an editor)."""
        times, values = _read_rows(Path(path))
        return cls(region=region, times=times, values=values, kind=kind, source=str(path))

    @property
    def start(self) -> float:
        """Epoch seconds of the first row."""
        return self._span[0]

    @property
    def end(self) -> float:
        """Epoch seconds at which the last row stops holding (last time + its step)."""
        return self._span[1]

    @property
    def step_s(self) -> float:
        """The trace's own step: the median spacing of its rows (``last_step_s`` for one row)."""
        return self._median_step

    def covers(self, a: float, b: float) -> bool:
        """Whether ``[a, b)`` (or the instant ``a`` when ``a == b``) lies within the trace."""
        start, end = self._span
        return start <= a <= b <= end and (a < b or a < end)

    def _require(self, a: float, b: float) -> None:
        start, end = self._span
        if start <= a < b <= end:  # the common case, checked first: mean() is called a lot
            return
        if not (math.isfinite(a) and math.isfinite(b)):
            raise TraceError(f"carbon trace {self.region}: period ({a}, {b}) is not finite")
        if b < a:
            raise TraceError(
                f"carbon trace {self.region}: period {_period(a, b)} ends before it starts"
            )
        if not self.covers(a, b):
            raise TraceError(
                f"carbon trace {self.region}: asked for {_period(a, b)}, the trace covers "
                f"{_period(self.start, self.end)} ({self.source or 'in memory'})"
            )

    def at(self, t: float) -> float:
        """The intensity holding at instant ``t`` (g/kWh); ``TraceError`` outside
        ``[start, end)``."""
        self._require(t, t)
        return self._levels[bisect.bisect_right(self._edges, t) - 1]

    def mean(self, a: float, b: float) -> float:
        """Exact time-weighted mean intensity over ``[a, b)``; the value at ``a`` if
        ``a == b``. ``TraceError`` naming the periods when the trace does not cover it.

        The two partial rows at the ends are integrated directly and only the whole rows in
        between come from the cumulative integral, so a window inside one row returns that
        row's value exactly (a difference of two large running sums would not).
        """
        self._require(a, b)
        if a == b:
            return self.at(a)
        edges, levels = self._edges, self._levels
        first = bisect.bisect_right(edges, a) - 1
        last = bisect.bisect_left(edges, b) - 1
        if first == last:
            return levels[first]
        total = (
            levels[first] * (edges[first + 1] - a)
            + (self._cumulative[last] - self._cumulative[first + 1])
            + levels[last] * (b - edges[last])
        )
        return total / (b - a)

    def kg(self, kwh: float, a: float, b: float) -> float:
        """kg CO2e of ``kwh`` drawn uniformly over ``[a, b)``."""
        return kwh * self.mean(a, b) / 1000.0

    def window(self, a: float, b: float) -> IntensityTrace:
        """The rows that hold during ``[a, b)`` (for plots), ending where the last of them
        stops holding in this trace, so the window's means equal this trace's."""
        self._require(a, b)
        first = bisect.bisect_right(self._edges, a) - 1
        last = max(first, bisect.bisect_left(self._edges, b) - 1)
        last = min(last, self.values.size - 1)
        return IntensityTrace(
            region=self.region,
            times=self.times[first : last + 1],
            values=self.values[first : last + 1],
            kind=self.kind,
            source=self.source,
            last_step_s=float(self._edges[last + 1] - self._edges[last]),
        )


def _read_rows(path: Path) -> tuple[list[float], list[float]]:
    """Parse and check a trace CSV's rows; one-line ``TraceError`` naming file and row."""
    try:
        handle = path.open("r", encoding="utf-8-sig", newline="")
    except OSError as err:
        raise TraceError(f"{path}: cannot read the trace ({err.strerror or err})") from None
    times: list[float] = []
    values: list[float] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise TraceError(f"{path}: empty file (expected the header {','.join(HEADER)})")
        if tuple(cell.strip() for cell in header) != HEADER:
            raise TraceError(
                f"{path}: header is {','.join(header)!r}, expected {','.join(HEADER)!r}"
            )
        for cells in reader:
            if not cells or all(not cell.strip() for cell in cells):
                continue
            where = f"{path} row {reader.line_num - 1}"
            if len(cells) != 2:
                raise TraceError(
                    f"{where}: expected 2 fields ({','.join(HEADER)}), got {len(cells)}"
                )
            stamp, value = (cell.strip() for cell in cells)
            try:
                t = parse_utc(stamp)
            except ValueError as err:
                raise TraceError(f"{where}: timestamp {err}") from None
            if times and t == times[-1]:
                raise TraceError(f"{where}: timestamp {stamp} repeats the previous row's")
            if times and t < times[-1]:
                raise TraceError(
                    f"{where}: timestamp {stamp} is before the previous row's "
                    f"{format_utc(times[-1])} (rows must be in increasing time order)"
                )
            times.append(t)
            values.append(_parse_value(value, where))
    if not times:
        raise TraceError(f"{path}: no data rows after the header")
    return times, values


def _parse_value(text: str, where: str) -> float:
    if not text:
        raise TraceError(f"{where}: gco2_per_kwh is missing")
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{where}: gco2_per_kwh {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceError(f"{where}: gco2_per_kwh {text!r} is not finite")
    if value < 0:
        raise TraceError(f"{where}: gco2_per_kwh {text} is negative")
    return value


def bundled_regions() -> tuple[str, ...]:
    """The regions with a bundled trace, sorted."""
    return tuple(sorted(_BUNDLED_FILES))


@functools.lru_cache(maxsize=len(_BUNDLED_FILES))
def _load_bundled(region: str) -> IntensityTrace:
    name = _BUNDLED_FILES[region]
    times, values = _read_rows(Path(str(resources.files(__package__).joinpath("traces", name))))
    return IntensityTrace(region, times, values, kind=BUNDLED_KIND, source=f"bundled: {name}")


def bundled_trace(region: str) -> IntensityTrace:
    """The bundled trace of ``region`` (ISO-3, any case), read once per process."""
    code = str(region).strip().upper()
    if code not in _BUNDLED_FILES:
        raise TraceError(
            f"carbon: no bundled trace for region {region!r} "
            f"(bundled: {', '.join(bundled_regions())})"
        )
    return _load_bundled(code)


def load_traces(
    files: Mapping[str, str] | None, regions: Iterable[str], kind: str
) -> dict[str, IntensityTrace]:
    """The trace of each region: the file given in ``carbon.traces`` or else the bundled one.

    ``files`` maps REGION -> path (config ``carbon.traces``); a key that names no region in
    ``regions`` is refused, as it is most likely a misspelt code. A bundled trace is only
    used when ``kind`` is what it holds (average): charging marginal emissions at average
    intensities would understate what shifting a job saves or costs.
    """
    if kind not in KINDS:
        raise TraceError(f"carbon.intensity_kind: {kind!r} is not one of {', '.join(KINDS)}")
    wanted = list(dict.fromkeys(str(r).strip().upper() for r in regions))
    given = {str(k).strip().upper(): str(v) for k, v in (files or {}).items()}
    stray = sorted(set(given) - set(wanted))
    if stray:
        raise TraceError(
            f"carbon.traces.{stray[0]}: no client or server is in region {stray[0]} "
            f"(regions: {', '.join(wanted) or 'none'})"
        )
    out: dict[str, IntensityTrace] = {}
    for region in wanted:
        if region in given:
            out[region] = IntensityTrace.from_csv(given[region], region, kind=kind)
        elif region not in _BUNDLED_FILES:
            raise TraceError(
                f"carbon.traces: no trace for region {region} (bundled: "
                f"{', '.join(bundled_regions())}; give +carbon.traces.{region}=path)"
            )
        elif kind != BUNDLED_KIND:
            raise TraceError(
                f"carbon.intensity_kind={kind}: the bundled trace of {region} holds "
                f"{BUNDLED_KIND} intensities; give +carbon.traces.{region}=path to a {kind} trace"
            )
        else:
            out[region] = bundled_trace(region)
    return out
