"""Tests for fedlab.trackers.carbon.traces, checked against independent arithmetic.

The bundled CSVs and the fixtures are read here with the csv module and the means are
worked out by hand (weighted sums of the rows' values), so a wrong integral, an off-by-one
row lookup or a wrong last step in the module cannot make its own test pass.
"""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedlab.trackers.carbon.traces import (
    BUNDLED_KIND,
    IntensityTrace,
    TraceError,
    bundled_regions,
    bundled_trace,
    format_utc,
    load_traces,
    parse_utc,
)

DATA = Path(__file__).parent / "data" / "carbon"
BUNDLED = Path(__file__).resolve().parents[1] / "fedlab" / "trackers" / "carbon" / "traces"
HOUR = 3600.0


def epoch(text: str) -> float:
    """ISO text -> epoch seconds, by the standard library alone (not parse_utc)."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp()


def read_csv(path: Path) -> dict[str, float]:
    """The file's rows as {"YYYY-MM-DDTHH:MM": value}, read with the csv module."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {row["timestamp_utc"][:16]: float(row["gco2_per_kwh"]) for row in rows}


@pytest.fixture(scope="module")
def deu_rows() -> dict[str, float]:
    return read_csv(BUNDLED / "DEU_2020.csv")


# --- parse_utc / format_utc ------------------------------------------------------------


def test_parse_utc_accepts_z_and_zero_offset_only() -> None:
    assert parse_utc("2020-06-15T10:30:00Z") == epoch("2020-06-15T10:30")
    assert parse_utc("2020-06-15T10:30:00+00:00") == epoch("2020-06-15T10:30")
    with pytest.raises(ValueError, match="not UTC"):
        parse_utc("2020-06-15T12:30:00+02:00")
    with pytest.raises(ValueError, match="no time zone"):
        parse_utc("2020-06-15T10:30:00")
    with pytest.raises(ValueError, match="not an ISO 8601"):
        parse_utc("15/06/2020 10:30")


def test_format_utc_round_trips() -> None:
    assert format_utc(epoch("2020-06-15T10:30")) == "2020-06-15T10:30:00Z"
    assert parse_utc(format_utc(1592217000.0)) == 1592217000.0


# --- the bundled traces ------------------------------------------------------------------


def test_bundled_regions_and_shape(deu_rows: dict[str, float]) -> None:
    assert bundled_regions() == ("DEU", "FRA", "GBR")
    trace = bundled_trace("deu")
    assert trace.region == "DEU" and trace.kind == BUNDLED_KIND == "average"
    assert trace.source == "bundled: DEU_2020.csv"
    assert trace.times.size == len(deu_rows) == 9288
    assert trace.start == epoch("2019-12-20T00:00")
    assert trace.step_s == HOUR
    assert trace.end == epoch("2021-01-09T23:00") + HOUR
    assert bundled_trace("DEU") is trace  # read once per process


def test_fra_trace_ends_one_hour_earlier() -> None:
    rows = read_csv(BUNDLED / "FRA_2020.csv")
    assert len(rows) == 9287
    assert bundled_trace("FRA").end == epoch("2021-01-09T22:00") + HOUR


def test_unknown_bundled_region_names_what_exists() -> None:
    with pytest.raises(TraceError, match=r"'POL'.*bundled: DEU, FRA, GBR"):
        bundled_trace("POL")


def test_values_at_given_timestamps(deu_rows: dict[str, float]) -> None:
    trace = bundled_trace("DEU")
    for stamp in ("2020-01-01T00:00", "2020-06-15T11:00", "2020-12-31T23:00"):
        assert trace.at(epoch(stamp)) == deu_rows[stamp]
        # the value holds until the next row: 59 minutes later it is still the same
        assert trace.at(epoch(stamp) + 59 * 60) == deu_rows[stamp]


def test_mean_across_hour_boundaries_is_the_weighted_sum(deu_rows: dict[str, float]) -> None:
    trace = bundled_trace("DEU")
    a, b = epoch("2020-06-15T10:30"), epoch("2020-06-15T12:15")
    v10, v11, v12 = (deu_rows[f"2020-06-15T{h}:00"] for h in ("10", "11", "12"))
    by_hand = (0.5 * v10 + 1.0 * v11 + 0.25 * v12) / 1.75
    assert trace.mean(a, b) == pytest.approx(by_hand, rel=1e-12)
    # 2 kWh spread evenly over the 1.75 h: 0.5/1.75 of it in the 10:00 hour, and so on
    kwh = 2.0
    by_hand_kg = sum(
        kwh * share / 1.75 * value / 1000 for share, value in ((0.5, v10), (1.0, v11), (0.25, v12))
    )
    assert trace.kg(kwh, a, b) == pytest.approx(by_hand_kg, rel=1e-12)


def test_mean_inside_one_hour_is_that_hours_value(deu_rows: dict[str, float]) -> None:
    trace = bundled_trace("DEU")
    a = epoch("2020-03-01T04:00")
    assert trace.mean(a + 60, a + 1800) == deu_rows["2020-03-01T04:00"]
    assert trace.mean(a + 600, a + 600) == deu_rows["2020-03-01T04:00"]  # a == b: the value


def test_mean_over_the_whole_trace_is_the_row_average(deu_rows: dict[str, float]) -> None:
    trace = bundled_trace("DEU")
    by_hand = math.fsum(deu_rows.values()) / len(deu_rows)  # hourly rows: equal weights
    assert trace.mean(trace.start, trace.end) == pytest.approx(by_hand, rel=1e-9)


def test_mean_over_a_day_of_gbr_rows() -> None:
    rows = read_csv(BUNDLED / "GBR_2020.csv")
    day = [rows[f"2020-07-04T{h:02d}:00"] for h in range(24)]
    trace = bundled_trace("GBR")
    got = trace.mean(epoch("2020-07-04T00:00"), epoch("2020-07-05T00:00"))
    assert got == pytest.approx(sum(day) / 24, rel=1e-12)


def test_irregular_trace_holds_each_row_until_the_next() -> None:
    trace = IntensityTrace.from_csv(DATA / "trace_irregular.csv", "xyz")
    assert trace.region == "XYZ"
    assert trace.step_s == 1800  # median of 30, 30, 30, 90, 30 minutes
    assert trace.end == epoch("2020-06-15T04:00")  # last row (03:30) holds one step
    # 01:15-03:15: 15 min of 0, 90 min of 80, 15 min of 90
    a, b = epoch("2020-06-15T01:15"), epoch("2020-06-15T03:15")
    assert trace.mean(a, b) == pytest.approx((15 * 0 + 90 * 80 + 15 * 90) / 120, rel=1e-12)
    assert trace.at(epoch("2020-06-15T02:59")) == 80


def test_mean_up_to_the_end_and_not_beyond() -> None:
    trace = IntensityTrace.from_csv(DATA / "trace_small.csv", "TST")
    assert trace.end == epoch("2020-06-15T14:00")
    assert trace.mean(epoch("2020-06-15T12:30"), trace.end) == pytest.approx(
        (30 * 100 + 60 * 400) / 90
    )
    assert trace.covers(trace.start, trace.end)
    assert not trace.covers(trace.start, trace.end + 1)
    assert not trace.covers(trace.end, trace.end)  # no value holds *at* the end
    with pytest.raises(TraceError, match="asked for"):
        trace.at(trace.end)


def test_coverage_error_names_region_and_both_periods() -> None:
    trace = bundled_trace("GBR")
    with pytest.raises(TraceError) as err:
        trace.mean(epoch("2021-01-09T12:00"), epoch("2021-01-12T00:00"))
    message = str(err.value)
    assert "\n" not in message
    assert "GBR" in message
    assert "[2021-01-09T12:00:00Z, 2021-01-12T00:00:00Z)" in message
    assert "[2019-12-20T00:00:00Z, 2021-01-10T00:00:00Z)" in message
    with pytest.raises(TraceError, match="before"):
        trace.mean(epoch("2020-01-02T00:00"), epoch("2020-01-01T00:00"))


def test_window_keeps_the_rows_and_their_means() -> None:
    trace = IntensityTrace.from_csv(DATA / "trace_small.csv", "TST")
    a, b = epoch("2020-06-15T10:30"), epoch("2020-06-15T12:15")
    part = trace.window(a, b)
    assert list(part.values) == [300, 200, 100]
    assert part.start == epoch("2020-06-15T10:00")
    assert part.end == epoch("2020-06-15T13:00")
    assert part.mean(a, b) == pytest.approx((30 * 300 + 60 * 200 + 15 * 100) / 105)
    one = trace.window(epoch("2020-06-15T11:10"), epoch("2020-06-15T11:20"))
    assert list(one.values) == [200] and one.end - one.start == HOUR == one.step_s


# --- validation -----------------------------------------------------------------------------

HEAD = "timestamp_utc,gco2_per_kwh\n"
BAD_FILES = [
    ("", None, "empty file"),
    ("time,value\n2020-01-01T00:00:00Z,1\n", None, "header is 'time,value'"),
    (HEAD, None, "no data rows"),
    (HEAD + "2020-01-01T00:00:00Z,1\n", None, "at least 2 rows"),
    (HEAD + "2020-01-01T01:00:00Z,1\n2020-01-01T00:00:00Z,2\n", 2, "before the previous"),
    (HEAD + "2020-01-01T00:00:00Z,1\n2020-01-01T00:00:00Z,2\n", 2, "repeats"),
    (HEAD + "2020-01-01T00:00:00Z,1\nyesterday,2\n", 2, "not an ISO 8601"),
    (HEAD + "2020-01-01T00:00:00Z,1\n2020-01-01T02:00:00+01:00,2\n", 2, "not UTC"),
    (HEAD + "2020-01-01T00:00:00Z,1\n2020-01-01T01:00:00,2\n", 2, "no time zone"),
    (HEAD + "2020-01-01T00:00:00Z,1\n2020-01-01T01:00:00Z,-0.5\n", 2, "negative"),
    (HEAD + "2020-01-01T00:00:00Z,nan\n2020-01-01T01:00:00Z,1\n", 1, "not finite"),
    (HEAD + "2020-01-01T00:00:00Z,inf\n2020-01-01T01:00:00Z,1\n", 1, "not finite"),
    (HEAD + "2020-01-01T00:00:00Z,1\n2020-01-01T01:00:00Z,\n", 2, "missing"),
    (HEAD + "2020-01-01T00:00:00Z,1\n2020-01-01T01:00:00Z,high\n", 2, "not a number"),
    (HEAD + "2020-01-01T00:00:00Z,1\n2020-01-01T01:00:00Z,1,2\n", 2, "expected 2 fields"),
    (HEAD + "2020-01-01T00:00:00Z,1\n2020-01-01T01:00:00Z,2\n2020-01-01T01:30:00Z,x\n", 3, "x"),
]


@pytest.mark.parametrize(("text", "row", "fragment"), BAD_FILES)
def test_bad_files_name_the_file_and_row(
    tmp_path: Path, text: str, row: int | None, fragment: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TraceError) as err:
        IntensityTrace.from_csv(path, "DEU")
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "\n" not in message and str(path) in message and fragment in message
    if row is not None:
        assert f"{path} row {row}:" in message


def test_missing_file_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read"):
        IntensityTrace.from_csv(tmp_path / "absent.csv", "DEU")


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text(HEAD + "2020-01-01T00:00:00Z,1\n2020-01-01T01:00:00Z,3\n", "utf-8-sig")
    trace = IntensityTrace.from_csv(path, "DEU")
    assert trace.mean(trace.start, trace.end) == 2


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(TraceError, match="kind 'hourly'"):
        IntensityTrace.from_csv(DATA / "trace_small.csv", "TST", kind="hourly")


# --- load_traces ----------------------------------------------------------------------------


def test_load_traces_mixes_files_and_bundled() -> None:
    traces = load_traces({"tst": str(DATA / "trace_small.csv")}, ["DEU", "TST", "deu"], "average")
    assert list(traces) == ["DEU", "TST"]
    assert traces["DEU"] is bundled_trace("DEU")
    assert traces["TST"].source == str(DATA / "trace_small.csv")
    assert traces["TST"].at(epoch("2020-06-15T11:30")) == 200
    assert load_traces(None, ["GBR"], "average")["GBR"] is bundled_trace("GBR")


def test_load_traces_errors_name_the_key() -> None:
    with pytest.raises(TraceError) as err:
        load_traces(None, ["POL"], "average")
    assert str(err.value) == (
        "carbon.traces: no trace for region POL (bundled: DEU, FRA, GBR; "
        "give +carbon.traces.POL=path)"
    )
    with pytest.raises(TraceError, match=r"carbon.traces.DE: no client or server is in region"):
        load_traces({"DE": str(DATA / "trace_small.csv")}, ["DEU"], "average")
    with pytest.raises(TraceError, match=r"carbon\.intensity_kind=marginal.*bundled"):
        load_traces(None, ["DEU"], "marginal")
    with pytest.raises(TraceError, match=r"carbon\.intensity_kind: 'hourly'"):
        load_traces(None, ["DEU"], "hourly")


def test_load_traces_reads_a_marginal_file() -> None:
    traces = load_traces({"DEU": str(DATA / "trace_small.csv")}, ["DEU"], "marginal")
    assert traces["DEU"].kind == "marginal"
