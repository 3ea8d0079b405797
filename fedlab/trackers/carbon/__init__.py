"""Carbon accounting for federated-learning simulations.

A fedlab simulation runs every client on one host, so the only energy that can be
*measured* is the host's. This module turns that one measurement into the numbers a
federated-learning study needs:

* per round, the host's energy and emissions as measured by CodeCarbon's
  ``OfflineEmissionsTracker`` (:class:`HostTracker`, one tracker per run, one CodeCarbon
  task per round);
* per client, the share of that energy caused by its own compute, from the CPU time each
  client process reports (:class:`CpuTimer`) and CodeCarbon's own power model
  (:class:`PowerModel`, :func:`attribute_round`); whatever the parts do not explain is
  reported as an idle/overhead residual, so parts + residual == measured total;
* per client, the energy of moving the model over the network, from the bytes sent and
  received and a per-link energy intensity in kWh/GB (:class:`NetworkModel`);
* emissions at the right grid: client compute at the *host's* intensity (that is where
  the electricity was drawn), communication at the *client's* region intensity
  (:func:`carbon_intensity`, optionally hourly via :class:`IntensityProfile`);
* a checkpointable :class:`CarbonLedger` of per-round / per-client rows and per-region
  totals.

Units: energy in kWh, emissions in kg CO2e, intensities in gCO2e/kWh, so
``kg = kWh * g_per_kWh / 1000``. GB means 10**9 bytes.

Every constant and modelling rule is documented in ``docs/carbon.md``. CodeCarbon is only
ever used offline: nothing here can make it send data or query a web service.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import functools
import json
import logging
import math
import random
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_LINK_KWH_PER_GB",
    "Attribution",
    "CarbonLedger",
    "CpuTimer",
    "EnergyReading",
    "HostTracker",
    "IntensityProfile",
    "NetworkModel",
    "PowerModel",
    "RoundMeasurement",
    "RunEnergy",
    "assign_regions",
    "attribute_round",
    "carbon_intensity",
    "intensity_data_year",
    "kg_from_kwh",
    "valid_country_codes",
]

_J_PER_KWH = 3.6e6
_BYTES_PER_GB = 1e9

# --------------------------------------------------------------------------------------
# Regions and grid carbon intensity
# --------------------------------------------------------------------------------------

#: Where the per-country intensities come from: the file CodeCarbon itself reads when an
#: OfflineEmissionsTracker is given ``country_iso_code``. Using the same file keeps the
#: host's emissions (computed by CodeCarbon) and the clients' (computed here) consistent.
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


def _normalise_code(iso3: str) -> str:
    """Upper-case an ISO-3 code and check it exists; raise the one-line error if not."""
    if not isinstance(iso3, str):
        raise _unknown_code_error(iso3)
    code = iso3.strip().upper()
    if code not in _energy_mix():
        raise _unknown_code_error(iso3)
    return code


def carbon_intensity(iso3: str) -> float:
    """Annual-average grid intensity of a country in gCO2e/kWh (CodeCarbon's data).

    ``iso3`` is case-insensitive. An unknown code raises ``ValueError`` instead of the
    world-average fallback CodeCarbon would use.
    """
    return float(_energy_mix()[_normalise_code(iso3)]["carbon_intensity"])


def intensity_data_year(iso3: str) -> int | None:
    """Year of the energy-mix data behind :func:`carbon_intensity` (for reports)."""
    year = _energy_mix()[_normalise_code(iso3)].get("year")
    return int(year) if year is not None else None


def kg_from_kwh(kwh: float, g_per_kwh: float) -> float:
    """Emissions in kg CO2e of ``kwh`` drawn at ``g_per_kwh``."""
    return kwh * g_per_kwh / 1000.0


def _client_id(key: object) -> int | None:
    """Interpret a mapping key as a client id (int, or a digit string from YAML/JSON)."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key.strip())
    return None


def assign_regions(num_clients: int, regions: Mapping[Any, Any] | str, seed: int) -> list[str]:
    """Give each client 0..num_clients-1 an ISO-3 region, reproducibly.

    ``regions`` is one of:

    * a single code, e.g. ``"FRA"``: every client there;
    * an explicit mapping ``{0: "FRA", 1: "DEU", ...}`` (keys may be digit strings, as
      YAML/JSON produce them), optionally with a ``"default"`` entry for the clients not
      listed; without ``"default"`` every client must be listed;
    * a weighted mix ``{"FRA": 0.3, "DEU": 0.7}`` (any non-negative weights). Counts are
      made exact with the largest-remainder method (ties go to the code listed first),
      then the list is shuffled with ``random.Random(seed)``, so a 5-country equal mix
      over 10 clients gives exactly 2 clients each, and the same seed gives the same
      assignment on every machine.
    """
    if num_clients < 0:
        raise ValueError(f"num_clients must be >= 0, got {num_clients}")
    if isinstance(regions, str):
        return [_normalise_code(regions)] * num_clients
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError("regions must be an ISO-3 code or a non-empty mapping")

    keys = list(regions)
    explicit = [k for k in keys if _client_id(k) is not None]
    if explicit or keys == ["default"]:
        other = [k for k in keys if _client_id(k) is None and k != "default"]
        if other:
            raise ValueError(
                "regions mixes client ids and other keys "
                f"{other[:5]}: use either {{client_id: 'ISO3', 'default': 'ISO3'}} "
                "or a weighted mix {'ISO3': weight}"
            )
        return _assign_explicit(num_clients, regions)
    return _assign_weighted(num_clients, regions, seed)


def _assign_explicit(num_clients: int, regions: Mapping[Any, Any]) -> list[str]:
    """Explicit per-client mapping, validated so that no client is silently dropped."""
    default = regions.get("default")
    default_code = _normalise_code(default) if default is not None else None
    out: list[str | None] = [default_code] * num_clients
    for key, value in regions.items():
        if key == "default":
            continue
        cid = _client_id(key)
        assert cid is not None
        if not 0 <= cid < num_clients:
            raise ValueError(
                f"regions names client {cid} but there are {num_clients} clients "
                f"(ids 0..{num_clients - 1})"
            )
        out[cid] = _normalise_code(value)
    missing = [i for i, code in enumerate(out) if code is None]
    if missing:
        raise ValueError(
            f"regions covers no region for clients {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}: list them or add a 'default' entry"
        )
    return [code for code in out if code is not None]


def _assign_weighted(num_clients: int, regions: Mapping[Any, Any], seed: int) -> list[str]:
    """Weighted mix -> exact counts (largest remainder) -> seeded shuffle."""
    weights: dict[str, float] = {}
    for key, value in regions.items():
        code = _normalise_code(key)
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"weight for region {code} must be a number, got {value!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight for region {code} must be finite and >= 0, got {value}")
        if code in weights:
            raise ValueError(f"region {code} appears twice in the mix")
        weights[code] = weight
    total = math.fsum(weights.values())
    if total <= 0:
        raise ValueError("region weights sum to 0: give at least one positive weight")
    quotas = {code: w / total * num_clients for code, w in weights.items()}
    counts = {code: math.floor(q) for code, q in quotas.items()}
    left = num_clients - sum(counts.values())
    order = sorted(
        enumerate(weights), key=lambda item: (-(quotas[item[1]] - counts[item[1]]), item[0])
    )
    for _, code in order[:left]:
        counts[code] += 1
    out = [code for code in weights for _ in range(counts[code])]
    random.Random(seed).shuffle(out)
    return out


class IntensityProfile:
    """Hourly grid intensity per region (24 values, gCO2e/kWh) for time-aware emissions.

    Annual averages hide that a grid can be several times dirtier at the evening peak
    than at midday. A profile lets communication (and the "as if on the client's grid"
    compute figure) be charged at the hour a round happened. Simulated time
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
            code = _normalise_code(region)
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
        code = _normalise_code(region)
        values = self._hourly.get(code)
        if values is None:
            return carbon_intensity(code)
        return values[self.hour_of(sim_time_s)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (e.g. to store next to the results of a run)."""
        return {
            "start_hour": self.start_hour,
            "hourly": {k: list(v) for k, v in self._hourly.items()},
        }


def _intensity(region: str, sim_time_s: float, profile: IntensityProfile | None) -> float:
    """Intensity of a region at a time: the profile if given, else the annual average."""
    return profile.at(region, sim_time_s) if profile is not None else carbon_intensity(region)


# --------------------------------------------------------------------------------------
# Network energy
# --------------------------------------------------------------------------------------

#: Default network energy intensities in kWh per GB (10**9 bytes) transferred, by the
#: client's access link. Sources, years and system boundaries: see docs/carbon.md.
#:
#: * ``wired``: 0.06 kWh/GB, Aslan, Mayers, Koomey & France, "Electricity Intensity of
#:   Internet Data Transmission: Untangling the Estimates", J. Industrial Ecology 22(4),
#:   785-798 (2018), doi:10.1111/jiec.12630. Reference year 2015; transmission network
#:   (core and fixed access), end-user devices and data centres outside the boundary.
#:   The same paper finds the intensity halving about every two years, so for traffic
#:   today this is an upper-end value: override it to model a later year.
#: * ``wifi``: the same 0.06 kWh/GB. The Wi-Fi hop runs over the same fixed network; the
#:   home router/access point draws near-constant power whether it carries traffic or not
#:   (Coroama, Schien, Preist & Hilty 2015; Mytton, Lunden & Malmodin 2024,
#:   doi:10.1111/jiec.13512), so it has no defensible per-GB share and is not added.
#: * ``4g``: 0.14 kWh/GB, mobile-network average of the European Commission's 2020 ICT
#:   impact study, as summarised by Scope3's published methodology ("Emissions from Data
#:   Transfer", methodology.scope3.com/data_transfer, which gives 0.03 kWh/GB fixed and
#:   0.14 kWh/GB mobile from that study). Secondary citation: check the primary report
#:   before relying on the exact value.
#:
#: No "5g" default: the per-GB figures found (e.g. 0.0104 kWh/GB) cover the radio base
#: stations only, not the whole network, and would not be comparable with the others.
#: Add one through the config (``NetworkModel.from_config({"5g": value})``).
DEFAULT_LINK_KWH_PER_GB: Mapping[str, float] = {"wired": 0.06, "wifi": 0.06, "4g": 0.14}


@dataclass(frozen=True)
class NetworkModel:
    """Energy of moving bytes over a client's link: ``kWh = bytes / 1e9 * kWh_per_GB[link]``.

    A per-GB intensity is an *attributional* model (it shares the network's energy in
    proportion to traffic); network equipment power barely depends on load, so halving
    the bytes does not halve real network energy. That is the convention of the per-GB
    literature and of Qiu et al. (2023); docs/carbon.md discusses it.
    """

    kwh_per_gb: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LINK_KWH_PER_GB))

    def __post_init__(self) -> None:
        clean: dict[str, float] = {}
        for link, value in dict(self.kwh_per_gb).items():
            v = float(value)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"kWh/GB for link {link!r} must be finite and >= 0, got {value}")
            clean[str(link).lower()] = v
        if not clean:
            raise ValueError("NetworkModel needs at least one link type")
        object.__setattr__(self, "kwh_per_gb", clean)

    @classmethod
    def from_config(cls, overrides: Mapping[str, float] | None = None) -> NetworkModel:
        """Defaults from :data:`DEFAULT_LINK_KWH_PER_GB`, with ``overrides`` replacing or
        adding link types (e.g. ``{"wired": 0.0065, "5g": 0.05}``)."""
        table = dict(DEFAULT_LINK_KWH_PER_GB)
        table.update({str(k).lower(): float(v) for k, v in (overrides or {}).items()})
        return cls(table)

    @property
    def links(self) -> tuple[str, ...]:
        """Known link types."""
        return tuple(self.kwh_per_gb)

    def check_link(self, link: str) -> str:
        """Return the normalised link name, or raise ValueError naming the valid ones."""
        name = str(link).lower()
        if name not in self.kwh_per_gb:
            raise ValueError(
                f"unknown network link {link!r}: valid links are {', '.join(self.links)} "
                "(add others via NetworkModel.from_config)"
            )
        return name

    def energy_kwh(self, nbytes: float, link: str) -> float:
        """Energy in kWh of transferring ``nbytes`` bytes over ``link``."""
        if nbytes < 0:
            raise ValueError(f"byte count must be >= 0, got {nbytes}")
        return nbytes / _BYTES_PER_GB * self.kwh_per_gb[self.check_link(link)]


# --------------------------------------------------------------------------------------
# CPU time of a process (what each client reports)
# --------------------------------------------------------------------------------------


class CpuTimer:
    """Measure the CPU time (user + system, all threads) a block of code costs.

    Clients run in their own Ray actor processes, so ``time.process_time`` around their
    train/evaluate work is exactly that client's CPU time, including torch's intra-op
    threads. ``scope="thread"`` measures the calling thread only (useful in the driver,
    whose process also runs Ray, Flower and CodeCarbon threads). ``wall_s`` is kept too,
    so a report can show utilisation.

    Use as ``with CpuTimer() as t: ...`` then read ``t.cpu_s``; or ``t.start()`` /
    ``t.stop()``. Repeated use accumulates, so one timer can cover train + evaluate.
    """

    def __init__(self, scope: Literal["process", "thread"] = "process"):
        if scope not in ("process", "thread"):
            raise ValueError(f"scope must be 'process' or 'thread', got {scope!r}")
        self.scope = scope
        self._clock = time.process_time if scope == "process" else time.thread_time
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._cpu0: float | None = None
        self._wall0 = 0.0

    def start(self) -> CpuTimer:
        """Start (or resume) timing."""
        if self._cpu0 is not None:
            raise RuntimeError("CpuTimer already running")
        self._cpu0 = self._clock()
        self._wall0 = time.perf_counter()
        return self

    def stop(self) -> float:
        """Stop timing; return the accumulated CPU seconds."""
        if self._cpu0 is None:
            raise RuntimeError("CpuTimer not running")
        self.cpu_s += self._clock() - self._cpu0
        self.wall_s += time.perf_counter() - self._wall0
        self._cpu0 = None
        return self.cpu_s

    def __enter__(self) -> CpuTimer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def rusage_cpu_s() -> float:
        """Total CPU seconds (user + sys) of this process so far, from getrusage.

        An alternative to bracketing when a client wants its lifetime CPU time.
        """
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------------------
# Attribution of a measured total to parts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerModel:
    """CodeCarbon's power model as it configured itself for this host.

    Attribution charges every CPU-second the same energy::

        kWh per CPU-second = (cpu_w_per_thread * pue + ram_w / threads) / 3.6e6

    ``cpu_w_per_thread`` is CodeCarbon's CPU power at full load divided by the logical
    CPUs it counts: ``force_cpu_power`` if given, else its TDP-table value, else 4 W per
    thread for an unknown model. ``ram_w`` already includes the PUE when it comes from a
    measured round (:meth:`RoundMeasurement.ram_w`); otherwise the static estimate
    ``ram_w_static * pue`` is used. The RAM rule: a part that keeps k of the N threads
    busy for the whole round is charged k/N of the RAM energy; RAM held by unused
    capacity stays in the residual.
    """

    cpu_mode: str
    """CodeCarbon's CPU method: ``cpu_load`` (estimated from load), ``intel_rapl``, ..."""
    cpu_w_max: float
    """CPU power at 100% load in W, before PUE (CodeCarbon's ``CPU._tdp`` for load mode)."""
    threads: int
    """Logical CPUs CodeCarbon divides the load by."""
    ram_w_static: float
    """RAM power in W, before PUE, as CodeCarbon estimated it at setup."""
    pue: float
    tracking_mode: str
    gpu_count: int
    cpu_source: str
    """Plain-words provenance of ``cpu_w_max`` (for reports)."""

    @property
    def cpu_w_per_thread(self) -> float:
        """CPU watts charged per busy logical CPU, before PUE."""
        return self.cpu_w_max / self.threads

    def kwh_per_cpu_second(self, ram_w: float | None = None) -> float:
        """Energy charged per CPU-second, PUE included (see class docstring)."""
        ram = self.ram_w_static * self.pue if ram_w is None else ram_w
        return (self.cpu_w_per_thread * self.pue + ram / self.threads) / _J_PER_KWH

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for the run record."""
        out = dataclasses.asdict(self)
        out["cpu_w_per_thread"] = self.cpu_w_per_thread
        return out


@dataclass(frozen=True)
class Attribution:
    """Result of :func:`attribute_round`: per-part energy plus residual == total."""

    total_kwh: float
    parts_kwh: dict[str, float]
    """Energy charged to each part (after scaling, if any)."""
    residual_kwh: float
    """Idle/overhead energy nobody reported CPU time for. Never below 0 beyond rounding."""
    modelled_kwh: dict[str, float]
    """Each part's energy from the power model, before any scaling."""
    scale: float
    """1.0, or total / sum(modelled) < 1 when the parts' model exceeded the measurement."""

    def check(self) -> None:
        """Raise if the closure invariant (fsum of parts and residual == total) fails."""
        if math.fsum([*self.parts_kwh.values(), self.residual_kwh]) != self.total_kwh:
            raise ArithmeticError("attribution parts + residual != total")


def _close_exactly(values: list[float], total: float, adjust: int) -> list[float]:
    """Nudge entries of ``values`` by ulps until ``math.fsum(values) == total`` exactly.

    Float arithmetic makes ``total - sum(parts)`` close but not always exact; the
    invariant parts + residual == total is promised exactly (as ``math.fsum``, the
    correctly rounded sum). One correction step puts the sum within an ulp; then single
    ulp steps, first on ``values[adjust]`` and if that cannot land inside the rounding
    window (its ulp can equal the window) on the next largest entries, whose ulps are
    finer. Entries never go below 0. The change is a few ulps of ``total`` at most.
    """
    out = list(values)
    s = math.fsum(out)
    if s == total:
        return out
    if out[adjust] + (total - s) >= 0:
        out[adjust] += total - s
    order = [adjust, *sorted((i for i in range(len(out)) if i != adjust), key=lambda i: -out[i])]
    for idx in order:
        for _ in range(8):
            s = math.fsum(out)
            if s == total:
                return out
            stepped = math.nextafter(out[idx], math.inf if total > s else -math.inf)
            if stepped < 0:
                break
            out[idx] = stepped
    if math.fsum(out) == total:
        return out
    raise ArithmeticError("could not close the attribution exactly")  # pragma: no cover


def attribute_round(
    total_kwh: float, cpu_seconds_by_part: Mapping[str, float], kwh_per_cpu_second: float
) -> Attribution:
    """Split a measured energy total between parts by their CPU time.

    Each part (a client, the server) is charged ``cpu_seconds * kwh_per_cpu_second``
    (:meth:`PowerModel.kwh_per_cpu_second`). The residual ``total - sum(parts)`` is the
    idle/overhead energy (idle floor of the CPU model, RAM held by unused capacity, Ray
    and other processes, GPU energy, which is not attributed).

    Rule when the parts exceed the measurement (possible because CodeCarbon's
    machine-mode CPU model is cubic in load while attribution is linear, or because of
    sampling jitter): the measured total is the authority, so every part is scaled by
    the same factor ``total / sum(parts)`` and the residual is 0. The factor is reported
    as ``scale`` and the unscaled values as ``modelled_kwh``, so nothing is hidden.
    A negative residual is never reported: it would read as negative idle energy.

    ``math.fsum(parts) + residual == total`` holds exactly (see :func:`_close_exactly`).
    """
    if not math.isfinite(total_kwh) or total_kwh < 0:
        raise ValueError(f"total_kwh must be finite and >= 0, got {total_kwh}")
    if not math.isfinite(kwh_per_cpu_second) or kwh_per_cpu_second < 0:
        raise ValueError(f"kwh_per_cpu_second must be finite and >= 0, got {kwh_per_cpu_second}")
    names = list(cpu_seconds_by_part)
    for name in names:
        sec = cpu_seconds_by_part[name]
        if not math.isfinite(sec) or sec < 0:
            raise ValueError(f"CPU seconds of part {name!r} must be finite and >= 0, got {sec}")
    modelled = {name: cpu_seconds_by_part[name] * kwh_per_cpu_second for name in names}
    modelled_sum = math.fsum(modelled.values())
    if modelled_sum > total_kwh:
        scale = total_kwh / modelled_sum
        values = [modelled[n] * scale for n in names]
        adjust = max(range(len(values)), key=values.__getitem__)
        values = _close_exactly(values, total_kwh, adjust)
        parts = dict(zip(names, values, strict=True))
        residual = 0.0
    else:
        scale = 1.0
        values = [modelled[n] for n in names]
        values = _close_exactly([*values, total_kwh - modelled_sum], total_kwh, len(names))
        parts = dict(zip(names, values[:-1], strict=True))
        residual = values[-1]
    result = Attribution(total_kwh, parts, residual, modelled, scale)
    result.check()
    return result


# --------------------------------------------------------------------------------------
# Host measurement with CodeCarbon
# --------------------------------------------------------------------------------------

_CODECARBON_LOGGER = "codecarbon"


def _detach_console_handlers(logger: logging.Logger) -> None:
    """Drop CodeCarbon's console handlers, keep file handlers.

    CodeCarbon logs to the ``codecarbon`` logger (propagate=False) through a
    StreamHandler to stderr that it re-installs in every tracker constructor
    (``set_logger_format``), and it logs "offline tracker init" and "Multiple instances
    ... allowed" *before* applying ``log_level``. Setting ``log_level`` is therefore not
    enough; removing the console handler before and after construction is.
    """
    for handler in list(logger.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            logger.removeHandler(handler)


_NULL_HANDLER = logging.NullHandler()


def _silence_codecarbon(logger: logging.Logger) -> None:
    """Detach console handlers and make sure the logger is never handler-less.

    A logger with no handlers at all (and propagate=False, as CodeCarbon's) falls back
    to ``logging.lastResort``, which prints WARNING and above to stderr; one shared
    NullHandler prevents that without touching any other logger.
    """
    _detach_console_handlers(logger)
    if _NULL_HANDLER not in logger.handlers:
        logger.addHandler(_NULL_HANDLER)


@dataclass(frozen=True)
class EnergyReading:
    """Energy and emissions of one CodeCarbon task (a round), a gap, or a whole run."""

    name: str
    duration_s: float
    energy_kwh: float
    cpu_kwh: float
    ram_kwh: float
    gpu_kwh: float
    emissions_kg: float

    @classmethod
    def from_emissions_data(cls, name: str, data: Any) -> EnergyReading:
        """Convert CodeCarbon's EmissionsData (values already include the PUE)."""
        return cls(
            name=name,
            duration_s=float(data.duration),
            energy_kwh=float(data.energy_consumed),
            cpu_kwh=float(data.cpu_energy),
            ram_kwh=float(data.ram_energy),
            gpu_kwh=float(data.gpu_energy),
            emissions_kg=float(data.emissions),
        )

    @property
    def ram_w(self) -> float | None:
        """Average RAM power over the reading, PUE included (None for a 0-length one)."""
        return self.ram_kwh * _J_PER_KWH / self.duration_s if self.duration_s > 0 else None

    def intensity_g_per_kwh(self) -> float | None:
        """The intensity CodeCarbon applied (emissions / energy), None if no energy."""
        return self.emissions_kg * 1000.0 / self.energy_kwh if self.energy_kwh > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dataclasses.asdict(self)


@dataclass
class RoundMeasurement:
    """Filled in when a :meth:`HostTracker.round` block exits."""

    name: str
    reading: EnergyReading | None = None

    @property
    def ram_w(self) -> float | None:
        """Average RAM power of the round (PUE included), for the attribution rate."""
        return self.reading.ram_w if self.reading is not None else None


@dataclass(frozen=True)
class RunEnergy:
    """What :meth:`HostTracker.stop` returns: the whole run and its split."""

    total: EnergyReading
    rounds: tuple[EnergyReading, ...]
    outside_rounds: EnergyReading
    """Set-up, between-round and tear-down time (e.g. Ray start-up): total - rounds."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "total": self.total.to_dict(),
            "rounds": [r.to_dict() for r in self.rounds],
            "outside_rounds": self.outside_rounds.to_dict(),
        }


class HostTracker:
    """The host's energy per round, measured by one CodeCarbon OfflineEmissionsTracker.

    Construct one per run in the driver process, wrap every round in
    ``with tracker.round(f"round_{r}") as m: ...`` and call :meth:`stop` at the end.
    Rounds are CodeCarbon tasks (``start_task``/``stop_task``); the time outside rounds is
    measured as tasks too (named ``outside_rounds_<k>``), so the whole run is covered and
    ``stop().total`` equals the sum of all tasks. Files written into ``run_dir``:
    ``emissions.csv`` (the run total), ``emissions_rounds_<run_id>.csv`` (one row per
    task) and, with ``log_file``, ``codecarbon.log`` (CodeCarbon's own log, which never
    reaches the console).

    In task mode CodeCarbon integrates energy at task boundaries from power samples it
    takes every second, so ``measure_power_secs`` (its periodic-scheduler interval) only
    matters outside tasks; it is accepted for completeness.

    Offline only: output goes to CSV, and the settings that could make CodeCarbon talk to
    a network (API output, HTTP endpoint, Electricity Maps token, also when they come from
    ``~/.codecarbon.config`` or ``CODECARBON_*`` variables) are forced off.

    ``carbon=off`` means the caller does not construct a HostTracker (nor pays its
    ~1 s hardware probe and 1 s monitoring thread); :class:`CarbonLedger` then records
    communication only (``host=None``), and the record says compute was not measured.
    """

    def __init__(
        self,
        run_dir: str | Path,
        country_iso_code: str,
        *,
        measure_power_secs: float = 15.0,
        tracking_mode: Literal["machine", "process"] = "machine",
        force_cpu_power: float | None = None,
        force_ram_power: float | None = None,
        pue: float = 1.0,
        project_name: str = "fedlab",
        log_file: str | None = "codecarbon.log",
        log_level: str = "warning",
    ):
        self.country_iso_code = _normalise_code(country_iso_code)
        if tracking_mode not in ("machine", "process"):
            raise ValueError(f"tracking_mode must be 'machine' or 'process', got {tracking_mode!r}")
        if pue < 1.0:
            raise ValueError(f"pue must be >= 1, got {pue}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

        from codecarbon import OfflineEmissionsTracker
        from codecarbon.output_methods.base_output import OutputMethod

        self._logger = logging.getLogger(_CODECARBON_LOGGER)
        self._log_handler: logging.Handler | None = None
        _silence_codecarbon(self._logger)
        self._logger.setLevel(log_level.upper())
        if log_file:
            self._log_handler = logging.FileHandler(self.run_dir / log_file, encoding="utf-8")
            self._log_handler.setFormatter(
                logging.Formatter("[%(name)s %(levelname)s @ %(asctime)s] %(message)s")
            )
            self._logger.addHandler(self._log_handler)
        try:
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code,
                output_dir=str(self.run_dir),
                output_file="emissions.csv",
                output_methods=[OutputMethod.CSV],
                emissions_endpoint=None,
                electricitymaps_api_token=None,
                force_carbon_intensity_g_co2e_kwh=None,
                measure_power_secs=measure_power_secs,
                tracking_mode=tracking_mode,
                force_cpu_power=force_cpu_power,
                force_ram_power=force_ram_power,
                pue=pue,
                project_name=project_name,
                experiment_name="rounds",
                on_csv_write="append",
                allow_multiple_runs=True,
                log_level=log_level,
            )
            _silence_codecarbon(self._logger)
            # A deprecated co2_signal_api_token from a config file would still reach the
            # emissions engine (created lazily): clear it so nothing can go online.
            self._tracker._electricitymaps_api_token = None
            # Run CodeCarbon's hardware probe now (~1 s on first use) rather than inside
            # the first round, and read the power model it settled on.
            self._tracker.get_detected_hardware()
            _silence_codecarbon(self._logger)
            self.power_model = self._read_power_model()
        except Exception:
            self._release_log()
            raise
        self._rounds: list[EnergyReading] = []
        self._outside: list[EnergyReading] = []
        self._in_round = False
        self._result: RunEnergy | None = None
        self._gap_index = 0
        self._start_gap()

    # -- power model ---------------------------------------------------------------

    def _read_power_model(self) -> PowerModel:
        """Read the CPU/RAM power CodeCarbon configured, from its hardware objects.

        CodeCarbon 3.3 exposes no public accessor, so this reads ``tracker._hardware``
        (its RAM/CPU/GPU objects) and the CPU's ``_tdp``/``_mode``/``_cpu_count``. If a
        CodeCarbon upgrade renames them this raises instead of guessing; the tests pin
        the behaviour.
        """
        tr = self._tracker
        hardware = list(tr._hardware)
        cpu = next((h for h in hardware if type(h).__name__ == "CPU"), None)
        ram = next((h for h in hardware if type(h).__name__ == "RAM"), None)
        if ram is None:
            raise RuntimeError("CodeCarbon set up no RAM model; cannot attribute RAM energy")
        ram_w = float(ram.total_power().W)
        threads = int(getattr(cpu, "_cpu_count", 0) or tr._conf.get("cpu_count") or 1)
        if cpu is not None and cpu._mode in ("cpu_load", "constant"):
            cpu_w = float(cpu._tdp)
            mode = str(cpu._mode)
            if tr._force_cpu_power is not None:
                source = f"force_cpu_power={tr._force_cpu_power:g} W"
            elif getattr(cpu, "_is_generic_tdp", False):
                source = f"CodeCarbon generic constant {cpu_w:g} W"
            else:
                source = f"CodeCarbon TDP estimate {cpu_w:g} W for {cpu.get_model()!r}"
        else:
            # The CPU energy is *measured* (RAPL, Windows EMI, powermetrics, ...): there is
            # no load model to read, so charge CPU-seconds at what CodeCarbon's own
            # fallback would have used, the TDP table value times the sockets.
            from codecarbon.core import cpu as cc_cpu
            from codecarbon.core.hardware_cache import get_cached_tdp

            mode = str(getattr(cpu, "_mode", type(cpu).__name__ if cpu else "none"))
            tdp = get_cached_tdp(cc_cpu)
            sockets = int(tr._conf.get("cpu_physical_count") or 1)
            if tdp.tdp is not None:
                cpu_w = float(tdp.tdp) * sockets
                source = f"{mode} measures CPU energy; rate from TDP table {cpu_w:g} W"
            else:
                from codecarbon.external.hardware import POWER_CONSTANT

                cpu_w = float(POWER_CONSTANT)
                source = f"{mode} measures CPU energy; rate from generic {cpu_w:g} W"
        return PowerModel(
            cpu_mode=mode,
            cpu_w_max=cpu_w,
            threads=max(threads, 1),
            ram_w_static=ram_w,
            pue=float(tr._pue),
            tracking_mode=str(tr._tracking_mode),
            gpu_count=int(tr._conf.get("gpu_count") or 0),
            cpu_source=source,
        )

    @property
    def intensity_g_per_kwh(self) -> float:
        """The host grid intensity CodeCarbon applies (its country value, no region)."""
        return carbon_intensity(self.country_iso_code)

    # -- tasks ---------------------------------------------------------------------

    def _start_gap(self) -> None:
        self._tracker.start_task(f"outside_rounds_{self._gap_index}")
        self._gap_index += 1

    def _stop_task(self, name: str, into: list[EnergyReading]) -> EnergyReading:
        data = self._tracker.stop_task()
        if data is None:
            raise RuntimeError(f"CodeCarbon returned no data for task {name!r}")
        reading = EnergyReading.from_emissions_data(name, data)
        into.append(reading)
        return reading

    @contextlib.contextmanager
    def round(self, name: str) -> Iterator[RoundMeasurement]:
        """Measure one round as a CodeCarbon task; the yielded object gets the reading.

        The task is stopped even if the block raises, so a failed round still leaves a
        consistent tracker (and its energy is still counted).
        """
        if self._result is not None:
            raise RuntimeError("HostTracker already stopped")
        if self._in_round:
            raise RuntimeError("rounds cannot nest")
        self._stop_task("outside_rounds", self._outside)
        measurement = RoundMeasurement(name)
        self._in_round = True
        self._tracker.start_task(name)
        try:
            yield measurement
        finally:
            measurement.reading = self._stop_task(name, self._rounds)
            self._in_round = False
            self._start_gap()

    @property
    def rounds(self) -> tuple[EnergyReading, ...]:
        """Readings of the rounds finished so far."""
        return tuple(self._rounds)

    def outside_so_far(self) -> tuple[float, float]:
        """(kWh, kg) measured outside rounds up to the last finished round."""
        return (
            math.fsum(r.energy_kwh for r in self._outside),
            math.fsum(r.emissions_kg for r in self._outside),
        )

    def stop(self) -> RunEnergy:
        """Stop tracking; write the CSVs; return the total and its split. Idempotent."""
        if self._result is not None:
            return self._result
        if self._in_round:
            raise RuntimeError("stop() called inside a round")
        try:
            self._stop_task("outside_rounds", self._outside)
            self._tracker.stop()
            data = getattr(self._tracker, "final_emissions_data", None)
        finally:
            self._release_log()
        tasks = [*self._rounds, *self._outside]
        if data is None:
            raise RuntimeError("CodeCarbon did not produce a final measurement")
        total = EnergyReading(
            name="total",
            # CodeCarbon's own duration restarts at every task; the tasks tile the run.
            duration_s=math.fsum(t.duration_s for t in tasks),
            energy_kwh=float(data.energy_consumed),
            cpu_kwh=float(data.cpu_energy),
            ram_kwh=float(data.ram_energy),
            gpu_kwh=float(data.gpu_energy),
            emissions_kg=float(data.emissions),
        )
        outside = EnergyReading(
            name="outside_rounds",
            duration_s=math.fsum(t.duration_s for t in self._outside),
            **{
                key: getattr(total, key) - math.fsum(getattr(r, key) for r in self._rounds)
                for key in ("energy_kwh", "cpu_kwh", "ram_kwh", "gpu_kwh", "emissions_kg")
            },
        )
        self._result = RunEnergy(total=total, rounds=tuple(self._rounds), outside_rounds=outside)
        return self._result

    def _release_log(self) -> None:
        """Detach and close our log file handler (several runs may share a process)."""
        if self._log_handler is not None:
            self._logger.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        _silence_codecarbon(self._logger)

    def __enter__(self) -> HostTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------
# Ledger
# --------------------------------------------------------------------------------------

_LEDGER_VERSION = 1
_SERVER = "server"


def _client_part(cid: int) -> str:
    return f"client_{cid}"


class CarbonLedger:
    """Per-round and per-client carbon rows of one run, with per-region totals.

    Record each round with :meth:`record_round`. Row fields (all JSON-able):

    * round rows: measured host energy (total/cpu/ram/gpu kWh, kg), the intensity
      CodeCarbon applied, server and residual (idle/overhead) energy and emissions, the
      attribution ``scale``, and the round's communication totals;
    * client rows: region, link, CPU seconds, ``compute_kwh``; ``compute_kg`` at the
      **host's** intensity (where the electricity was actually drawn: this is the number
      that adds up with the measured total); ``compute_kg_client_grid`` at the client's
      region intensity (what the same compute would emit on the client's grid: the
      federated-learning view of Qiu et al.); bytes down/up, ``comm_kwh`` and
      ``comm_kg`` (at the client's region intensity, hourly if a profile is given).

    Without a host measurement (``host=None``) the compute fields are None and only
    communication is accounted. :meth:`state_dict`/:meth:`load_state_dict` carry the rows
    across a checkpoint/restart; totals are always recomputed from the rows.
    """

    def __init__(
        self,
        client_regions: Sequence[str],
        host_region: str,
        network: NetworkModel | None = None,
        client_links: str | Sequence[str] = "wired",
        profile: IntensityProfile | None = None,
    ):
        self.client_regions = [_normalise_code(r) for r in client_regions]
        self.host_region = _normalise_code(host_region)
        self.network = network if network is not None else NetworkModel()
        if isinstance(client_links, str):
            client_links = [client_links] * len(self.client_regions)
        if len(client_links) != len(self.client_regions):
            raise ValueError(
                f"{len(client_links)} client links for {len(self.client_regions)} clients"
            )
        self.client_links = [self.network.check_link(link) for link in client_links]
        self.profile = profile
        self.round_rows: list[dict[str, Any]] = []
        self.client_rows: list[dict[str, Any]] = []

    @property
    def num_clients(self) -> int:
        """Number of clients the ledger knows regions for."""
        return len(self.client_regions)

    def _check_client(self, cid: int) -> int:
        if not isinstance(cid, int) or not 0 <= cid < self.num_clients:
            raise ValueError(f"unknown client id {cid!r} (ids 0..{self.num_clients - 1})")
        return cid

    def record_round(
        self,
        server_round: int,
        *,
        sim_time_s: float,
        client_cpu_s: Mapping[int, float],
        bytes_by_client: Mapping[int, tuple[int, int]],
        host: RoundMeasurement | EnergyReading | None = None,
        power: PowerModel | None = None,
        server_cpu_s: float = 0.0,
    ) -> dict[str, Any]:
        """Account one round; return its round row.

        ``client_cpu_s``: CPU seconds each participating client reported (train +
        evaluate). ``bytes_by_client``: ``(bytes_down, bytes_up)`` per client.
        ``host``/``power``: the round's :class:`HostTracker` measurement and power model,
        or None when carbon tracking is off. ``sim_time_s``: seconds since run start, for
        hourly profiles.
        """
        if any(row["round"] == server_round for row in self.round_rows):
            raise ValueError(f"round {server_round} already recorded")
        reading = host.reading if isinstance(host, RoundMeasurement) else host
        if isinstance(host, RoundMeasurement) and reading is None:
            raise ValueError(f"round {host.name!r} has no reading yet (record after the block)")
        if reading is not None and power is None:
            raise ValueError("a host measurement needs the PowerModel to attribute it")
        cids = sorted({self._check_client(c) for c in (*client_cpu_s, *bytes_by_client)})

        attribution: Attribution | None = None
        host_g = carbon_intensity(self.host_region)
        if reading is not None and power is not None:
            rate = power.kwh_per_cpu_second(reading.ram_w)
            seconds = {_SERVER: float(server_cpu_s)}
            seconds.update({_client_part(c): float(client_cpu_s.get(c, 0.0)) for c in cids})
            attribution = attribute_round(reading.energy_kwh, seconds, rate)
            applied = reading.intensity_g_per_kwh()
            host_g = applied if applied is not None else host_g

        round_comm_kwh: list[float] = []
        round_comm_kg: list[float] = []
        for cid in cids:
            region = self.client_regions[cid]
            link = self.client_links[cid]
            down, up = bytes_by_client.get(cid, (0, 0))
            comm_kwh = self.network.energy_kwh(down + up, link)
            client_g = _intensity(region, sim_time_s, self.profile)
            comm_kg = kg_from_kwh(comm_kwh, client_g)
            compute_kwh = compute_kg = compute_kg_grid = None
            if attribution is not None:
                compute_kwh = attribution.parts_kwh[_client_part(cid)]
                compute_kg = kg_from_kwh(compute_kwh, host_g)
                compute_kg_grid = kg_from_kwh(compute_kwh, client_g)
            round_comm_kwh.append(comm_kwh)
            round_comm_kg.append(comm_kg)
            self.client_rows.append(
                {
                    "round": server_round,
                    "client_id": cid,
                    "region": region,
                    "link": link,
                    "cpu_s": float(client_cpu_s.get(cid, 0.0)),
                    "compute_kwh": compute_kwh,
                    "compute_kg": compute_kg,
                    "compute_kg_client_grid": compute_kg_grid,
                    "client_intensity_g_per_kwh": client_g,
                    "bytes_down": int(down),
                    "bytes_up": int(up),
                    "comm_kwh": comm_kwh,
                    "comm_kg": comm_kg,
                }
            )

        row: dict[str, Any] = {
            "round": server_round,
            "sim_time_s": float(sim_time_s),
            "measured": attribution is not None,
            "host_region": self.host_region,
            "host_intensity_g_per_kwh": host_g,
            "duration_s": reading.duration_s if reading else None,
            "host_kwh": reading.energy_kwh if reading else None,
            "host_cpu_kwh": reading.cpu_kwh if reading else None,
            "host_ram_kwh": reading.ram_kwh if reading else None,
            "host_gpu_kwh": reading.gpu_kwh if reading else None,
            "host_kg": reading.emissions_kg if reading else None,
            "server_cpu_s": float(server_cpu_s),
            "server_kwh": attribution.parts_kwh[_SERVER] if attribution else None,
            "server_kg": (
                kg_from_kwh(attribution.parts_kwh[_SERVER], host_g) if attribution else None
            ),
            "clients_compute_kwh": (
                math.fsum(v for k, v in attribution.parts_kwh.items() if k != _SERVER)
                if attribution
                else None
            ),
            "residual_kwh": attribution.residual_kwh if attribution else None,
            "residual_kg": kg_from_kwh(attribution.residual_kwh, host_g) if attribution else None,
            "attribution_scale": attribution.scale if attribution else None,
            "comm_kwh": math.fsum(round_comm_kwh),
            "comm_kg": math.fsum(round_comm_kg),
        }
        self.round_rows.append(row)
        return row

    # -- totals --------------------------------------------------------------------

    def totals_by_region(self) -> dict[str, dict[str, Any]]:
        """Per client region: clients, bytes, compute and communication energy/emissions."""
        out: dict[str, dict[str, Any]] = {}
        for region in sorted(set(self.client_regions)):
            rows = [r for r in self.client_rows if r["region"] == region]
            measured = [r for r in rows if r["compute_kwh"] is not None]
            out[region] = {
                "clients": sum(1 for r in self.client_regions if r == region),
                "intensity_g_per_kwh": carbon_intensity(region),
                "cpu_s": math.fsum(r["cpu_s"] for r in rows),
                "bytes_down": sum(r["bytes_down"] for r in rows),
                "bytes_up": sum(r["bytes_up"] for r in rows),
                "compute_kwh": math.fsum(r["compute_kwh"] for r in measured),
                "compute_kg": math.fsum(r["compute_kg"] for r in measured),
                "compute_kg_client_grid": math.fsum(r["compute_kg_client_grid"] for r in measured),
                "comm_kwh": math.fsum(r["comm_kwh"] for r in rows),
                "comm_kg": math.fsum(r["comm_kg"] for r in rows),
            }
        return out

    def totals(self) -> dict[str, Any]:
        """Run totals: host measurement, its split, communication, and per region."""
        measured = [r for r in self.round_rows if r["measured"]]

        def total(key: str, rows: list[dict[str, Any]]) -> float:
            return math.fsum(r[key] for r in rows)

        return {
            "rounds": len(self.round_rows),
            "rounds_measured": len(measured),
            "host_region": self.host_region,
            "host_kwh": total("host_kwh", measured),
            "host_kg": total("host_kg", measured),
            "server_kwh": total("server_kwh", measured),
            "server_kg": total("server_kg", measured),
            "clients_compute_kwh": total("clients_compute_kwh", measured),
            "residual_kwh": total("residual_kwh", measured),
            "residual_kg": total("residual_kg", measured),
            "comm_kwh": total("comm_kwh", self.round_rows),
            "comm_kg": total("comm_kg", self.round_rows),
            "by_region": self.totals_by_region(),
        }

    # -- checkpointing -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: configuration fingerprint plus all rows."""
        return {
            "version": _LEDGER_VERSION,
            "client_regions": list(self.client_regions),
            "client_links": list(self.client_links),
            "host_region": self.host_region,
            "network_kwh_per_gb": dict(self.network.kwh_per_gb),
            "round_rows": [dict(r) for r in self.round_rows],
            "client_rows": [dict(r) for r in self.client_rows],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore rows saved by :meth:`state_dict`.

        Refuses a state from a differently configured run (regions, links, host region or
        network model), since its rows would not add up with the new ones.
        """
        if state.get("version") != _LEDGER_VERSION:
            raise ValueError(f"unsupported ledger state version {state.get('version')!r}")
        mine = self.state_dict()
        for key in ("client_regions", "client_links", "host_region", "network_kwh_per_gb"):
            if state.get(key) != mine[key]:
                raise ValueError(f"ledger state does not match this run's {key}")
        self.round_rows = [dict(r) for r in state["round_rows"]]
        self.client_rows = [dict(r) for r in state["client_rows"]]


# --------------------------------------------------------------------------------------
# One run's carbon accounting, as the server drives it round by round
# --------------------------------------------------------------------------------------


def assign_links(
    num_clients: int, links: Mapping[Any, Any] | str, network: NetworkModel
) -> list[str]:
    """Each client's network link: one link for all, or ``{client_id: link, "default": link}``."""
    if isinstance(links, str):
        return [network.check_link(links)] * num_clients
    default = links.get("default")
    out = []
    for cid in range(num_clients):
        link = links.get(cid, links.get(str(cid), default))
        if link is None:
            raise ValueError(f"no link for client {cid}: list it or give a 'default'")
        out.append(network.check_link(link))
    return out


def client_grids(
    cfg: Any, num_clients: int, seed: int
) -> tuple[list[str], IntensityProfile | None]:
    """Each client's region (``carbon.regions``) and the hourly profile, if one is configured."""
    regions = assign_regions(num_clients, cfg.regions or cfg.country, seed)
    profile = IntensityProfile.from_csv(cfg.intensity_profile) if cfg.intensity_profile else None
    return regions, profile


def client_grid_intensity(cfg: Any, num_clients: int, seed: int) -> Callable[[int, float], float]:
    """gCO2e/kWh of each client's grid at a time on the run's simulated clock.

    The clock is the scheduler's (:meth:`fedlab.fl.schedule.Scheduler.round_start_s`); without
    an hourly profile the intensity is the region's annual value. Used by carbon-aware client
    selection, by the ledger and by the device model, so all three see the same grid.
    """
    regions, profile = client_grids(cfg, num_clients, seed)

    def intensity(client: int, sim_time_s: float) -> float:
        return _intensity(regions[client], sim_time_s, profile)

    return intensity


class RunCarbon:
    """Carbon accounting of one run: host measurement per round plus the ledger.

    The server calls :meth:`start_round` when a round begins and :meth:`end_round` with the
    round's client rows when it ends; :meth:`stop` closes the tracker (so its total covers
    the whole run, start-up included) and :meth:`summary` gives the record's ``carbon``
    section. ``cfg`` is a :class:`fedlab.config.schema.CarbonConfig`.
    """

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        num_clients: int,
        seed: int,
        links: Sequence[str] | None = None,
    ) -> None:
        self.cfg = cfg
        network = NetworkModel.from_config(cfg.network)
        regions, profile = client_grids(cfg, num_clients, seed)
        if links is None:  # simulated devices bring their own links
            links = assign_links(num_clients, cfg.links, network)
        self.ledger = CarbonLedger(regions, cfg.country, network, links, profile)
        self.tracker = HostTracker(
            run_dir,
            cfg.country,
            measure_power_secs=cfg.measure_power_secs,
            tracking_mode=cfg.tracking_mode,
            force_cpu_power=cfg.force_cpu_power,
            force_ram_power=cfg.force_ram_power,
            pue=cfg.pue,
        )
        self._round: contextlib.ExitStack | None = None
        self._measurement: RoundMeasurement | None = None
        self._previous_outside = (0.0, 0.0)  # kWh, kg outside rounds in earlier attempts
        self._server_cpu0 = 0.0

    def start_round(self, server_round: int) -> None:
        """Begin measuring ``server_round`` (a CodeCarbon task)."""
        self._round = contextlib.ExitStack()
        self._measurement = self._round.enter_context(self.tracker.round(f"round_{server_round}"))
        self._server_cpu0 = time.process_time()

    def end_round(
        self, server_round: int, rows: Sequence[Mapping[str, Any]], sim_time_s: float
    ) -> tuple[dict[str, float], dict[int, dict[str, Any]]]:
        """Close the round; returns its ``rounds.csv`` columns and per-client columns.

        ``rows`` are the round's ``clients.csv`` rows: each client's reported CPU seconds
        (train and evaluate) and the bytes it moved; ``sim_time_s`` is the round's start on
        the simulated clock (for hourly intensity profiles).
        """
        server_cpu_s = time.process_time() - self._server_cpu0
        assert self._round is not None, "end_round without start_round"
        self._round.close()
        self._round = None
        cpu: dict[int, float] = {}
        moved: dict[int, tuple[int, int]] = {}
        for r in rows:
            cid = int(r["client"])
            cpu[cid] = cpu.get(cid, 0.0) + float(r.get("cpu_s") or 0.0)
            down, up = moved.get(cid, (0, 0))
            moved[cid] = (down + int(r.get("bytes_down") or 0), up + int(r.get("bytes_up") or 0))
        row = self.ledger.record_round(
            server_round,
            sim_time_s=sim_time_s,
            client_cpu_s=cpu,
            bytes_by_client=moved,
            host=self._measurement,
            power=self.tracker.power_model,
            server_cpu_s=server_cpu_s,
        )
        clients = {
            c["client_id"]: {
                "region": c["region"],
                "energy_kwh": c["compute_kwh"] + c["comm_kwh"],
                "emissions_kg": c["compute_kg"] + c["comm_kg"],
            }
            for c in self.ledger.client_rows
            if c["round"] == server_round
        }
        columns = {
            "energy_kwh": row["host_kwh"] + row["comm_kwh"],
            "emissions_kg": row["host_kg"] + row["comm_kg"],
            "compute_kg": math.fsum(
                c["compute_kg"] for c in self.ledger.client_rows if c["round"] == server_round
            ),
            "communication_kg": row["comm_kg"],
        }
        return columns, clients

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for a checkpoint: the ledger's rows and the energy measured
        outside rounds so far (start-up, gaps), earlier attempts of a resumed run included."""
        kwh, kg = self.tracker.outside_so_far()
        return {
            "ledger": self.ledger.state_dict(),
            "outside_kwh": self._previous_outside[0] + kwh,
            "outside_kg": self._previous_outside[1] + kg,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a resumed run: earlier rounds and earlier outside-round energy count.

        The energy spent between a killed process's last checkpoint and its death was never
        written anywhere and cannot be counted.
        """
        self.ledger.load_state_dict(state["ledger"])
        self._previous_outside = (float(state["outside_kwh"]), float(state["outside_kg"]))

    def stop(self) -> RunEnergy:
        """Stop measuring (closing a round left open by a failure); idempotent."""
        if self._round is not None:
            self._round.close()
            self._round = None
        return self.tracker.stop()

    def summary(self, run: RunEnergy | None = None) -> dict[str, Any]:
        """The ``carbon`` section of ``results.json`` (so far, or final with ``run``).

        ``host_kwh`` is CodeCarbon's measurement; it splits exactly into the clients'
        compute, the server's work and ``overhead`` (idle capacity, Ray, start-up: the
        residual of the attribution plus the time outside rounds). Communication is
        modelled on top of it, at each client's grid.
        """
        totals = self.ledger.totals()
        power = self.tracker.power_model
        compute_kg = math.fsum(
            r["compute_kg"] for r in self.ledger.client_rows if r["compute_kg"] is not None
        )
        host_kwh, host_kg = totals["host_kwh"], totals["host_kg"]
        overhead_kwh, overhead_kg = totals["residual_kwh"], totals["residual_kg"]
        if run is not None:  # the whole run, start-up and the time between rounds included
            outside_kwh = self._previous_outside[0] + run.outside_rounds.energy_kwh
            outside_kg = self._previous_outside[1] + run.outside_rounds.emissions_kg
            host_kwh += outside_kwh
            host_kg += outside_kg
            overhead_kwh += outside_kwh
            overhead_kg += outside_kg
        host_g = carbon_intensity(self.ledger.host_region)
        return {
            "energy_kwh": host_kwh + totals["comm_kwh"],
            "emissions_kg": host_kg + totals["comm_kg"],
            "host_kwh": host_kwh,
            "host_kg": host_kg,
            "compute_kwh": totals["clients_compute_kwh"],
            "compute_kg": compute_kg,
            "server_kwh": totals["server_kwh"],
            "server_kg": totals["server_kg"],
            "overhead_kwh": overhead_kwh,
            "overhead_kg": overhead_kg,
            "communication_kwh": totals["comm_kwh"],
            "communication_kg": totals["comm_kg"],
            # The FL view (Qiu et al.): the clients' compute at their own grids plus the
            # communication; what carbon-aware client selection can change in a simulation.
            "client_grid_kg": math.fsum(
                t["compute_kg_client_grid"] + t["comm_kg"] for t in totals["by_region"].values()
            ),
            "country": self.ledger.host_region,
            "intensity_g_per_kwh": host_g,
            "intensity_source": (
                "CodeCarbon global_energy_mix.json "
                f"({intensity_data_year(self.ledger.host_region) or 'year n/a'})"
            ),
            "power_model": (
                f"CodeCarbon {power.cpu_mode}: CPU {power.cpu_w_max:g} W at full load over "
                f"{power.threads} threads ({power.cpu_source}), RAM {power.ram_w_static:g} W, "
                f"PUE {power.pue:g}, tracking mode {power.tracking_mode}"
            ),
            "estimated": power.cpu_mode != "intel_rapl",
            "network_kwh_per_gb": dict(self.ledger.network.kwh_per_gb),
            "regions": {
                region: {
                    "clients": t["clients"],
                    "intensity_g_per_kwh": t["intensity_g_per_kwh"],
                    "bytes_down": t["bytes_down"],
                    "bytes_up": t["bytes_up"],
                    "compute_kwh": t["compute_kwh"],
                    "compute_kg": t["compute_kg"],
                    "compute_kg_client_grid": t["compute_kg_client_grid"],
                    "communication_kwh": t["comm_kwh"],
                    "communication_kg": t["comm_kg"],
                    "emissions_kg": t["compute_kg"] + t["comm_kg"],
                }
                for region, t in totals["by_region"].items()
            },
            "whole_run": run is not None,
        }
