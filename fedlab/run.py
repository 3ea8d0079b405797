"""One run end to end: validate, prepare data, simulate (or deploy), record."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from logging import getLogger
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedlab.fl.client_app import ClientSpec
from fedlab.config.schema import ConfigError
from fedlab.config.experiment import Experiment
from fedlab.record.run_dir import RESULTS, RunRecord, existing_status

log = getLogger("fedlab")


class RunFailed(RuntimeError):
    """The run started but did not complete; its record says ``failed`` and why."""


# Runs the federation once the record is open: (exp, fed, record, carbon, saved checkpoint).
# The default simulates on Ray; fedlab.engines.deployment passes one that runs on a Flower Grid.
Engine = Callable[[Experiment, Any, RunRecord, Any, Any], None]


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("fedlab", "flwr", "torch", "numpy", "hydra-core")}


def error_line(err: BaseException) -> str:
    """An exception as one line for the record and the console (type and last line)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"[:500]


def _reuse(run_dir: Path, config_yaml: str) -> dict | None:
    """What to do with a run directory that already holds a record.

    The same configuration, completed: return its results (a rerun sweep skips it). The same
    configuration, not completed (failed, interrupted, killed): move that attempt aside into
    ``attempts/<n>/`` and run again. Another configuration: refuse, since a record is never
    overwritten.
    """
    status = existing_status(run_dir)
    if status is None:
        return None
    config = run_dir / "config.yaml"
    if not config.exists() or config.read_text() != config_yaml:
        raise ConfigError(
            "hydra.run.dir",
            f"{run_dir} already holds another run's record (status: {status}); "
            "choose a new directory",
        )
    if status == "completed":
        return json.loads((run_dir / RESULTS).read_text())
    attempts = run_dir / "attempts"
    attempt = attempts / str(len(list(attempts.glob("*"))) + 1 if attempts.exists() else 1)
    attempt.mkdir(parents=True)
    for path in run_dir.iterdir():
        if path.name != "attempts":
            path.rename(attempt / path.name)
    log.warning(
        "fedlab: %s held an unfinished attempt (status: %s); moved to %s", run_dir, status, attempt
    )
    return None


def run_experiment(
    raw: DictConfig,
    run_dir: Path,
    overrides: list[str] | None = None,
    engine: Engine | None = None,
) -> dict:
    """Run the experiment ``raw`` describes and write its record into ``run_dir``.

    ``engine`` runs the federation (default: :func:`simulation_engine`).

    Raises :class:`ConfigError` before writing anything if the config or the directory is
    unusable, :class:`RunFailed` (record status ``failed``) if the run breaks, and lets
    ``KeyboardInterrupt`` through after marking the record ``interrupted``.
    """
    from fedlab.fl.model import build_model
    from fedlab.data.partition import plot_label_distribution

    if raw.get("resume"):
        return resume_experiment(Path(raw.resume), engine)
    exp = Experiment.from_config(raw)
    config_yaml = OmegaConf.to_yaml(raw, resolve=True)
    finished = _reuse(run_dir, config_yaml)
    if finished is not None:
        log.info("fedlab: skipped: %s already holds this run, completed", run_dir)
        return finished
    fed, privacy_warnings = exp.prepare()
    try:
        build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
    except Exception as err:  # the model's constructor is the check of its settings
        cause = err.__cause__ or err  # Hydra wraps it in an InstantiationException
        raise ConfigError("model", str(cause).strip().splitlines()[0]) from None

    record = RunRecord(run_dir)
    record.start(
        config_yaml,
        {
            "rounds_completed": 0,
            "num_rounds": exp.cfg.num_rounds,
            "seed": exp.cfg.seed,
            "duration_s": None,
            "accuracy": None,
            "loss": None,
            "federated_accuracy": None,
            "federated_loss": None,
            "experiment": exp.describe(),
            "overrides": list(overrides or []),
            # Filled in after every round; until then, what was asked for.
            "privacy": {
                "mode": exp.cfg.privacy.mode,
                "unit": {"local": "record", "central": "user"}.get(exp.cfg.privacy.mode),
                "epsilon": None,
                "delta": exp.cfg.privacy.delta if exp.cfg.privacy.mode != "none" else None,
                "accountant": None,
            },
            "carbon": {
                "energy_kwh": None,
                "emissions_kg": None,
                "compute_kg": None,
                "communication_kg": None,
                "server_kg": None,
            },
            "communication": {"bytes_down": 0, "bytes_up": 0},
            # Simulated edge devices (devices group): filled in after every round, or null.
            "devices": None,
            "versions": _versions(),
        },
    )
    plot_label_distribution(fed, run_dir / "partition.png")
    for warning in privacy_warnings:
        log.warning("fedlab: warning: %s", warning)
    log.info(
        "fedlab: %s | %s on %s, %d clients (%d per round), %d rounds -> %s",
        exp.cfg.strategy.name,
        exp.describe()["model"],
        fed.name,
        exp.cfg.num_clients,
        exp.scheduler().sample_size(),
        exp.cfg.num_rounds,
        run_dir,
    )
    return _execute(exp, fed, record, run_dir, engine=engine)


def resume_experiment(run_dir: Path, engine: Engine | None = None) -> dict:
    """Continue the run recorded in ``run_dir`` from its last checkpoint.

    The run's own ``config.yaml`` is used; the data are prepared again (deterministically),
    the record's rows after the checkpoint's round are dropped (that round is redone), and
    the run continues to ``num_rounds`` with every piece of state restored.
    """
    from fedlab.record import checkpoint
    from fedlab.config.schema import FedlabConfig

    status = existing_status(run_dir)
    if status is None:
        raise ConfigError("resume", f"{run_dir} holds no run record")
    if status == "completed":
        raise ConfigError("resume", f"{run_dir} holds a completed run; nothing to resume")
    if not (run_dir / checkpoint.FILE).exists():
        raise ConfigError(
            "resume", f"{run_dir} has no checkpoint (it stopped before its first round ended)"
        )
    raw = OmegaConf.merge(
        OmegaConf.structured(FedlabConfig), OmegaConf.load(run_dir / "config.yaml")
    )
    exp = Experiment.from_config(raw)
    fed, _ = exp.prepare()
    saved = checkpoint.load(run_dir)
    record = RunRecord.resume(run_dir, saved.server_round)
    log.info(
        "fedlab: resuming %s after round %d of %d", run_dir, saved.server_round, exp.cfg.num_rounds
    )
    return _execute(exp, fed, record, run_dir, saved, engine)


def simulation_engine(
    exp: Experiment, fed: Any, record: RunRecord, carbon: Any, saved: Any
) -> None:
    """Run the federation on Flower's simulation engine (Ray), clients reading a temp copy."""
    from fedlab.fl.client_app import build_client_app
    from fedlab.fl.server_app import build_server_app
    from fedlab.engines.simulation import simulate

    with tempfile.TemporaryDirectory(prefix="fedlab-") as tmp:
        data_path = Path(tmp) / "federation.npz"
        fed.save(data_path)
        simulate(
            build_server_app(exp, fed, record, carbon, saved),
            build_client_app(_client_spec(exp, data_path)),
            exp.cfg.num_clients,
            exp.cfg.simulation,
        )


def _execute(
    exp: Experiment,
    fed: Any,
    record: RunRecord,
    run_dir: Path,
    saved: Any = None,
    engine: Engine | None = None,
) -> dict:
    """Run ``engine`` (from the start or from checkpoint ``saved``) and close the record."""
    from fedlab.reports.model_card import write_model_card

    carbon = exp.carbon_tracker(fed, run_dir)
    if carbon is not None and saved is not None:
        carbon.load_state_dict(saved.state["carbon"])
    started = time.perf_counter()

    def close(status: str, error: str | None = None) -> None:
        """Finish the record, whatever ended the run: stop the tracker, plot, mark."""
        fields: dict[str, Any] = {"duration_s": round(time.perf_counter() - started, 3)}
        if carbon is not None:
            fields["carbon"] = carbon.summary(carbon.stop())
        if record.rounds:
            record.plot_curves()
        record.finish(status, error=error, **fields)
        write_model_card(run_dir)

    try:
        (engine or simulation_engine)(exp, fed, record, carbon, saved)
    except KeyboardInterrupt:
        close("interrupted")
        log.warning("fedlab: interrupted; continue with: fedlab-run resume=%s", run_dir)
        raise
    except Exception as err:
        close("failed", error_line(err))
        raise RunFailed(error_line(err)) from err
    if record.results["rounds_completed"] != exp.cfg.num_rounds:
        message = f"simulation ended after {record.results['rounds_completed']} rounds"
        close("failed", message)
        raise RunFailed(message)
    close("completed")
    results: dict[str, Any] = record.results
    energy = results["carbon"].get("energy_kwh")
    log.info(
        "fedlab: completed %d rounds in %.1f s | accuracy %.4f | loss %.4f%s | record: %s",
        results["rounds_completed"],
        results["duration_s"],
        results["accuracy"],
        results["loss"],
        ""
        if energy is None
        else f" | {energy:.3g} kWh | {1000 * results['carbon']['emissions_kg']:.3g} gCO2e",
        run_dir,
    )
    if results["privacy"].get("guarantee"):
        log.info("fedlab: privacy: %s", results["privacy"]["guarantee"])
    return results


def _client_spec(exp: Experiment, data_path: Path) -> ClientSpec:
    """What every client process needs: data location, model, seed, client-side clipping."""
    privacy = exp.cfg.privacy
    client_clips = privacy.mode == "central" and privacy.clip_at == "client"
    return ClientSpec(
        str(data_path),
        dict(exp.cfg.model),
        exp.cfg.seed,
        exp.cfg.simulation.torch_threads,
        privacy.clipping if client_clips else None,
    )
