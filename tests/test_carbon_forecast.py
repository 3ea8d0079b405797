"""Tests for fedlab.trackers.carbon.forecast, checked against independent arithmetic.

Actual values come from the bundled CSVs read with the csv module; persistence is checked
against the rows 24 h and 48 h earlier worked out by hand, the noisy forecast's error
against its configured size over a year of hours.
"""

from __future__ import annotations

import csv
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedlab.trackers.carbon.forecast import (
    FORECASTS,
    FileForecast,
    NoisyForecast,
    PerfectForecast,
    PersistenceForecast,
    build_forecaster,
)
from fedlab.trackers.carbon.traces import IntensityTrace, TraceError, bundled_trace

DATA = Path(__file__).parent / "data" / "carbon"
BUNDLED = Path(__file__).resolve().parents[1] / "fedlab" / "trackers" / "carbon" / "traces"
HOUR = 3600.0


def at(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)


def read_csv(path: Path) -> dict[datetime, float]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {
            at(row["timestamp_utc"][:16]): float(row["gco2_per_kwh"])
            for row in csv.DictReader(handle)
        }


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[datetime, float]]:
    return {region: read_csv(BUNDLED / f"{region}_2020.csv") for region in ("DEU", "GBR")}


@pytest.fixture(scope="module")
def traces() -> dict[str, IntensityTrace]:
    return {region: bundled_trace(region) for region in ("DEU", "GBR")}


def test_perfect_forecast_is_the_actual_mean(traces, rows) -> None:
    forecast = PerfectForecast(traces)
    a, b = at("2020-06-15T10:30"), at("2020-06-15T12:15")
    hours = [rows["GBR"][at(f"2020-06-15T{h}:00")] for h in ("10", "11", "12")]
    by_hand = (0.5 * hours[0] + hours[1] + 0.25 * hours[2]) / 1.75
    got = forecast.mean("GBR", a.timestamp(), b.timestamp(), issued_at=0.0)
    assert got == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(TraceError, match=r"no trace for region 'FRA' \(have: DEU, GBR\)"):
        forecast.mean("FRA", a.timestamp(), b.timestamp(), 0.0)


# --- persistence ----------------------------------------------------------------------------


def test_persistence_is_the_value_24_h_and_48_h_earlier(traces, rows) -> None:
    forecast = PersistenceForecast(traces)
    issued = at("2020-06-10T00:00")
    deu = rows["DEU"]
    for ahead in (0, 5, 23):  # within 24 h: yesterday's same hour
        target = issued + timedelta(hours=ahead)
        t = target.timestamp()
        expect = deu[target - timedelta(hours=24)]
        assert forecast.mean("DEU", t, t + HOUR, issued.timestamp()) == expect
    for ahead in (24, 31, 47):  # 24-48 h ahead: two days earlier
        target = issued + timedelta(hours=ahead)
        t = target.timestamp()
        expect = deu[target - timedelta(hours=48)]
        assert forecast.mean("DEU", t, t + HOUR, issued.timestamp()) == expect
    target = issued + timedelta(hours=50)  # 48-72 h ahead: three days earlier
    assert (
        forecast.mean("DEU", target.timestamp(), target.timestamp(), issued.timestamp())
        == (deu[target - timedelta(hours=72)])
    )


def test_persistence_uses_only_values_known_when_issued(traces, rows) -> None:
    """Issued mid-hour at 10:30, the 11:00-12:00 target is 24 h earlier (10:30 + 24 h is
    later than 11:00 - 24 h), but 10:40 the next day is 48 h back, not 24 h."""
    forecast = PersistenceForecast(traces)
    issued = at("2020-08-03T10:30").timestamp()
    deu = rows["DEU"]
    t = at("2020-08-04T10:40").timestamp()
    assert forecast.mean("DEU", t, t, issued) == deu[at("2020-08-02T10:00")]
    t = at("2020-08-04T10:20").timestamp()
    assert forecast.mean("DEU", t, t, issued) == deu[at("2020-08-03T10:00")]


def test_persistence_mean_is_exact_across_hour_and_day_boundaries(traces, rows) -> None:
    forecast = PersistenceForecast(traces)
    issued = at("2020-06-10T00:00")
    deu = rows["DEU"]
    day = timedelta(hours=24)
    # [issued + 0.5 h, issued + 1.5 h): half of 00:00 and half of 01:00, both a day earlier
    a, b = issued + timedelta(minutes=30), issued + timedelta(minutes=90)
    by_hand = 0.5 * deu[issued - day] + 0.5 * deu[issued + timedelta(hours=1) - day]
    got = forecast.mean("DEU", a.timestamp(), b.timestamp(), issued.timestamp())
    assert got == pytest.approx(by_hand, rel=1e-12)
    # [issued + 23 h, issued + 25 h): 23:00 of the day before (24 h back), then 00:00 two
    # days back (48 h back): the window crosses the 24 h boundary where k changes
    a, b = issued + timedelta(hours=23), issued + timedelta(hours=25)
    by_hand = (
        deu[issued + timedelta(hours=23) - day] + deu[issued + timedelta(hours=24) - 2 * day]
    ) / 2
    got = forecast.mean("DEU", a.timestamp(), b.timestamp(), issued.timestamp())
    assert got == pytest.approx(by_hand, rel=1e-12)
    # [issued + 22.75 h, issued + 24.5 h): 15 min of 22:00, 60 of 23:00 (k=1), 30 of 00:00 (k=2)
    a, b = issued + timedelta(hours=22.75), issued + timedelta(hours=24.5)
    by_hand = (
        15 * deu[issued + timedelta(hours=22) - day]
        + 60 * deu[issued + timedelta(hours=23) - day]
        + 30 * deu[issued + timedelta(hours=24) - 2 * day]
    ) / 105
    got = forecast.mean("DEU", a.timestamp(), b.timestamp(), issued.timestamp())
    assert got == pytest.approx(by_hand, rel=1e-12)


def test_persistence_before_the_trace_names_the_periods(traces) -> None:
    forecast = PersistenceForecast(traces)
    issued = at("2019-12-20T06:00").timestamp()  # the trace starts 6 h earlier
    with pytest.raises(TraceError) as err:
        forecast.mean("DEU", issued, issued + HOUR, issued)
    message = str(err.value)
    assert "persistence forecast of DEU" in message and "the trace covers" in message
    assert "[2019-12-19T06:00:00Z, 2019-12-19T07:00:00Z)" in message  # the look-back asked for


# --- noisy ---------------------------------------------------------------------------------


def _year_of_hours(forecast, region: str) -> tuple[list[float], list[float]]:
    start = at("2020-01-01T00:00")
    targets = [(start + timedelta(hours=h)).timestamp() for h in range(366 * 24)]
    got = [forecast.mean(region, t, t + HOUR, t - 6 * HOUR) for t in targets]
    return targets, got


def test_noisy_error_has_the_configured_size(traces, rows) -> None:
    for error in (0.05, 0.2):
        forecast = NoisyForecast(traces, error=error, seed=7)
        targets, got = _year_of_hours(forecast, "DEU")
        actual = [rows["DEU"][datetime.fromtimestamp(t, UTC)] for t in targets]
        relative = [g / a - 1 for g, a in zip(got, actual, strict=True)]
        # 8784 draws: the sample std is within ~0.8 % of sigma, the mean within sigma/94
        assert statistics.stdev(relative) == pytest.approx(error, rel=0.04)
        assert abs(statistics.fmean(relative)) < 3 * error / len(relative) ** 0.5


def test_noisy_is_seeded_per_seed_and_region(traces) -> None:
    _, first = _year_of_hours(NoisyForecast(traces, 0.05, seed=1), "DEU")
    _, again = _year_of_hours(NoisyForecast(traces, 0.05, seed=1), "DEU")
    _, other = _year_of_hours(NoisyForecast(traces, 0.05, seed=2), "DEU")
    assert first == again
    assert sum(a != b for a, b in zip(first, other, strict=True)) > 8000
    # regions draw their own errors: relative errors of DEU and GBR are not the same numbers
    forecast = NoisyForecast(traces, 0.05, seed=1)
    t = at("2020-05-05T05:00").timestamp()
    deu = forecast.mean("DEU", t, t + HOUR, t) / traces["DEU"].at(t)
    gbr = forecast.mean("GBR", t, t + HOUR, t) / traces["GBR"].at(t)
    assert deu != pytest.approx(gbr, rel=1e-9)


def test_noisy_draws_once_per_step(traces) -> None:
    forecast = NoisyForecast(traces, 0.1, seed=3)
    t = at("2020-09-09T09:00").timestamp()
    whole_hour = forecast.mean("DEU", t, t + HOUR, t - 86400)
    # the same target gets the same forecast whenever it is issued, and any part of the
    # hour has the hour's value
    assert forecast.mean("DEU", t, t + HOUR, t - 60) == whole_hour
    assert forecast.mean("DEU", t + 600, t + 1200, t) == pytest.approx(whole_hour, rel=1e-12)
    # a window over two hours is the time-weighted mean of the two hours' forecasts
    nxt = forecast.mean("DEU", t + HOUR, t + 2 * HOUR, t)
    got = forecast.mean("DEU", t + 0.75 * HOUR, t + 2 * HOUR, t)
    assert got == pytest.approx((0.25 * whole_hour + nxt) / 1.25, rel=1e-12)


def test_noisy_zero_error_is_perfect_and_bad_settings_are_refused(traces) -> None:
    forecast = NoisyForecast(traces, 0.0, seed=0)
    t = at("2020-02-02T02:00").timestamp()
    assert forecast.mean("GBR", t, t + 5400, t) == traces["GBR"].mean(t, t + 5400)
    with pytest.raises(TraceError, match=r"carbon\.forecast_error"):
        NoisyForecast(traces, -0.1, seed=0)
    with pytest.raises(TraceError, match="seed"):
        NoisyForecast(traces, 0.05, seed=-1)


# --- file forecast and the factory ------------------------------------------------------


def test_file_forecast_reads_the_users_csv() -> None:
    path = DATA / "forecast_DEU_2020-06-15.csv"
    forecast = build_forecaster("file", {"DEU": bundled_trace("DEU")}, files={"deu": str(path)})
    assert isinstance(forecast, FileForecast) and forecast.name == "file"
    rows = read_csv(path)
    # 05:00-07:30: one hour of the 00:00 row (310), 1.5 h of the 06:00 row (250)
    a, b = at("2020-06-15T05:00"), at("2020-06-15T07:30")
    by_hand = (1.0 * rows[at("2020-06-15T00:00")] + 1.5 * rows[at("2020-06-15T06:00")]) / 2.5
    assert forecast.mean("DEU", a.timestamp(), b.timestamp(), 0.0) == pytest.approx(by_hand)


def test_build_forecaster_kinds_and_errors(traces) -> None:
    assert FORECASTS == ("perfect", "noisy", "persistence", "file")
    assert isinstance(build_forecaster("perfect", traces), PerfectForecast)
    noisy = build_forecaster("noisy", traces, error=0.1, seed=4)
    assert isinstance(noisy, NoisyForecast) and (noisy.error, noisy.seed) == (0.1, 4)
    assert isinstance(build_forecaster("persistence", traces), PersistenceForecast)
    with pytest.raises(TraceError, match=r"carbon.forecast: 'oracle' is not one of perfect"):
        build_forecaster("oracle", traces)
    with pytest.raises(TraceError, match=r"\+carbon\.forecast_files\.DEU=path"):
        build_forecaster("file", traces, files={"GBR": str(DATA / "trace_small.csv")})
