"""What CodeCarbon measured: one reading per round, per gap between rounds, and for the run.

Kept apart from :mod:`fedlab.trackers.carbon.host` so that the ledger, which only reads
these values, does not depend on CodeCarbon's tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedlab.trackers.carbon.attribution import J_PER_KWH


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
        return self.ram_kwh * J_PER_KWH / self.duration_s if self.duration_s > 0 else None

    def intensity_g_per_kwh(self) -> float | None:
        """The intensity CodeCarbon applied (emissions / energy), None if no energy."""
        return self.emissions_kg * 1000.0 / self.energy_kwh if self.energy_kwh > 0 else None


@dataclass
class RoundMeasurement:
    """Filled in when a :meth:`~fedlab.trackers.carbon.host.HostTracker.round` block exits."""

    name: str
    reading: EnergyReading | None = None


@dataclass(frozen=True)
class RunEnergy:
    """What :meth:`~fedlab.trackers.carbon.host.HostTracker.stop` returns: the whole run and
    its split."""

    total: EnergyReading
    rounds: tuple[EnergyReading, ...]
    outside_rounds: EnergyReading
    """Set-up, between-round and tear-down time (e.g. Ray start-up): total - rounds."""
