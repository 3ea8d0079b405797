"""One run end to end: validate, prepare data, simulate (or deploy), record."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from logging import getLogger
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from fedlab.config.experiment import Experiment
from fedlab.config.schema import ConfigError
from fedlab.console import line
from fedlab.fl.client_app import ClientSpec
from fedlab.fl.client_state import STATE_DIR
from fedlab.record.lifecycle import RunFailed, claim, supervise
from fedlab.record.run_dir import CLIENT_COLUMNS, ROUND_COLUMNS, RunRecord, existing_status
from fedlab.trackers.base import RunContext
from fedlab.trackers.registry import Trackers, columns, described, tracker_specs

if TYPE_CHECKING:
    from fedlab.background import Background

log = getLogger("fedlab")

__all__ = ["RunFailed", "resume_experiment", "run_experiment", "simulation_engine"]

# Runs the federation once the record is open: (exp, fed, record, trackers, saved checkpoint).
# The default simulates; fedlab.engines.deployment passes one that runs on a Flower Grid.
Engine = Callable[[Experiment, Any, RunRecord, Trackers, Any], None]


def _versions() -> dict[str, Any]:
    """What produced the run: package versions, the fedlab checkout and the host.

    ``git_commit`` / ``git_dirty`` are those of the git checkout fedlab was imported from
    (an editable install); both are null when fedlab was installed from a wheel or sdist, where
    the version is all there is. ``cpu`` is the model name the kernel reports.
    """
    import os
    import platform
    from importlib.metadata import version

    versions: dict[str, Any] = {
        pkg: version(pkg) for pkg in ("fedlab", "flwr", "torch", "numpy", "hydra-core")
    }
    return versions | _git_state() | {
        "python": platform.python_version(),
        "os": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
    }


def _git_state() -> dict[str, Any]:
    """The commit and dirty flag of the checkout holding this fedlab (null outside one), and
    with uncommitted changes to tracked files the sha256 of ``git diff HEAD --binary``: the
    lineage's evidence of which code ran (untracked files are not in it, as not in the flag).
    """
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[1]
    state: dict[str, Any] = {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    if not (root / ".git").exists():
        return state
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout
        diff = subprocess.run(
            ["git", "-C", str(root), "diff", "HEAD", "--binary"],
            capture_output=True, check=True, timeout=30,
        ).stdout if changes.strip() else None
    except (OSError, subprocess.SubprocessError):  # no git binary, or not a repository
        return state
    return {
        "git_commit": commit,
        "git_dirty": bool(changes.strip()),
        "git_diff_sha256": None if diff is None else hashlib.sha256(diff).hexdigest(),
    }


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    import platform

    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith(("model name", "Model")):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def recommended_settings(raw: DictConfig) -> dict[str, Any]:
    """The dataset's recommended settings (``recommended:``, from ``conf/recommended/``) and
    whether each applies: a value the user set on the command line or a preset overrides the
    recommendation, and the record says so (``applied: false`` with the value used)."""
    node = OmegaConf.select(raw, "recommended")
    wanted = OmegaConf.to_container(node, resolve=True) if node else {}
    assert isinstance(wanted, dict)
    source = wanted.pop("source", None)
    out: dict[str, Any] = {"source": source, "settings": {}}
    for group, values in wanted.items():
        for key, value in (values or {}).items():
            path = key if group == "_global_" else f"{group}.{key}"  # top-level keys
            used = OmegaConf.select(raw, path)
            out["settings"][path] = {
                "recommended": value, "used": used, "applied": used == value
            }
    return out


def _import_ahead(exp: Experiment, loading: Background, trains_here: bool) -> None:
    """While a child prepares the data (``loading``), import what this process needs later
    anyway, so that the two overlap (issue #22): ``torch._dynamo`` where clients train in this
    process or in pool workers forked from it (every torch optimizer imports it on first use,
    ~1 s; a fork inherits it); then, only until the data arrive, so that the first round
    never waits for what only the close needs, matplotlib's figure and Agg canvas (the
    pictures) and what the trackers will import later
    (:meth:`fedlab.trackers.base.Tracker.imports`), except those closed in a child of their
    own, which imports theirs (``closes_apart``)."""
    import importlib

    from fedlab.background import can_fork

    if trains_here:
        importlib.import_module("torch._dynamo")
    later = ["matplotlib.figure", "matplotlib.backends.backend_agg"]
    for spec in tracker_specs(exp.cfg.trackers):
        if not (spec.cls.closes_apart and can_fork()):
            later.extend(spec.cls.imports(exp))
    for module in later:
        if loading.ready():
            return
        importlib.import_module(module)


def open_record(exp: Experiment, run_dir: Path) -> RunRecord:
    """A record whose columns are the base ones plus every configured tracker's."""
    specs = tracker_specs(exp.cfg.trackers)
    return RunRecord(
        run_dir,
        columns(ROUND_COLUMNS, specs, "round", exp),
        columns(CLIENT_COLUMNS, specs, "client", exp),
    )


def run_experiment(
    raw: DictConfig,
    run_dir: Path,
    overrides: list[str] | None = None,
    engine: Engine | None = None,
    loading: Background | None = None,
) -> dict:
    """Run the experiment ``raw`` describes and write its record into ``run_dir``.

    ``engine`` runs the federation (default: :func:`simulation_engine`). ``loading`` is a
    child forked to prepare the data before the experiment was validated (``fedlab-run``'s,
    :func:`fedlab.cli._start_loading`): it is given the work, or ended if not needed.

    Raises :class:`ConfigError` before writing anything if the config or the directory is
    unusable, :class:`RunFailed` (record status ``failed``) if the run breaks, and lets
    ``KeyboardInterrupt`` through after marking the record ``interrupted``.
    """
    from fedlab.fl.model import build_model
    from fedlab.fl.strategy import check_model_fits

    if raw.get("resume"):
        if loading is not None:
            loading.cancel()
        extend = any(o.startswith("num_rounds=") for o in overrides or [])
        return resume_experiment(Path(raw.resume), engine, raw.num_rounds if extend else None)
    exp = Experiment.from_config(raw)
    config_yaml = OmegaConf.to_yaml(raw, resolve=True)
    finished = claim(run_dir, config_yaml)
    if finished is not None:
        if loading is not None:
            loading.cancel()
        log.info("fedlab: skipped: %s already holds this run, completed", run_dir)
        return finished
    from fedlab.engines.auto import announce, client_work, decide

    loading = exp.start_loading(loading)  # the data, prepared in a child meanwhile
    try:
        if loading is not None:
            here = decide(exp.cfg.simulation, exp.cfg.num_clients).trains_here
            _import_ahead(exp, loading, trains_here=here)
        fed, warnings = exp.prepare(loading)
    finally:
        if loading is not None:
            loading.cancel()
    try:
        model = build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
    except Exception as err:  # the model's constructor is the check of its settings
        cause = err.__cause__ or err  # Hydra wraps it in an InstantiationException
        raise ConfigError("model", str(cause).strip().splitlines()[0]) from None
    check_model_fits(exp.cfg, model)
    choice = None
    if engine is None:  # the first line: which simulation engine runs, and why
        work = partial(client_work, exp, fed, model)
        choice = announce(exp.cfg.simulation, exp.cfg.num_clients, work)

    record = open_record(exp, run_dir)
    specs = tracker_specs(exp.cfg.trackers)
    record.start(
        config_yaml,
        {
            "rounds_completed": 0,
            "num_rounds": exp.cfg.num_rounds,
            "seed": exp.cfg.seed,
            "duration_s": None,
            "startup_s": None,
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
            "warnings": list(warnings),
            "recommended": recommended_settings(raw),
        },
    )
    drawing = _draw_partition(fed, run_dir / "partition.png")
    for warning in warnings:
        log.warning("fedlab: warning: %s", warning)
    what = (
        f"{exp.describe()['model']} on {fed.name}, {exp.cfg.num_clients} clients "
        f"({exp.scheduler().sample_size()} per round), {exp.cfg.num_rounds} rounds -> {run_dir}"
    )
    log.info("fedlab: %s", line([exp.cfg.strategy.name, what]))
    spare = choice is not None and choice.spare_cores > 0
    return _execute(exp, fed, record, run_dir, engine=engine, drawing=drawing, closer_ahead=spare)


def _draw_partition(fed: Any, path: Path) -> Background | None:
    """Draw ``partition.png`` in a forked child while the run starts (:mod:`fedlab.background`:
    up to 0.6 s for 100 clients that the first round need not wait for), or here where this
    platform does not fork (None)."""
    from fedlab.background import Background, can_fork
    from fedlab.data.partition import plot_label_distribution

    if not can_fork():
        plot_label_distribution(fed, path)
        return None
    return Background(partial(plot_label_distribution, fed, path), "partition-picture", idle=True)


def _draw_figures(run_dir: Path) -> None:
    """``curves.png`` and every tracker's own pictures, from the record as of its last round
    (matplotlib is imported here, at the close, not before the first round)."""
    from fedlab.reports.curves import plot_curves, plot_run_figures

    plot_curves(run_dir)
    plot_run_figures(run_dir)


def resume_experiment(
    run_dir: Path, engine: Engine | None = None, num_rounds: int | None = None
) -> dict:
    """Continue the run recorded in ``run_dir`` from its last checkpoint.

    The run's own ``config.yaml`` is used; the data are prepared again (deterministically),
    the record's rows after the checkpoint's round are dropped (that round is redone), and
    the run continues to ``num_rounds`` with every piece of state restored. A larger
    ``num_rounds`` extends the run, completed or not (:func:`_extend`).
    """
    from fedlab.config.schema import FedlabConfig
    from fedlab.record import checkpoint
    from fedlab.record.lineage import check_resumable

    status = existing_status(run_dir)
    if status is None:
        raise ConfigError("resume", f"{run_dir} holds no run record")
    raw = OmegaConf.merge(
        OmegaConf.structured(FedlabConfig), OmegaConf.load(run_dir / "config.yaml")
    )
    extending = num_rounds is not None and num_rounds != raw.num_rounds
    if status == "completed" and not extending:
        raise ConfigError(
            "resume",
            f"{run_dir} holds a completed run of {raw.num_rounds} rounds; nothing to resume "
            f"(num_rounds=N with N > {raw.num_rounds} extends it)",
        )
    if not (run_dir / checkpoint.FILE).exists():
        raise ConfigError(
            "resume", f"{run_dir} has no checkpoint (it stopped before its first round ended)"
        )
    if extending:
        assert num_rounds is not None
        _check_extension(raw, num_rounds)
        raw.num_rounds = num_rounds
    exp = Experiment.from_config(raw)
    fed, _ = exp.prepare()
    check_resumable(run_dir, fed)  # the data must be the run's own (its partition.json)
    saved = checkpoint.load(run_dir)
    fresh = open_record(exp, run_dir)
    record = RunRecord.resume(
        run_dir, saved.server_round, fresh.round_columns, fresh.client_columns
    )
    if extending:
        _extend(record, raw, num_rounds)
    log.info(
        "fedlab: resuming %s after round %d of %d", run_dir, saved.server_round, exp.cfg.num_rounds
    )
    return _execute(exp, fed, record, run_dir, saved, engine)


def _check_extension(raw: DictConfig, num_rounds: int) -> None:
    """Refuse an extension that would change what already happened: fewer rounds, or noise
    that ``privacy.target_epsilon`` chose for the old number of rounds (the extended run would
    not be the run with ``num_rounds`` from the start)."""
    if num_rounds < raw.num_rounds:
        raise ConfigError(
            "num_rounds",
            f"a resumed run can only grow: it has {raw.num_rounds} rounds, got {num_rounds}",
        )
    if raw.privacy.mode != "none" and raw.privacy.target_epsilon is not None:
        raise ConfigError(
            "num_rounds",
            f"cannot extend a run whose noise privacy.target_epsilon="
            f"{raw.privacy.target_epsilon} chose for {raw.num_rounds} rounds (more rounds need "
            "other noise from round 1); start a new run with the rounds you want",
        )


def _extend(record: RunRecord, raw: DictConfig, num_rounds: int) -> None:
    """Write the extension into the record: the config says the new ``num_rounds`` (so a
    later resume continues to it) and ``extended`` says from which to which, and when."""
    from fedlab.record.run_dir import now, write_text

    previous = record.results.get("num_rounds")
    write_text(record.dir / "config.yaml", OmegaConf.to_yaml(raw, resolve=True))
    extended = [
        *record.results.get("extended", []),
        {"from_rounds": previous, "to_rounds": num_rounds, "at": now()},
    ]
    experiment = {**record.results.get("experiment", {}), "num_rounds": num_rounds}
    record.update(num_rounds=num_rounds, extended=extended, experiment=experiment)


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
            build_client_app(_client_spec(exp, data_path, record.dir / STATE_DIR)),
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
    drawing: Background | None = None,
    closer_ahead: bool = False,
) -> dict:
    """Run ``engine`` (from the start or from checkpoint ``saved``) and close the record;
    ``drawing`` (``partition.png`` being drawn in a child) is waited for when the run closes.
    ``closer_ahead``: the rounds leave a core idle, so the child that closes the trackers that
    close apart is forked before them, to import what it needs meanwhile (else at the close:
    :meth:`~fedlab.trackers.registry.Trackers.close`).

    The trackers are built here, before the engine starts, so that what they measure (the
    host's energy) covers the whole run, start-up included.
    """
    from fedlab.record import lineage
    from fedlab.reports.model_card import write_model_card
    from fedlab.trackers.base import Tracker

    try:
        if not (run_dir / lineage.PARTITION).exists():  # a resumed run keeps its own (checked)
            lineage.write_partition(run_dir, fed, exp.cfg.partition)
        trackers = Trackers.build(RunContext(exp, fed, run_dir))
        if closer_ahead:
            trackers.fork_closer()
    except BaseException:
        if drawing is not None:
            drawing.cancel()
        raise

    def body() -> None:
        (engine or simulation_engine)(exp, fed, record, trackers, saved)
        done = record.results["rounds_completed"]
        if done != exp.cfg.num_rounds:
            raise RunFailed(f"simulation ended after {done} rounds")

    def closing(status: str) -> dict[str, Any]:
        if drawing is not None:  # the record is complete only with its partition picture
            drawing.result()
        # the pictures are drawn while a child audits the final model (Trackers.close)
        figures = partial(_draw_figures, record.dir) if record.rounds else None
        fields = trackers.close(meanwhile=figures)
        # The model and checkpoint are final now: hash the chain. A tracker that publishes
        # the record elsewhere may annotate its section afterwards, so that one is not hashed.
        later = {t.name for t in trackers if type(t).published is not Tracker.published}
        final = {k: v for k, v in fields.items() if k not in later} | {"status": status}
        try:
            fields["lineage"] = lineage.write_lineage(
                run_dir, fed, exp.cfg.dataset, record.results, final,
                _git_state() if saved is not None else None,
            )
        except Exception as err:  # the record must still close; say what is missing
            log.warning("fedlab: warning: lineage not written: %s", err)
        return fields

    def finished() -> None:
        write_model_card(run_dir)
        trackers.published(record.results["status"])

    try:
        supervise(record, body, closing, finished=finished)
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


def _client_spec(exp: Experiment, data_path: Path, state_dir: Path) -> ClientSpec:
    """What every client process needs: data location, model, seed, client-side clipping,
    the algorithm's client update and where it keeps per-client state."""
    privacy = exp.cfg.privacy
    client_clips = privacy.mode == "central" and privacy.clip_at == "client"
    return ClientSpec(
        str(data_path),
        dict(exp.cfg.model),
        exp.cfg.seed,
        exp.cfg.simulation.torch_threads,
        privacy.clipping if client_clips else None,
        OmegaConf.to_container(OmegaConf.create(dict(exp.cfg.strategy.client_update))),
        str(state_dir),
    )
