"""Splitting the host's measured energy among the parts that caused it (clients, server).

A simulation runs every client on one host, so only the host's total is measured. Each part is
charged its CPU-seconds at CodeCarbon's own power model (:class:`PowerModel`); what the parts do
not explain is the idle/overhead residual, and parts + residual == the measured total exactly
(docs/carbon.md, "Attribution").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Joules in a kWh.
J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class PowerModel:
    """CodeCarbon's power model as it configured itself for this host.

    Attribution charges every CPU-second the same energy::

        kWh per CPU-second = (cpu_w_per_thread * pue + ram_w / threads) / 3.6e6

    ``cpu_w_per_thread`` is CodeCarbon's CPU power at full load divided by the logical
    CPUs it counts: ``force_cpu_power`` if given, else its TDP-table value, else 4 W per
    thread for an unknown model. ``ram_w`` already includes the PUE when it comes from a
    measured round (``EnergyReading.ram_w``); otherwise the static estimate
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
        return (self.cpu_w_per_thread * self.pue + ram / self.threads) / J_PER_KWH

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
