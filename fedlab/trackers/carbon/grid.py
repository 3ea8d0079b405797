"""How dirty each region's electricity is over an interval of the run's simulated clock: the
one place every emission figure, carbon-aware choice and replay gets its intensity from.

``static`` intensities are each region's annual value (CodeCarbon's data), or with an hourly
profile the value at the hour an interval starts; ``trace`` intensities are time series read
at the dated clock (``clock.start`` + simulated seconds). Energy drawn over ``[a, b)`` is
spread evenly over it, so its emissions are ``kWh x`` the trace's time-weighted mean over
``[a, b)`` ``/ 1000``: energy that spans an hour boundary is split across the hours.
Decisions (temporal policies, carbon-aware selection) read :meth:`GridIntensity.forecast`;
accounting reads :meth:`GridIntensity.actual`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedlab.trackers.carbon.intensity import (
    IntensityProfile,
    carbon_intensity,
    intensity_data_year,
    normalise_code,
)

if TYPE_CHECKING:
    from fedlab.trackers.carbon.forecast import Forecaster
    from fedlab.trackers.carbon.traces import IntensityTrace


class GridIntensity:
    """Actual and forecast intensity (gCO2e/kWh) of each region over simulated intervals.

    ``traces`` (region -> :class:`~fedlab.trackers.carbon.traces.IntensityTrace`) and
    ``start_epoch`` make it dated; without traces it is static (annual values, or the hourly
    ``profile``) and its forecast is the actual value (a constant is known in advance).
    """

    def __init__(
        self,
        *,
        traces: Mapping[str, IntensityTrace] | None = None,
        forecaster: Forecaster | None = None,
        start_epoch: float | None = None,
        profile: IntensityProfile | None = None,
        kind: str = "average",
        forecast_name: str = "perfect",
    ) -> None:
        if traces and start_epoch is None:
            raise ValueError("traces need a dated clock (clock.start)")
        self.traces = dict(traces or {})
        self.forecaster = forecaster
        self.start_epoch = start_epoch
        self.profile = profile
        self.kind = kind
        self.forecast_name = forecast_name if self.traces else "perfect"

    @property
    def dated(self) -> bool:
        """Whether intensities change with the date (a trace), not only with the hour."""
        return bool(self.traces)

    def epoch(self, sim_s: float) -> float:
        """POSIX seconds of ``sim_s`` seconds after ``clock.start``."""
        assert self.start_epoch is not None, "an undated clock has no epoch"
        return self.start_epoch + sim_s

    def _static(self, region: str, a_s: float) -> float:
        if self.profile is not None:
            return self.profile.at(region, a_s)
        return carbon_intensity(region)

    def actual(self, region: str, a_s: float, b_s: float | None = None) -> float:
        """Mean intensity of ``region`` over ``[a_s, b_s)`` (the value at ``a_s`` if b is None
        or equal)."""
        code = normalise_code(region)
        trace = self.traces.get(code)
        if trace is None:
            return self._static(code, a_s)
        a = self.epoch(a_s)
        if b_s is None or b_s <= a_s:
            return trace.at(a)
        return trace.mean(a, self.epoch(b_s))

    def forecast(self, region: str, a_s: float, b_s: float | None, issued_s: float) -> float:
        """The forecast, issued at ``issued_s``, of ``region``'s mean over ``[a_s, b_s)``."""
        code = normalise_code(region)
        if code not in self.traces or self.forecaster is None:
            return self.actual(code, a_s, b_s)
        b = a_s if b_s is None or b_s <= a_s else b_s
        a_epoch = self.epoch(a_s)
        b_epoch = self.epoch(b) if b > a_s else a_epoch + 1e-6
        return self.forecaster.mean(code, a_epoch, b_epoch, self.epoch(issued_s))

    def kg(self, kwh: float, region: str, a_s: float, b_s: float | None = None) -> float:
        """Emissions in kg of ``kwh`` drawn evenly over ``[a_s, b_s)`` in ``region``."""
        return kwh * self.actual(region, a_s, b_s) / 1000.0

    def signal(self, weights: Mapping[str, float]) -> Any:
        """The forecast a temporal policy minimises: ``weights``-averaged over regions
        (clients per region, or the host alone); ``(a_s, b_s, issued_s) -> g/kWh``."""
        total = math.fsum(weights.values())
        parts = [(region, w / total) for region, w in sorted(weights.items()) if w > 0]

        def signal(a_s: float, b_s: float, issued_s: float) -> float:
            return math.fsum(w * self.forecast(r, a_s, b_s, issued_s) for r, w in parts)

        return signal

    def selection_signal(self, counts: Mapping[str, int], k: int, fair: int) -> Any:
        """The forecast of the ``k`` clients carbon-aware selection would train: ``fair`` of
        them drawn uniformly (expected at the population's mean), the rest from the regions
        whose forecast is cleanest at that time (``counts``: clients per region);
        ``(a_s, b_s, issued_s) -> g/kWh``."""
        population = math.fsum(counts.values())
        regions = sorted(counts)

        def signal(a_s: float, b_s: float, issued_s: float) -> float:
            values = {r: self.forecast(r, a_s, b_s, issued_s) for r in regions}
            mean = math.fsum(values[r] * counts[r] for r in regions) / population
            left, total = k - fair, fair * mean
            for region in sorted(regions, key=values.__getitem__):
                take = min(left, counts[region])
                total += take * values[region]
                left -= take
            return total / k

        return signal

    def check_covers(self, regions: Iterable[str], a_s: float, b_s: float, key: str) -> None:
        """Raise a one-line ValueError naming ``key`` when a region's trace (or its forecast
        file) does not cover ``[a_s, b_s)`` of the simulated clock."""
        from fedlab.config.clock import format_utc

        for region in dict.fromkeys(normalise_code(r) for r in regions):
            trace = self.traces.get(region)
            if trace is None:
                continue
            a, b = self.epoch(a_s), self.epoch(b_s)
            if not trace.covers(a, b):
                raise ValueError(
                    f"{key}: the {region} trace ({trace.source}) covers "
                    f"{format_utc(trace.start)} to {format_utc(trace.end)}, not the simulated "
                    f"period {format_utc(a)} to {format_utc(b)}"
                )

    def describe(self, regions: Sequence[str]) -> dict[str, Any]:
        """The record's account of where its intensities came from (``carbon.intensity``)."""
        codes = list(dict.fromkeys(normalise_code(r) for r in regions))
        if not self.traces:
            return {
                "source": "static",
                "kind": "average",
                "profile": self.profile is not None,
                "regions": {
                    c: f"CodeCarbon global_energy_mix.json ({intensity_data_year(c) or 'n/a'})"
                    for c in codes
                },
            }
        return {
            "source": "trace",
            "kind": self.kind,
            "forecast": self.forecast_name,
            "regions": {
                c: self.traces[c].source if c in self.traces else "CodeCarbon annual value"
                for c in codes
            },
        }


def build_grid(carbon: Any, clock: Any, regions: Iterable[str], seed: int) -> GridIntensity:
    """The run's :class:`GridIntensity` from its ``carbon`` and ``clock`` configs, for the
    client and host ``regions`` it will be asked about; ValueErrors name the key or file."""
    if carbon.intensity != "trace":
        profile = IntensityProfile.from_csv(carbon.intensity_profile) if (
            carbon.intensity_profile
        ) else None
        return GridIntensity(profile=profile)
    from fedlab.trackers.carbon.forecast import build_forecaster
    from fedlab.trackers.carbon.traces import load_traces

    if clock.start is None:
        raise ValueError("clock.start: carbon.intensity=trace needs a dated clock, e.g. "
                         "clock.start=2020-06-15T10:30:00Z")
    codes = list(dict.fromkeys(normalise_code(r) for r in regions))
    files = dict(carbon.traces) if carbon.traces else None
    traces = load_traces(files, codes, carbon.intensity_kind)
    forecast_files = dict(carbon.forecast_files) if carbon.forecast_files else None
    forecaster = build_forecaster(
        carbon.forecast, traces, error=carbon.forecast_error, seed=seed, files=forecast_files
    )
    return GridIntensity(
        traces=traces,
        forecaster=forecaster,
        start_epoch=clock.start_epoch,
        kind=carbon.intensity_kind,
        forecast_name=carbon.forecast,
    )
