"""The host's energy, measured by CodeCarbon: one OfflineEmissionsTracker per run, one task per
round, and the rule that says whether that energy was measured or estimated.

CodeCarbon is only ever used offline here: output goes to CSV and every setting that could make
it send data or query a web service is forced off (docs/carbon.md, "Host measurement").
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fedlab.trackers.carbon.attribution import PowerModel
from fedlab.trackers.carbon.intensity import carbon_intensity, normalise_code
from fedlab.trackers.carbon.readings import EnergyReading, RoundMeasurement, RunEnergy

# -- measured or estimated --------------------------------------------------------------

#: CodeCarbon's CPU energy sources that read a hardware energy counter (``PowerModel.cpu_mode``):
#: RAPL on Linux, RAPL through the Windows Energy Meter Interface, Intel Power Gadget, Apple's
#: powermetrics, a Raspberry Pi's PMIC. Everything else (``cpu_load``, ``constant``, no CPU
#: found, a mode a later CodeCarbon adds) is a model estimate: a measurement must be earned.
HARDWARE_COUNTERS = frozenset(
    {"intel_rapl", "windows_emi", "intel_power_gadget", "powermetrics", "raspberry_pmic"}
)

#: CodeCarbon CPU modes that estimate power from a TDP figure (scaled by load, or constant).
_LOAD_MODELS = ("cpu_load", "constant")


def host_energy_measured(power: PowerModel) -> bool:
    """Whether CodeCarbon read the host's CPU energy from a hardware counter (RAPL,
    powermetrics, Intel Power Gadget, the Windows EMI, a Raspberry Pi's PMIC) rather than
    estimating it from load and a TDP figure.

    The one rule behind the record's ``carbon.estimated`` (its negation) and so behind what the
    model card says. It looks at the CPU because that is what a counter can measure: RAM is a
    per-DIMM estimate in CodeCarbon either way (docs/carbon.md).
    """
    return power.cpu_mode in HARDWARE_COUNTERS


#: CodeCarbon's chip classes that stand in for a CPU object, and the CPU mode they amount to.
_CHIP_MODES = {"AppleSiliconChip": "powermetrics", "Raspberry": "raspberry_pmic"}


def _cpu_and_ram(hardware: list[Any]) -> tuple[Any, Any]:
    """CodeCarbon's CPU and RAM objects (None where it set up none). On Apple silicon and
    Raspberry Pis it sets up chip objects with a ``chip_part`` instead of ``CPU``/``RAM``."""
    cpu = ram = None
    for h in hardware:
        kind, part = type(h).__name__, getattr(h, "chip_part", None)
        if cpu is None and (
            kind == "CPU" or (kind in _CHIP_MODES and part in ("CPU", "Processor"))
        ):
            cpu = h
        if ram is None and (kind == "RAM" or part == "RAM"):
            ram = h
    return cpu, ram


def read_power_model(tracker: Any) -> PowerModel:
    """The CPU/RAM power an OfflineEmissionsTracker configured, from its hardware objects.

    CodeCarbon 3.3 exposes no public accessor, so this reads ``tracker._hardware`` (its
    RAM/CPU/GPU objects) and the CPU's ``_tdp``/``_mode``/``_cpu_count``. If a CodeCarbon
    upgrade renames them this raises instead of guessing; the tests pin the behaviour.
    """
    cpu, ram = _cpu_and_ram(list(tracker._hardware))
    if ram is None:
        raise RuntimeError("CodeCarbon set up no RAM model; cannot attribute RAM energy")
    mode = "none" if cpu is None else _CHIP_MODES.get(type(cpu).__name__) or str(cpu._mode)
    ram_w = float(ram.total_power().W)
    threads = int(getattr(cpu, "_cpu_count", 0) or tracker._conf.get("cpu_count") or 1)
    if cpu is not None and mode in _LOAD_MODELS:
        cpu_w = float(cpu._tdp)
        if tracker._force_cpu_power is not None:
            source = f"force_cpu_power={tracker._force_cpu_power:g} W"
        elif getattr(cpu, "_is_generic_tdp", False):
            source = f"CodeCarbon generic constant {cpu_w:g} W"
        else:
            source = f"CodeCarbon TDP estimate {cpu_w:g} W for {cpu.get_model()!r}"
    else:
        # No load model to read (a counter measures the CPU, or CodeCarbon found no CPU):
        # charge CPU-seconds at what CodeCarbon's own fallback would have used, the TDP
        # table value times the sockets, or its generic constant.
        from codecarbon.core import cpu as cc_cpu
        from codecarbon.core.hardware_cache import get_cached_tdp

        how = f"{mode} measures CPU energy" if mode in HARDWARE_COUNTERS else f"CPU {mode}"
        tdp = get_cached_tdp(cc_cpu)
        sockets = int(tracker._conf.get("cpu_physical_count") or 1)
        if tdp.tdp is not None:
            cpu_w = float(tdp.tdp) * sockets
            source = f"{how}; rate from TDP table {cpu_w:g} W"
        else:
            from codecarbon.external.hardware import POWER_CONSTANT

            cpu_w = float(POWER_CONSTANT)
            source = f"{how}; rate from generic {cpu_w:g} W"
    return PowerModel(
        cpu_mode=mode,
        cpu_w_max=cpu_w,
        threads=max(threads, 1),
        ram_w_static=ram_w,
        pue=float(tracker._pue),
        tracking_mode=str(tracker._tracking_mode),
        gpu_count=int(tracker._conf.get("gpu_count") or 0),
        cpu_source=source,
    )


# -- CodeCarbon's logger ----------------------------------------------------------------

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


# -- the tracker ---------------------------------------------------------------------------


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
        self.country_iso_code = normalise_code(country_iso_code)
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
            self.power_model = read_power_model(self._tracker)
        except Exception:
            self._release_log()
            raise
        self._rounds: list[EnergyReading] = []
        self._outside: list[EnergyReading] = []
        self._in_round = False
        self._result: RunEnergy | None = None
        self._gap_index = 0
        self._start_gap()

    @property
    def intensity_g_per_kwh(self) -> float:
        """The intensity CodeCarbon applies to the host (its country value, no region)."""
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
