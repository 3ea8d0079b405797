"""Tests for fedlab.trackers.carbon.sources: converters and the ENTSO-E fetch, no network.

The ENTSO-E test replays an A75 document (actual generation per type, DE-LU, 15-minute
and hourly series, pumped storage both generating and pumping; built by hand in ENTSO-E's
schema, tests/data/carbon/README.md) through entsoe-py's own client and parser with its
HTTP session replaced; the expected hourly intensities are computed here from the XML read
with ElementTree and the IPCC SRREN medians typed in by hand. The Electricity Maps sample is
hand-made in the export's format.
"""

from __future__ import annotations

import csv
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fedlab.trackers.carbon.sources import fetch_entsoe, from_electricity_maps
from fedlab.trackers.carbon.traces import HEADER, IntensityTrace, TraceError

DATA = Path(__file__).parent / "data" / "carbon"
ENTSOE_XML = DATA / "entsoe_A75_DE_LU_2020-06-15.xml"
EM_SAMPLE = DATA / "electricitymaps_DE_2022_hourly_sample.csv"

#: IPCC SRREN Annex II medians (g/kWh) by ENTSO-E psrType code, typed in from the report.
SRREN_BY_PSR = {"B02": 1001, "B04": 469, "B14": 16, "B16": 46, "B19": 12}


def read_trace_csv(path: Path) -> list[tuple[str, float]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        assert tuple(next(reader)) == HEADER
        return [(stamp, float(value)) for stamp, value in reader]


# --- Electricity Maps -------------------------------------------------------------------------


def test_electricity_maps_lca_and_direct_columns(tmp_path: Path) -> None:
    with EM_SAMPLE.open(newline="", encoding="utf-8") as handle:
        export = list(csv.DictReader(handle))
    for column, name in (
        ("lca", "Carbon Intensity gCO₂eq/kWh (LCA)"),
        ("direct", "Carbon Intensity gCO₂eq/kWh (direct)"),
    ):
        out = from_electricity_maps(EM_SAMPLE, tmp_path / f"DEU_{column}.csv", column=column)
        expect = [
            (row["Datetime (UTC)"].replace(" ", "T") + "Z", float(row[name])) for row in export
        ]
        assert read_trace_csv(out) == expect
    trace = IntensityTrace.from_csv(tmp_path / "DEU_lca.csv", "DEU")
    assert trace.step_s == 3600 and trace.at(trace.start) == 322.71


def test_electricity_maps_newer_header(tmp_path: Path) -> None:
    src = tmp_path / "FR_2024_hourly.csv"
    src.write_text(
        "Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
        "Carbon intensity gCO₂eq/kWh (Life cycle),Carbon-free energy percentage (CFE%),"
        "Renewable energy percentage (RE%),Data source,Data estimated,Data estimation method\n"
        "2024-01-01 00:00:00,France,France,FR,21.5,39.86,96.1,31.2,rte,false,\n"
        "2024-01-01 01:00:00,France,France,FR,20.9,38.75,96.3,30.8,rte,false,\n",
        encoding="utf-8",
    )
    out = from_electricity_maps(src, tmp_path / "out" / "FRA.csv")
    assert read_trace_csv(out) == [("2024-01-01T00:00:00Z", 39.86), ("2024-01-01T01:00:00Z", 38.75)]


@pytest.mark.parametrize(
    ("change", "row", "fragment"),
    [
        (lambda rows: rows[3].__setitem__(5, ""), 3, "missing or not a number"),
        (lambda rows: rows[2].__setitem__(3, "DE-LU"), 2, "differs from the first row's 'DE'"),
        (lambda rows: rows[4].__setitem__(0, rows[3][0]), 4, "is not after the previous"),
        (lambda rows: rows[1].__setitem__(0, "01/01/2022 01:00"), 1, "not a date and time"),
        (lambda rows: rows[5].__setitem__(5, "-3"), 5, "finite number >= 0"),
    ],
)
def test_electricity_maps_bad_rows_name_file_and_row(
    tmp_path: Path, change: Any, row: int, fragment: str
) -> None:
    with EM_SAMPLE.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    change(rows)
    src = tmp_path / "export.csv"
    with src.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    dst = tmp_path / "out.csv"
    with pytest.raises(TraceError) as err:
        from_electricity_maps(src, dst)
    assert f"{src} row {row}:" in str(err.value) and fragment in str(err.value)
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]  # nothing half-written


def test_electricity_maps_wrong_file_or_column(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"no column 'Datetime \(UTC\)'"):
        from_electricity_maps(DATA / "trace_small.csv", tmp_path / "x.csv")
    with pytest.raises(TraceError, match="is not 'lca' or 'direct'"):
        from_electricity_maps(EM_SAMPLE, tmp_path / "x.csv", column="marginal")


def test_conversion_replaces_an_existing_file_whole(tmp_path: Path) -> None:
    dst = tmp_path / "DEU.csv"
    dst.write_text("stale\n", encoding="utf-8")
    from_electricity_maps(EM_SAMPLE, dst)
    assert len(read_trace_csv(dst)) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["DEU.csv"]  # no temporary file left


# --- ENTSO-E -------------------------------------------------------------------------------


def hourly_by_hand(xml: Path, start: datetime, end: datetime) -> list[tuple[str, float]]:
    """Hourly intensity from the XML: mean MW per type and hour, weighted by the factors."""
    ns = {"g": "urn:iec62325.351:tc57wg16:451-6:generationloaddocument:3:0"}
    resolution = {"PT15M": timedelta(minutes=15), "PT60M": timedelta(hours=1)}
    samples: dict[tuple[str, datetime], list[float]] = defaultdict(list)
    for series in ET.parse(xml).getroot().findall("g:TimeSeries", ns):
        psr = series.find("g:MktPSRType/g:psrType", ns).text
        if psr not in SRREN_BY_PSR:  # pumped storage (B10) is left out, both directions
            continue
        period = series.find("g:Period", ns)
        first = datetime.fromisoformat(period.find("g:timeInterval/g:start", ns).text)
        step = resolution[period.find("g:resolution", ns).text]
        for point in period.findall("g:Point", ns):
            moment = first + (int(point.find("g:position", ns).text) - 1) * step
            if start <= moment < end:
                hour = moment.replace(minute=0)
                samples[(psr, hour)].append(float(point.find("g:quantity", ns).text))
    out = []
    hour = start
    while hour < end:
        mw = {psr: sum(v) / len(v) for (psr, h), v in samples.items() if h == hour}
        intensity = sum(mw[p] * SRREN_BY_PSR[p] for p in mw) / sum(mw.values())
        out.append((hour.strftime("%Y-%m-%dT%H:%M:%SZ"), intensity))
        hour += timedelta(hours=1)
    return out


class RecordedSession:
    """Stands in for the requests.Session inside entsoe-py: answers with the recorded XML."""

    def __init__(self, text: str) -> None:
        self.headers: dict[str, str] = {}  # entsoe-py sets its user agent here
        self.text = text
        self.calls: list[dict[str, Any]] = []

    def get(self, url: str, params: dict[str, Any], **_: Any) -> Any:
        self.calls.append(dict(params))
        text = self.text

        class Response:
            status_code = 200

            def __init__(self) -> None:
                self.headers = {"content-type": "text/xml"}
                self.text = text

            def raise_for_status(self) -> None:
                return None

        return Response()


# entsoe-py's own parser: bs4's html.parser on XML, and pandas 3's inplace deprecation
@pytest.mark.filterwarnings("ignore:It looks like you're using an HTML parser")
@pytest.mark.filterwarnings("ignore:The inplace keyword")
def test_entsoe_recorded_response_and_cache(tmp_path: Path, monkeypatch) -> None:
    entsoe = pytest.importorskip("entsoe", reason="entsoe-py is fedlab's optional ENTSO-E client")
    session = RecordedSession(ENTSOE_XML.read_text(encoding="utf-8"))
    real_client = entsoe.EntsoePandasClient
    monkeypatch.setattr(
        entsoe, "EntsoePandasClient", lambda api_key: real_client(api_key=api_key, session=session)
    )
    path = fetch_entsoe("deu", "2020-06-15", "2020-06-15T03:00:00Z", "my-token", tmp_path)
    assert path == tmp_path / "DEU_2020-06-15_2020-06-15T0300Z.csv"
    (call,) = session.calls
    assert call["securityToken"] == "my-token" and call["documentType"] == "A75"
    assert call["in_Domain"] == "10Y1001A1001A82H"  # DE-LU bidding zone
    assert (call["periodStart"], call["periodEnd"]) == ("202006150000", "202006150300")
    start = datetime(2020, 6, 15, tzinfo=UTC)
    expect = hourly_by_hand(ENTSOE_XML, start, start + timedelta(hours=3))
    got = read_trace_csv(path)
    assert [stamp for stamp, _ in got] == [stamp for stamp, _ in expect]  # 03:00 is left out
    for (_, value), (_, by_hand) in zip(got, expect, strict=True):
        assert value == pytest.approx(by_hand, abs=0.005)  # written to 0.01 g
    # a second fetch reuses the file: no client is made, entsoe-py is not even needed
    monkeypatch.setitem(sys.modules, "entsoe", None)
    again = fetch_entsoe("DEU", "2020-06-15", "2020-06-15T03:00:00Z", "my-token", tmp_path)
    assert again == path and len(session.calls) == 1
    assert IntensityTrace.from_csv(path, "DEU").step_s == 3600


def test_entsoe_injected_client_is_not_called_for_a_cached_file(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    index = pd.date_range("2020-06-15 00:00", periods=8, freq="30min", tz="Europe/Berlin")
    frame = pd.DataFrame(
        {
            ("Fossil Gas", "Actual Aggregated"): [100.0] * 8,
            ("Nuclear", "Actual Aggregated"): [300.0] * 4 + [100.0] * 4,
            ("Hydro Pumped Storage", "Actual Aggregated"): [50.0] * 8,
            ("Hydro Pumped Storage", "Actual Consumption"): [80.0] * 8,
        },
        index=index,
    )

    class Client:
        calls = 0

        def query_generation(self, area: str, *, start: Any, end: Any, psr_type: Any) -> Any:
            assert area == "DE_LU" and psr_type is None
            assert start == pd.Timestamp("2020-06-14 22:00", tz="UTC")
            Client.calls += 1
            return frame

    client = Client()
    path = fetch_entsoe(
        "DEU", "2020-06-14T22:00:00Z", "2020-06-15T02:00:00Z", "t", tmp_path, client
    )
    # Berlin 00:00 = 22:00 UTC; gas 100 MW at 469, nuclear 300 then 100 MW at 16; storage out
    assert read_trace_csv(path) == [
        ("2020-06-14T22:00:00Z", round((100 * 469 + 300 * 16) / 400, 2)),
        ("2020-06-14T23:00:00Z", round((100 * 469 + 300 * 16) / 400, 2)),
        ("2020-06-15T00:00:00Z", round((100 * 469 + 100 * 16) / 200, 2)),
        ("2020-06-15T01:00:00Z", round((100 * 469 + 100 * 16) / 200, 2)),
    ]
    assert (
        fetch_entsoe("DEU", "2020-06-14T22:00:00Z", "2020-06-15T02:00:00Z", "t", tmp_path, client)
        == path
    )
    assert Client.calls == 1


def test_entsoe_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "entsoe", None)  # as if entsoe-py were not installed
    with pytest.raises(TraceError, match=r"pip install entsoe-py"):
        fetch_entsoe("FRA", "2020-01-01", "2020-01-02", "token", tmp_path)
    with pytest.raises(TraceError, match=r"no ENTSO-E area known for region 'USA'"):
        fetch_entsoe("USA", "2020-01-01", "2020-01-02", "token", tmp_path)
    with pytest.raises(TraceError, match="is not after start"):
        fetch_entsoe("FRA", "2020-01-02", "2020-01-01", "token", tmp_path)
    with pytest.raises(TraceError, match="fetch_entsoe: start"):
        fetch_entsoe("FRA", "2020-01-01T00:00:00+01:00", "2020-01-02", "token", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_entsoe_unknown_production_type_is_refused(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    index = pd.date_range("2020-06-15", periods=2, freq="1h", tz="UTC")
    frame = pd.DataFrame({"Fossil Gas": [1.0, 1.0], "Fusion": [5.0, 5.0]}, index=index)

    class Client:
        def query_generation(self, area: str, **_: Any) -> Any:
            return frame

    with pytest.raises(TraceError, match="no emission factor for production type 'Fusion'"):
        fetch_entsoe("FRA", "2020-06-15", "2020-06-16", "t", tmp_path, client=Client())
    assert list(tmp_path.iterdir()) == []
