"""Traces from outside fedlab: Electricity Maps exports and ENTSO-E generation data.

Both write the trace CSV format of :mod:`~fedlab.trackers.carbon.traces` (header
``timestamp_utc,gco2_per_kwh``) and write it atomically (a temporary file in the same
folder, then ``os.replace``): a run killed half-way, or two sweep jobs filling the same
cache, can never leave a truncated file that a later run would read as a shorter trace.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fedlab.trackers.carbon.traces import HEADER, TraceError, format_utc, parse_utc

#: Median (50th percentile) life-cycle emissions, g CO2eq/kWh, of IPCC SRREN (2011) Annex II
#: "Methodology" (Moomaw et al.), Table A.II.4: the values Wiesner et al. used for the bundled
#: traces (github.com/dos-group/lets-wait-awhile, compute_carbon_intensity.py).
IPCC_SRREN_MEDIANS: dict[str, float] = {
    "biopower": 18,
    "solar_pv": 46,
    "geothermal": 45,
    "hydro": 4,
    "ocean": 8,
    "wind": 12,
    "nuclear": 16,
    "gas": 469,
    "oil": 840,
    "coal": 1001,
}
#: Wiesner et al.'s "Other" (the mean of gas, oil and coal) and "Other renewable".
FOSSIL_AVERAGE = 770.0
RENEWABLE_AVERAGE = 22.0

#: g CO2eq/kWh per ENTSO-E production type (entsoe-py's column names). Types the SRREN
#: table has no row for (coal-derived gas, oil shale, peat, waste) take the fossil average,
#: as Wiesner et al. did for "Other"; their own script left waste out of the numerator.
ENTSOE_FACTORS: dict[str, float] = {
    "Biomass": IPCC_SRREN_MEDIANS["biopower"],
    "Fossil Brown coal/Lignite": IPCC_SRREN_MEDIANS["coal"],
    "Fossil Hard coal": IPCC_SRREN_MEDIANS["coal"],
    "Fossil Gas": IPCC_SRREN_MEDIANS["gas"],
    "Fossil Oil": IPCC_SRREN_MEDIANS["oil"],
    "Geothermal": IPCC_SRREN_MEDIANS["geothermal"],
    "Hydro Run-of-river and pondage": IPCC_SRREN_MEDIANS["hydro"],
    "Hydro Run-of-river and poundage": IPCC_SRREN_MEDIANS["hydro"],  # older entsoe-py spelling
    "Hydro Water Reservoir": IPCC_SRREN_MEDIANS["hydro"],
    "Marine": IPCC_SRREN_MEDIANS["ocean"],
    "Nuclear": IPCC_SRREN_MEDIANS["nuclear"],
    "Solar": IPCC_SRREN_MEDIANS["solar_pv"],
    "Wind Offshore": IPCC_SRREN_MEDIANS["wind"],
    "Wind Onshore": IPCC_SRREN_MEDIANS["wind"],
    "Other renewable": RENEWABLE_AVERAGE,
    "Other": FOSSIL_AVERAGE,
    "Fossil Coal-derived gas": FOSSIL_AVERAGE,
    "Fossil Oil shale": FOSSIL_AVERAGE,
    "Fossil Peat": FOSSIL_AVERAGE,
    "Waste": FOSSIL_AVERAGE,
}
#: Storage re-delivers energy generated elsewhere: counting it would count that energy twice.
ENTSOE_STORAGE = ("Hydro Pumped Storage", "Energy storage")

#: ISO-3 -> ENTSO-E area (entsoe-py code) for countries that are one bidding zone.
#: Germany is the DE-LU bidding zone (from October 2018; Luxembourg adds well under 1 %);
#: ENTSO-E stopped publishing Great Britain's data after Brexit (mid 2021).
ENTSOE_AREAS: dict[str, str] = {
    "AUT": "AT", "BEL": "BE", "BGR": "BG", "CHE": "CH", "CZE": "CZ", "DEU": "DE_LU",
    "ESP": "ES", "EST": "EE", "FIN": "FI", "FRA": "FR", "GBR": "GB", "GRC": "GR",
    "HRV": "HR", "HUN": "HU", "LTU": "LT", "LVA": "LV", "NLD": "NL", "POL": "PL",
    "PRT": "PT", "ROU": "RO", "SRB": "RS", "SVK": "SK", "SVN": "SI",
}  # fmt: skip

_EM_TIME = ("datetime (utc)",)
_EM_COLUMNS = {
    "direct": ("carbon intensity gco2eq/kwh (direct)",),
    "lca": ("carbon intensity gco2eq/kwh (lca)", "carbon intensity gco2eq/kwh (life cycle)"),
}


def _normalise(name: str) -> str:
    """A header as compared: lower case, one space, CO₂ as CO2 (exports differ in all three)."""
    return " ".join(name.replace("₂", "2").lower().split())


def _write_atomically(dst: Path, rows: Iterable[tuple[str, str]]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(HEADER)
            writer.writerows(rows)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from the group
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _column(names: list[str], wanted: tuple[str, ...], src: Path, label: str) -> int:
    for name in wanted:
        if name in names:
            return names.index(name)
    raise TraceError(f"{src}: no column {label!r} (is this an Electricity Maps hourly export?)")


def _export_time(text: str, where: str) -> float:
    """An export's ``Datetime (UTC)``: ``2022-01-01 00:00:00`` (UTC by the header) or ISO."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TraceError(f"{where}: Datetime (UTC) {text!r} is not a date and time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.utcoffset() != timedelta(0):
        raise TraceError(f"{where}: Datetime (UTC) {text!r} is not UTC")
    return moment.timestamp()


def from_electricity_maps(src: str | Path, dst: str | Path, column: str = "lca") -> Path:
    """Convert an Electricity Maps hourly CSV export of one zone into a trace CSV at ``dst``.

    Electricity Maps' numbers are *average*, consumption-based (flow-traced across borders)
    intensities, so load the result with ``kind="average"``. ``column="lca"`` takes the
    life-cycle column ("Carbon Intensity gCO₂eq/kWh (LCA)", called "(Life cycle)" in newer
    exports), comparable with the bundled traces, which are life-cycle too; ``"direct"``
    takes combustion emissions only. Every problem is a one-line ``TraceError`` naming
    ``src`` and the data row; nothing is written then.
    """
    src, dst = Path(src), Path(dst)
    if column not in _EM_COLUMNS:
        raise TraceError(f"from_electricity_maps: column {column!r} is not 'lca' or 'direct'")
    try:
        handle = src.open("r", encoding="utf-8-sig", newline="")
    except OSError as err:
        raise TraceError(f"{src}: cannot read the export ({err.strerror or err})") from None
    rows: list[tuple[str, str]] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise TraceError(f"{src}: empty file (expected an Electricity Maps export)")
        names = [_normalise(name) for name in header]
        time_col = _column(names, _EM_TIME, src, "Datetime (UTC)")
        value_col = _column(names, _EM_COLUMNS[column], src, f"Carbon Intensity ({column})")
        zone_col = names.index("zone id") if "zone id" in names else None
        zone: str | None = None
        previous: float | None = None
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            where = f"{src} row {reader.line_num - 1}"
            if len(cells) != len(header):
                raise TraceError(f"{where}: {len(cells)} fields, the header has {len(header)}")
            t = _export_time(cells[time_col].strip(), where)
            if zone_col is not None:
                zone = zone or cells[zone_col].strip()
                if cells[zone_col].strip() != zone:
                    raise TraceError(
                        f"{where}: zone {cells[zone_col].strip()!r} differs from the first "
                        f"row's {zone!r} (convert one zone per file)"
                    )
            if previous is not None and t <= previous:
                raise TraceError(
                    f"{where}: {cells[time_col].strip()} is not after the previous row's "
                    f"{format_utc(previous)}"
                )
            previous = t
            text = cells[value_col].strip()
            try:
                value = float(text)
            except ValueError:
                raise TraceError(
                    f"{where}: intensity {text!r} is missing or not a number"
                ) from None
            if not math.isfinite(value) or value < 0:
                raise TraceError(f"{where}: intensity {text} is not a finite number >= 0")
            rows.append((format_utc(t), text))
    if not rows:
        raise TraceError(f"{src}: no data rows after the header")
    _write_atomically(dst, rows)
    return dst


def _bound(text: str, what: str) -> float:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO 8601 UTC timestamp -> epoch seconds."""
    stamp = text.strip()
    if len(stamp) == 10:
        stamp += "T00:00:00Z"
    try:
        return parse_utc(stamp)
    except ValueError as err:
        raise TraceError(f"fetch_entsoe: {what} {err}") from None


def _stamp(t: float) -> str:
    """A file-name-safe UTC stamp: ``2020-06-15`` at midnight, else ``2020-06-15T1030Z``."""
    moment = datetime.fromtimestamp(t, tz=UTC)
    return moment.strftime("%Y-%m-%d" if moment.time() == datetime.min.time() else "%Y-%m-%dT%H%MZ")


def _hourly_intensity(frame: Any, t0: float, t1: float, region: str) -> list[tuple[str, str]]:
    """Hourly life-cycle intensity from entsoe-py's generation-per-type frame.

    Generation is averaged to hourly MW per type first and the intensity computed from those
    means, so types reported at different resolutions (15 min and 60 min in one country) are
    weighted by the energy they delivered in the hour. Consumption columns (storage charging)
    and storage are left out; an hour without any generation data is left out (the previous
    hour's value then holds across it, as a trace's step function does).
    """
    import pandas as pd

    if isinstance(frame, pd.Series):  # entsoe-py squeezes a single production type
        frame = frame.to_frame()
    if isinstance(frame.columns, pd.MultiIndex):  # (type, "Actual Aggregated"/"... Consumption")
        keep = [name for name in frame.columns if name[-1] == "Actual Aggregated"]
        frame = frame[keep].set_axis([name[0] for name in keep], axis=1)
    frame = frame.drop(columns=[name for name in frame.columns if name in ENTSOE_STORAGE])
    unknown = sorted(str(name) for name in frame.columns if name not in ENTSOE_FACTORS)
    if unknown:
        raise TraceError(
            f"fetch_entsoe {region}: no emission factor for production type {unknown[0]!r} "
            f"(known: {', '.join(sorted(ENTSOE_FACTORS))})"
        )
    index = pd.DatetimeIndex(frame.index)
    index = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    frame = frame.set_axis(index, axis=0).astype(float)
    lo, hi = pd.Timestamp(t0, unit="s", tz="UTC"), pd.Timestamp(t1, unit="s", tz="UTC")
    frame = frame[(frame.index >= lo) & (frame.index < hi)]
    hourly = frame.clip(lower=0).resample("1h").mean()
    factors = pd.Series({name: ENTSOE_FACTORS[name] for name in hourly.columns}, dtype=float)
    total = hourly.sum(axis=1, min_count=1)
    carbon = hourly.mul(factors, axis=1).sum(axis=1, min_count=1)
    intensity = (carbon / total)[total > 0]
    if intensity.empty:
        raise TraceError(
            f"fetch_entsoe {region}: ENTSO-E returned no generation in "
            f"[{format_utc(t0)}, {format_utc(t1)})"
        )
    return [(format_utc(ts.timestamp()), f"{value:.2f}") for ts, value in intensity.items()]


def fetch_entsoe(
    region: str, start: str, end: str, token: str, cache_dir: str | Path, client: Any = None
) -> Path:
    """Hourly intensity of ``region`` over ``[start, end)`` from ENTSO-E, as a cached trace.

    The trace is computed like the bundled ones: ENTSO-E's actual generation per production
    type (entsoe-py's ``EntsoePandasClient.query_generation``) weighted with the IPCC SRREN
    median life-cycle factors (:data:`ENTSOE_FACTORS`), i.e. an *average*, production-based
    intensity (imports are not counted). ``start``/``end`` are ``YYYY-MM-DD`` (midnight UTC)
    or ISO 8601 UTC timestamps; ``token`` is an ENTSO-E Transparency Platform API key.

    The result is ``cache_dir/<REGION>_<start>_<end>.csv``; when that file exists it is
    returned without contacting ENTSO-E (or importing entsoe-py), so a sweep fetches once.
    ``client`` replaces the ``EntsoePandasClient(api_key=token)`` made otherwise (tests, or a
    client with its own session or retry settings).
    """
    code = str(region).strip().upper()
    area = ENTSOE_AREAS.get(code)
    if area is None:
        raise TraceError(
            f"fetch_entsoe: no ENTSO-E area known for region {region!r} "
            f"(known: {', '.join(sorted(ENTSOE_AREAS))})"
        )
    t0, t1 = _bound(start, "start"), _bound(end, "end")
    if t1 <= t0:
        raise TraceError(f"fetch_entsoe: end {end!r} is not after start {start!r}")
    path = Path(cache_dir) / f"{code}_{_stamp(t0)}_{_stamp(t1)}.csv"
    if path.exists():
        return path
    try:
        import pandas as pd

        if client is None:
            from entsoe import EntsoePandasClient

            client = EntsoePandasClient(api_key=token)
    except ImportError:
        raise TraceError(
            "fetch_entsoe: ENTSO-E data needs the package entsoe-py (pip install entsoe-py)"
        ) from None
    frame = client.query_generation(
        area,
        start=pd.Timestamp(t0, unit="s", tz="UTC"),
        end=pd.Timestamp(t1, unit="s", tz="UTC"),
        psr_type=None,
    )
    _write_atomically(path, _hourly_intensity(frame, t0, t1, code))
    return path
