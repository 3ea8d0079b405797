"""Where the clients' electricity comes from: regions, their carbon intensity, hourly profiles.

Intensities are read from the file CodeCarbon itself reads when an OfflineEmissionsTracker is
given ``country_iso_code``, so the host's emissions (computed by CodeCarbon) and the clients'
(computed by fedlab) use the same numbers. Units: gCO2e/kWh; ``kg = kWh * g_per_kWh / 1000``.
An unknown code is an error, never CodeCarbon's silent world-average fallback.
"""

from __future__ import annotations

import csv
import difflib
import functools
import json
import math
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from fedlab.trackers.assign import assign

#: The per-country energy mix CodeCarbon ships (213 ISO-3 codes, field ``carbon_intensity``).
_ENERGY_MIX_RESOURCE = ("codecarbon", "data/private_infra/global_energy_mix.json")


@functools.lru_cache(maxsize=1)
def _energy_mix() -> dict[str, dict[str, Any]]:
    """Load CodeCarbon's bundled per-country energy mix once per process."""
    package, relpath = _ENERGY_MIX_RESOURCE
    with files(package).joinpath(relpath).open("r", encoding="utf-8") as fh:
        data: dict[str, dict[str, Any]] = json.load(fh)
    return data


def valid_country_codes() -> tuple[str, ...]:
    """All ISO 3166-1 alpha-3 codes that have an intensity in CodeCarbon's data, sorted."""
    return tuple(sorted(_energy_mix()))


def _unknown_code_error(code: object, what: str = "country code") -> ValueError:
    """Build the one-line error for a code CodeCarbon has no data for.

    CodeCarbon itself would silently fall back to the world average (475 g/kWh) for an
    unknown code; for a study that compares regions that is a wrong number, not a
    default, so fedlab refuses instead and points at the likely intended code.
    """
    codes = valid_country_codes()
    text = str(code).strip()
    suggestions = difflib.get_close_matches(text.upper(), codes, n=4, cutoff=0.5)
    by_name = {str(v.get("country_name", "")).lower(): k for k, v in _energy_mix().items()}
    if text.lower() in by_name:
        suggestions = [by_name[text.lower()], *suggestions]
    hint = f"close matches: {', '.join(dict.fromkeys(suggestions))}; " if suggestions else ""
    return ValueError(
        f"unknown {what} {text!r}: not in CodeCarbon's global_energy_mix.json "
        f"({len(codes)} ISO-3 codes); {hint}e.g. FRA, DEU, POL, NOR, IND, USA"
    )


def normalise_code(iso3: Any) -> str:
    """Upper-case an ISO-3 code and check it exists; raise the one-line error if not."""
    if not isinstance(iso3, str):
        raise _unknown_code_error(iso3)
    code = iso3.strip().upper()
    if code not in _energy_mix():
        raise _unknown_code_error(iso3)
    return code


def carbon_intensity(iso3: str) -> float:
    """Annual-average intensity of a country's electricity in gCO2e/kWh (CodeCarbon's data).

    ``iso3`` is case-insensitive. An unknown code raises ``ValueError`` instead of the
    world-average fallback CodeCarbon would use.
    """
    return float(_energy_mix()[normalise_code(iso3)]["carbon_intensity"])


def intensity_data_year(iso3: str) -> int | None:
    """Year of the energy-mix data behind :func:`carbon_intensity` (for reports)."""
    year = _energy_mix()[normalise_code(iso3)].get("year")
    return int(year) if year is not None else None


def kg_from_kwh(kwh: float, g_per_kwh: float) -> float:
    """Emissions in kg CO2e of ``kwh`` drawn at ``g_per_kwh``."""
    return kwh * g_per_kwh / 1000.0


def assign_regions(num_clients: int, regions: Mapping[Any, Any] | str, seed: int) -> list[str]:
    """Each client's ISO-3 region from ``carbon.regions`` (:func:`fedlab.trackers.assign.assign`:
    one code, ``{client_id: code, "default": code}`` or a weighted mix ``{code: weight}``)."""
    return assign(num_clients, regions, normalise_code, seed, "carbon.regions", share_first=True)


class IntensityProfile:
    """Hourly intensity per region (24 values, gCO2e/kWh) for time-aware emissions.

    Annual averages hide that a region's electricity can be several times dirtier at the
    evening peak than at midday. A profile lets communication (and the "as if in the client's
    region" compute figure) be charged at the hour a round happened. Simulated time
    ``sim_time_s`` counts from the start of the run, which is taken to be at
    ``start_hour`` (local hour of day, 0-24) and wraps every 24 h. Regions without a
    profile use the constant annual value from :func:`carbon_intensity`; unknown codes
    are an error, as everywhere in this module.
    """

    def __init__(self, hourly: Mapping[str, Sequence[float]], start_hour: float = 0.0):
        if not 0.0 <= float(start_hour) < 24.0:
            raise ValueError(f"start_hour must be in [0, 24), got {start_hour}")
        self.start_hour = float(start_hour)
        self._hourly: dict[str, tuple[float, ...]] = {}
        for region, values in hourly.items():
            code = normalise_code(region)
            vals = tuple(float(v) for v in values)
            if len(vals) != 24:
                raise ValueError(f"profile for {code} needs 24 hourly values, got {len(vals)}")
            if any(not math.isfinite(v) or v < 0 for v in vals):
                raise ValueError(f"profile for {code} has a negative or non-finite value")
            self._hourly[code] = vals

    @classmethod
    def from_csv(cls, path: str | Path, start_hour: float = 0.0) -> IntensityProfile:
        """Read a wide CSV: header ``hour,FRA,DEU,...`` and one row per hour 0..23."""
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or reader.fieldnames[0].strip().lower() != "hour":
                raise ValueError(f"{path}: first column must be 'hour' (0..23)")
            hour_col, *regions = reader.fieldnames
            table: dict[str, list[float | None]] = {r: [None] * 24 for r in regions}
            for row in reader:
                hour = int(float(row[hour_col]))
                if not 0 <= hour < 24:
                    raise ValueError(f"{path}: hour {hour} outside 0..23")
                for region in regions:
                    if table[region][hour] is not None:
                        raise ValueError(f"{path}: hour {hour} appears twice")
                    table[region][hour] = float(row[region])
        hourly: dict[str, list[float]] = {}
        for region, values in table.items():
            missing = [h for h, v in enumerate(values) if v is None]
            if missing:
                raise ValueError(f"{path}: {region} has no value for hours {missing}")
            hourly[region] = [v for v in values if v is not None]
        return cls(hourly, start_hour=start_hour)

    @property
    def regions(self) -> tuple[str, ...]:
        """Regions that have an hourly profile."""
        return tuple(self._hourly)

    def hour_of(self, sim_time_s: float) -> int:
        """Hour of day (0..23) at ``sim_time_s`` seconds after the run start."""
        return math.floor(self.start_hour + sim_time_s / 3600.0) % 24

    def at(self, region: str, sim_time_s: float) -> float:
        """Intensity in gCO2e/kWh of ``region`` at ``sim_time_s`` seconds into the run."""
        code = normalise_code(region)
        values = self._hourly.get(code)
        if values is None:
            return carbon_intensity(code)
        return values[self.hour_of(sim_time_s)]
