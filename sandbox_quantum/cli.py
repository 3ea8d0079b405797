"""``fedlab-quantum``: sandbox experiments run from Hydra configs and recorded like fedlab runs.

``sandbox_quantum/conf/experiment/<name>.yaml`` names one of the experiment dataclasses of
:mod:`sandbox_quantum.experiments` with ``_target_`` and sets its parameters; the dataclass
checks them (so a bad value is refused before anything is written) and its ``run`` calls the
public ``sandbox_quantum`` API. :func:`run_quantum` measures the run with fedlab's CodeCarbon
host tracker and writes the record into Hydra's run directory through fedlab's record
lifecycle (:mod:`fedlab.record.lifecycle`):

    config.yaml   the resolved configuration
    results.json  schema ``fedlab.quantum/1``: status, timing, the typed result with its exact
                  answer and gap, transpiled resources per coupling map, energy and emissions
    <figure>.png  a histogram, spectrum or bar chart, depending on the experiment
    run.log, emissions.csv, emissions_rounds_*.csv, codecarbon.log

A directory holding another run's record is refused; the same configuration, completed, is
skipped (its results returned); an unfinished attempt of it is moved aside and run again.
Exit codes follow ``fedlab-run``: 2 and one line for invalid input, 1 for a run that failed
(its record says why), 130 for Ctrl-C.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from matplotlib.figure import Figure
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedlab.cli import fail, release_stderr, run_hydra_app
from fedlab.config.experiment import build_spec
from fedlab.config.schema import CarbonConfig, ConfigError
from fedlab.record.lifecycle import RunFailed, claim, supervise
from fedlab.record.run_dir import RunRecord, save_figure
from fedlab.trackers.carbon.host import HostTracker
from fedlab.trackers.carbon.intensity import carbon_intensity

from .experiments import Outcome, QuantumExperiment, experiment_name

PROG = "fedlab-quantum"
SCHEMA = "fedlab.quantum/1"
# CarbonConfig keys about simulated clients and rounds: one host runs one experiment here.
UNUSED_CARBON = (
    "regions", "links", "network", "intensity_profile", "intensity", "traces", "forecast",
    "forecast_error", "forecast_files",
)

log = logging.getLogger("fedlab.quantum")


# -- configuration ------------------------------------------------------------------------


@dataclass
class QuantumConfig:
    """The whole config; ``experiment`` is checked by the dataclass its ``_target_`` names."""

    experiment: Any = MISSING
    carbon: CarbonConfig = field(default_factory=CarbonConfig)


def register_configs() -> None:
    """Register the schema ``sandbox_quantum/conf/config.yaml`` extends (``quantum_schema``)."""
    ConfigStore.instance().store(name="quantum_schema", node=QuantumConfig)


def check_carbon(carbon: CarbonConfig) -> None:
    """Refuse a country CodeCarbon does not know and the keys a single host has no use for."""
    try:
        carbon_intensity(carbon.country)  # CodeCarbon would silently use the world average
    except ValueError as err:
        raise ConfigError("carbon.country", str(err).splitlines()[0]) from None
    defaults = CarbonConfig()
    for key in UNUSED_CARBON:
        if getattr(carbon, key) != getattr(defaults, key):
            raise ConfigError(f"carbon.{key}", f"not used by {PROG} (one host)")


def load_experiment(raw: DictConfig) -> tuple[QuantumExperiment, CarbonConfig]:
    """Check the composed config; raises :class:`ConfigError` naming the first bad key."""
    try:
        cfg = OmegaConf.to_object(raw)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(key, str(err).splitlines()[0]) from None
    assert isinstance(cfg, QuantumConfig)
    check_carbon(cfg.carbon)
    return build_spec(cfg.experiment, "experiment", QuantumExperiment), cfg.carbon


# -- the record ----------------------------------------------------------------------------


def carbon_section(tracker: HostTracker | None) -> dict[str, Any]:
    """``results.json["carbon"]``: stops the tracker and reads the whole run's energy."""
    if tracker is None:
        return {"enabled": False, "energy_kwh": None, "emissions_kg": None,
                "country": None, "intensity_g_per_kwh": None}  # fmt: skip
    total = tracker.stop().total
    return {
        "enabled": True,
        "energy_kwh": total.energy_kwh,
        "emissions_kg": total.emissions_kg,
        "country": tracker.country_iso_code,
        "intensity_g_per_kwh": tracker.intensity_g_per_kwh,
        "power_model": tracker.power_model.to_dict(),
    }


def save_plots(run_dir: Path, outcome: Outcome) -> None:
    """Draw each of the outcome's figures and write it atomically as a PNG into ``run_dir``."""
    for name, draw in outcome.plots.items():
        fig = Figure(figsize=(8, 4.2))
        draw(fig)
        save_figure(fig, run_dir / name)


def run_quantum(raw: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run the experiment ``raw`` describes and write its record into ``run_dir``.

    Raises :class:`ConfigError` before writing anything if the config or the directory is
    unusable, :class:`RunFailed` (record status ``failed``) if the experiment raises, and lets
    ``KeyboardInterrupt`` through after marking the record ``interrupted``. Returns the
    record's results; those already there if ``run_dir`` holds this configuration, completed.
    """
    experiment, carbon = load_experiment(raw)
    name = experiment_name(experiment)
    config_yaml = OmegaConf.to_yaml(raw, resolve=True)
    finished = claim(run_dir, config_yaml)
    if finished is not None:
        log.info("%s: skipped: %s already holds this run, completed", PROG, run_dir)
        return finished
    record = RunRecord(run_dir)
    record.start(
        config_yaml,
        {"schema": SCHEMA, "duration_s": None, "experiment": name,
         "result": None, "units": None, "resources": None, "carbon": None},
    )  # fmt: skip
    log.info("%s: %s -> %s", PROG, name, run_dir)
    tracker: HostTracker | None = None
    fields: dict[str, Any] = {}  # the record's final sections, as far as the run got
    quantities: dict[str, tuple[str, str]] = {}  # how the console names the result's numbers

    def body() -> None:
        nonlocal tracker
        if carbon.enabled:
            tracker = HostTracker(
                run_dir,
                carbon.country,
                measure_power_secs=carbon.measure_power_secs,
                tracking_mode=carbon.tracking_mode,
                force_cpu_power=carbon.force_cpu_power,
                force_ram_power=carbon.force_ram_power,
                pue=carbon.pue,
                project_name=PROG,
            )
        with tracker.round(name) if tracker else nullcontext():
            outcome = experiment.run()
        fields["carbon"] = carbon_section(tracker)  # the experiment's energy, not the plots'
        save_plots(run_dir, outcome)
        fields.update(
            result=outcome.result_record(),
            units=outcome.units_record(),
            resources=outcome.resources_record(),
        )
        quantities.update(outcome.quantities)

    def closing(status: str) -> dict[str, Any]:
        if "carbon" not in fields:  # the run ended inside the experiment
            fields["carbon"] = carbon_section(tracker)
        return fields

    supervise(record, body, closing)
    results = record.results
    couplings = results["resources"]["couplings"]
    summary = [
        *_headline(results["result"], quantities),
        "two-qubit gates " + ", ".join(f"{k} {v['two_qubit_gates']}" for k, v in couplings.items()),
        "carbon off" if tracker is None else f"{results['carbon']['energy_kwh']:.3g} kWh",
    ]
    log.info(
        "%s: completed in %.1f s | %s | record: %s",
        PROG,
        results["duration_s"],
        " | ".join(summary),
        run_dir,
    )
    return results


def _headline(
    data: Mapping[str, Any], quantities: Mapping[str, tuple[str, str]], prefix: str = ""
) -> Iterator[str]:
    """The float entries of a result record (nested ones as ``outer.inner``), for the log,
    named and with their units where the experiment gives them (``Outcome.quantities``)."""
    for key, value in data.items():
        if isinstance(value, float):
            name, unit = quantities.get(f"{prefix}{key}", (f"{prefix}{key}", ""))
            yield f"{name} {value:.6g}" + (f" {unit}" if unit else "")
        elif isinstance(value, Mapping):
            yield from _headline(value, quantities, f"{prefix}{key}.")


# -- the console script --------------------------------------------------------------------


@hydra.main(version_base="1.3", config_path="pkg://sandbox_quantum.conf", config_name="config")
def _run(cfg: DictConfig) -> None:
    release_stderr()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_quantum(cfg, run_dir)
    except ConfigError as err:
        fail(str(err), 2, PROG)
    except RunFailed as err:
        fail(f"run failed: {err} (record: {run_dir})", 1, PROG)
    except KeyboardInterrupt:
        fail(f"interrupted; the record in {run_dir} says how far it got", 130, PROG)


def main() -> None:
    """Console-script entry point (``fedlab-quantum``)."""
    register_configs()
    run_hydra_app(_run, PROG)


if __name__ == "__main__":
    main()
