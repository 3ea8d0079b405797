"""What a scheduler believes the intensity will be: forecasts of the traces (docs/carbon.md).

A carbon-aware scheduler decides *before* it runs, so it can only use a forecast; the
emissions are then charged at the actual trace. Keeping the two apart is what lets a study
say how much of a shifting policy's saving survives an imperfect forecast. Every forecaster
answers ``mean(region, a, b, issued_at)``: the forecast mean intensity (g/kWh) over the
epoch-second interval ``[a, b)`` as known at ``issued_at``.

* ``perfect``: the actual trace (an upper bound on what shifting can save);
* ``noisy``: each step of the trace times ``1 + e``, ``e ~ N(0, error)`` drawn once per
  (seed, region), as in Wiesner et al. (Middleware '21), who used a 5 % error;
* ``persistence``: yesterday's value at the same time of day (the naive baseline any real
  forecast must beat);
* ``file``: a user's own forecast per region, a CSV in the trace format.
"""

from __future__ import annotations

import math
import numbers
import zlib
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from fedlab.trackers.carbon.traces import IntensityTrace, TraceError, format_utc

FORECASTS = ("perfect", "noisy", "persistence", "file")
DAY_S = 86400.0


class Forecaster(Protocol):
    """Anything that forecasts a region's mean intensity over an interval."""

    name: str

    def mean(self, region: str, a: float, b: float, issued_at: float) -> float:
        """Forecast mean intensity (g/kWh) over ``[a, b)`` (epoch s), issued at ``issued_at``."""
        ...


def _lookup(traces: Mapping[str, IntensityTrace], region: str, what: str) -> IntensityTrace:
    trace = traces.get(region)
    if trace is None:
        raise TraceError(
            f"{what} forecast: no trace for region {region!r} (have: {', '.join(traces) or 'none'})"
        )
    return trace


class PerfectForecast:
    """The actual trace: what a scheduler with perfect foresight would see."""

    name = "perfect"

    def __init__(self, traces: Mapping[str, IntensityTrace]) -> None:
        self._traces = dict(traces)

    def mean(self, region: str, a: float, b: float, issued_at: float) -> float:
        """The actual mean over ``[a, b)``; ``issued_at`` does not matter."""
        return _lookup(self._traces, region, self.name).mean(a, b)


class NoisyForecast:
    """Each step's actual value times ``1 + e``, ``e ~ N(0, error)``, clipped at 0.

    The errors are drawn once per (seed, region) for the whole trace, one per step, so the
    same target always gets the same forecast whenever it is asked for and the run is
    reproducible; the region enters the seed through CRC-32 (stable across processes,
    unlike ``hash``), so regions do not share their errors.
    """

    name = "noisy"

    def __init__(self, traces: Mapping[str, IntensityTrace], error: float, seed: int) -> None:
        if not (isinstance(error, numbers.Real) and math.isfinite(error) and error >= 0):
            raise TraceError(f"carbon.forecast_error: {error!r} must be a number >= 0")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise TraceError(f"noisy forecast: seed {seed!r} must be an integer >= 0")
        self.error = float(error)
        self.seed = int(seed)
        self._traces = {
            region: self._perturb(trace, region) for region, trace in dict(traces).items()
        }

    def _perturb(self, trace: IntensityTrace, region: str) -> IntensityTrace:
        rng = np.random.default_rng([self.seed, zlib.crc32(region.encode("utf-8"))])
        factor = 1.0 + rng.normal(0.0, self.error, size=trace.values.size)
        return IntensityTrace(
            region=trace.region,
            times=trace.times,
            values=np.clip(trace.values * factor, 0.0, None),
            kind=trace.kind,
            source=f"noisy forecast ({self.error:g}, seed {self.seed}) of {trace.source}",
            last_step_s=trace.end - float(trace.times[-1]),
        )

    def mean(self, region: str, a: float, b: float, issued_at: float) -> float:
        """The perturbed trace's exact mean over ``[a, b)``; ``issued_at`` does not matter."""
        return _lookup(self._traces, region, self.name).mean(a, b)


def _lag_days(t: float, issued_at: float) -> int:
    """The smallest k >= 1 with ``t - k days < issued_at``."""
    return max(1, math.floor((t - issued_at) / DAY_S) + 1)


class PersistenceForecast:
    """The value at ``target - k * 24 h`` for the smallest ``k >= 1`` before ``issued_at``.

    For the next 24 h after ``issued_at`` that is yesterday's value at the same time of day,
    for 24-48 h ahead the day before's, and so on: only values already observed at
    ``issued_at`` are used. ``mean`` is exact over windows that cross a step or a 24 h
    boundary: the window is cut where ``k`` changes and each piece is the actual trace's
    exact mean over the piece shifted back by ``k`` days.
    """

    name = "persistence"

    def __init__(self, traces: Mapping[str, IntensityTrace]) -> None:
        self._traces = dict(traces)

    def mean(self, region: str, a: float, b: float, issued_at: float) -> float:
        """Exact mean of the persistence forecast over ``[a, b)``."""
        trace = _lookup(self._traces, region, self.name)
        if b < a:
            raise TraceError(
                f"persistence forecast of {region}: period [{format_utc(a)}, {format_utc(b)}) "
                "ends before it starts"
            )
        try:
            if a == b:
                return trace.at(a - _lag_days(a, issued_at) * DAY_S)
            k = _lag_days(a, issued_at)
            if b <= issued_at + k * DAY_S:  # one lag for the whole window
                return trace.mean(a - k * DAY_S, b - k * DAY_S)
            # k grows by one at each issued_at + k days; counting k (not recomputing it from
            # the piece's start) keeps float rounding from ever yielding an empty piece forever
            total = 0.0
            piece_start = a
            while piece_start < b:
                piece_end = min(b, issued_at + k * DAY_S)
                shift = k * DAY_S
                if piece_end > piece_start:
                    piece_mean = trace.mean(piece_start - shift, piece_end - shift)
                    total += piece_mean * (piece_end - piece_start)
                piece_start = max(piece_start, piece_end)
                k += 1
            return total / (b - a)
        except TraceError as err:
            raise TraceError(
                f"persistence forecast of {region} over [{format_utc(a)}, {format_utc(b)}) "
                f"issued at {format_utc(issued_at)} uses earlier days' values: {err}"
            ) from None


class FileForecast:
    """A user's forecast per region, read from CSVs in the trace format."""

    name = "file"

    def __init__(self, forecast_traces: Mapping[str, IntensityTrace]) -> None:
        self._traces = dict(forecast_traces)

    def mean(self, region: str, a: float, b: float, issued_at: float) -> float:
        """The forecast file's exact mean over ``[a, b)``; ``issued_at`` does not matter (a
        file holds one forecast per target)."""
        return _lookup(self._traces, region, self.name).mean(a, b)


def build_forecaster(
    kind: str,
    traces: Mapping[str, IntensityTrace],
    *,
    error: float = 0.05,
    seed: int = 0,
    files: Mapping[str, str] | None = None,
) -> Forecaster:
    """The forecaster named by config ``carbon.forecast`` over the actual ``traces``.

    ``files`` (config ``carbon.forecast_files``, REGION -> path) is needed for ``file`` and
    must give every region of ``traces``; the forecasts are read as the traces' kind.
    """
    if kind == "perfect":
        return PerfectForecast(traces)
    if kind == "noisy":
        return NoisyForecast(traces, error, seed)
    if kind == "persistence":
        return PersistenceForecast(traces)
    if kind == "file":
        given = {str(k).strip().upper(): str(v) for k, v in (files or {}).items()}
        missing = [region for region in traces if region not in given]
        if missing:
            raise TraceError(
                f"carbon.forecast=file: no forecast file for region {missing[0]} "
                f"(give +carbon.forecast_files.{missing[0]}=path)"
            )
        return FileForecast(
            {
                region: IntensityTrace.from_csv(given[region], region, kind=trace.kind)
                for region, trace in traces.items()
            }
        )
    raise TraceError(f"carbon.forecast: {kind!r} is not one of {', '.join(FORECASTS)}")
