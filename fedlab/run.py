"""One run end to end: validate, prepare data, simulate (or deploy), record."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from logging import getLogger
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedlab.config.experiment import Experiment
from fedlab.config.schema import ConfigError
from fedlab.console import line
from fedlab.fl.client_app import ClientSpec
from fedlab.record.lifecycle import RunFailed, claim, supervise
from fedlab.record.run_dir import CLIENT_COLUMNS, ROUND_COLUMNS, RunRecord, existing_status
from fedlab.trackers.base import RunContext
from fedlab.trackers.registry import Trackers, columns, described, tracker_specs

log = getLogger("fedlab")

__all__ = ["RunFailed", "resume_experiment", "run_experiment", "simulation_engine"]

# Runs the federation once the record is open: (exp, fed, record, trackers, saved checkpoint).
# The default simulates; fedlab.engines.deployment passes one that runs on a Flower Grid.
Engine = Callable[[Experiment, Any, RunRecord, Trackers, Any], None]


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {pkg: version(pkg) for pkg in ("fedlab", "flwr", "torch", "numpy", "hydra-core")}


def open_record(exp: Experiment, run_dir: Path) -> RunRecord:
    """A record whose columns are the base ones plus every configured tracker's."""
    specs = tracker_specs(exp.cfg.trackers)
    return RunRecord(
        run_dir, columns(ROUND_COLUMNS, specs, "round"), columns(CLIENT_COLUMNS, specs, "client")
    )


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
    from fedlab.data.partition import plot_label_distribution
    from fedlab.fl.model import build_model

    if raw.get("resume"):
        return resume_experiment(Path(raw.resume), engine)
    exp = Experiment.from_config(raw)
    config_yaml = OmegaConf.to_yaml(raw, resolve=True)
    finished = claim(run_dir, config_yaml)
    if finished is not None:
        log.info("fedlab: skipped: %s already holds this run, completed", run_dir)
        return finished
    fed, warnings = exp.prepare()
    try:
        build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
    except Exception as err:  # the model's constructor is the check of its settings
        cause = err.__cause__ or err  # Hydra wraps it in an InstantiationException
        raise ConfigError("model", str(cause).strip().splitlines()[0]) from None

    record = open_record(exp, run_dir)
    specs = tracker_specs(exp.cfg.trackers)
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
            "communication": {"bytes_down": 0, "bytes_up": 0},
            # Every configured tracker's section (filled in after every round; what an
            # inactive tracker records, such as null, until the trackers are built) and the
            # class of each, so reports can find them again.
            **{s.name: s.cls.inactive_summary(exp) for s in specs},
            "trackers": described(specs),
            "versions": _versions(),
        },
    )
    plot_label_distribution(fed, run_dir / "partition.png")
    for warning in warnings:
        log.warning("fedlab: warning: %s", warning)
    what = (
        f"{exp.describe()['model']} on {fed.name}, {exp.cfg.num_clients} clients "
        f"({exp.scheduler().sample_size()} per round), {exp.cfg.num_rounds} rounds -> {run_dir}"
    )
    log.info("fedlab: %s", line([exp.cfg.strategy.name, what]))
    return _execute(exp, fed, record, run_dir, engine=engine)


def resume_experiment(run_dir: Path, engine: Engine | None = None) -> dict:
    """Continue the run recorded in ``run_dir`` from its last checkpoint.

    The run's own ``config.yaml`` is used; the data are prepared again (deterministically),
    the record's rows after the checkpoint's round are dropped (that round is redone), and
    the run continues to ``num_rounds`` with every piece of state restored.
    """
    from fedlab.config.schema import FedlabConfig
    from fedlab.record import checkpoint

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
    fresh = open_record(exp, run_dir)
    record = RunRecord.resume(
        run_dir, saved.server_round, fresh.round_columns, fresh.client_columns
    )
    log.info(
        "fedlab: resuming %s after round %d of %d", run_dir, saved.server_round, exp.cfg.num_rounds
    )
    return _execute(exp, fed, record, run_dir, saved, engine)


def simulation_engine(
    exp: Experiment, fed: Any, record: RunRecord, trackers: Trackers, saved: Any
) -> None:
    """Run the federation on Flower's simulation engine, clients reading a temp copy."""
    from fedlab.engines.simulation import simulate
    from fedlab.fl.client_app import build_client_app
    from fedlab.fl.server_app import build_server_app

    with tempfile.TemporaryDirectory(prefix="fedlab-") as tmp:
        data_path = Path(tmp) / "federation.npz"
        fed.save(data_path)
        simulate(
            build_server_app(exp, fed, record, trackers, saved),
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
    """Run ``engine`` (from the start or from checkpoint ``saved``) and close the record.

    The trackers are built here, before the engine starts, so that what they measure (the
    host's energy) covers the whole run, start-up included.
    """
    from fedlab.reports.curves import plot_curves
    from fedlab.reports.model_card import write_model_card

    trackers = Trackers.build(RunContext(exp, fed, run_dir))

    def body() -> None:
        (engine or simulation_engine)(exp, fed, record, trackers, saved)
        done = record.results["rounds_completed"]
        if done != exp.cfg.num_rounds:
            raise RunFailed(f"simulation ended after {done} rounds")

    def closing(status: str) -> dict[str, Any]:
        fields = trackers.close()
        if record.rounds:
            plot_curves(record.dir)
        return fields

    try:
        supervise(record, body, closing, finished=lambda: write_model_card(run_dir))
    except KeyboardInterrupt:
        log.warning("fedlab: interrupted; continue with: fedlab-run resume=%s", run_dir)
        raise
    except RunFailed as err:
        cause = err.__cause__
        if isinstance(cause, RunFailed):  # raised by body itself: one message, not two
            raise cause from None
        raise
    results: dict[str, Any] = record.results
    parts = [
        f"completed {results['rounds_completed']} rounds in {results['duration_s']:.1f} s",
        f"accuracy {results['accuracy']:.4f}",
        f"loss {results['loss']:.4f}",
        *(text for t in trackers if (text := t.final_fragment(results[t.name]))),
        f"record: {run_dir}",
    ]
    log.info("fedlab: %s", line(parts))
    for tracker in trackers:
        if note := tracker.final_note(results[tracker.name]):
            log.info("fedlab: %s", note)
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
