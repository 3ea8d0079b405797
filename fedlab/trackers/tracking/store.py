"""What an MLflow run of a fedlab record holds, and how it gets there.

One module for the live tracker's worker and for the back-fill (``fedlab-mlflow log``), so a
run tracked while it ran and a run logged years later look the same in MLflow:

* **params**: the flattened resolved ``config.yaml`` (``strategy.flower.proximal_mu``), as
  :func:`fedlab.record.reader.load_run` reads it; values cut at MLflow's 6000 characters;
* **metrics**: every numeric ``rounds.csv`` column with ``step`` = round (empty cells left
  out), so the history of a metric is the record's column; and at the end the numbers
  ``fedlab-compare`` reads (``final/accuracy``, ``final/emissions_kg``, every tracker's
  objectives), found through the record as reports find them;
* **tags**: fedlab version, git commit and dirty flag, seed, engine, strategy, dataset, status,
  and ``fedlab.run_key`` / ``fedlab.content`` (a hash of the run directory's path / of its
  final ``results.json`` and ``rounds.csv``), by which the back-fill knows a run is logged;
* **artifacts**: the run directory's files (the checkpoint and moved-aside attempts left
  out: they are for ``resume=``, and the final weights are there as ``model.safetensors``);
* **model**: the final global model as an MLflow PyTorch model (:mod:`.model`).

Talking to MLflow is :class:`mlflow.MlflowClient` with explicit run ids throughout (no active
run: a Hydra multirun runs jobs in one process); only ``log_model`` is MLflow's fluent API.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedlab.record.reader import Run, cell, number
from fedlab.record.run_dir import RESULTS, write_json

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Written into a sweep directory by the first job that tracks: the parent run(s) of the
#: sweep, per store, for the Hydra callback that closes them (:mod:`.sweep`).
PARENT_FILE = "mlflow_parent.json"
#: MLflow's limits (mlflow.utils.validation): param value length, entities per log_batch.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
BATCH_PARAMS = 100
BATCH_METRICS = 1000
#: The tag saying which rounds the store holds (logged in the same call as their metrics).
LOGGED_THROUGH = "fedlab.logged_through"
#: Files of a run directory that are not logged as artifacts (see the module docstring).
NOT_ARTIFACTS = ("checkpoint.safetensors", "attempts")
#: fedlab status -> MLflow run status. A run a tracker stopped (``diverged``,
#: ``budget_exhausted``) is a finished result with its own ``fedlab.status``.
#: ``running`` is only ever seen by the back-fill: a record whose process was killed.
MLFLOW_STATUS = {
    "completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "running": "KILLED",
}
#: Defaults for MLflow's HTTP client, applied only where the user set none: MLflow retries a
#: refused connection 7 times with exponential back-off (minutes), which would hold the end
#: of a run hostage to a server that is down. The file store is refused by MLflow 3.17
#: unless allowed; a directory ``tracking.uri`` asks for it explicitly. Telemetry: below.
STORE_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ALLOW_FILE_STORE": "true",
    # MLflow 3 reports usage to its makers from a background thread (and flushes it at exit,
    # which an offline cluster node waits on): off unless the user turns it on
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


# --------------------------------------------------------------------------------------
# Store URIs and the environment (no mlflow import)
# --------------------------------------------------------------------------------------


def normalize_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute (``sqlite:///mlruns.db`` ->
    ``sqlite:////cwd/mlruns.db``, ``mlruns`` -> ``/cwd/mlruns``): the record keeps it, so
    ``resume=`` and the back-fill find the same store from any working directory."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path and not path.startswith("/") and path != ":memory:":
            return "sqlite:///" + str(Path(path).resolve())
        return uri
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).expanduser().resolve())
    return uri


def scheme(uri: str) -> str:
    """The URI's scheme: ``sqlite``, ``http``, ... ('' for a plain directory)."""
    return uri.split(":", 1)[0] if "://" in uri or uri.startswith("file:") else ""


def store_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (an environment) with :data:`STORE_ENV` where it has no value of its own."""
    return {**STORE_ENV, **base}


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
    """Apply :data:`STORE_ENV` to this process while the block runs (in-process callers:
    :func:`fedlab.trackers.tracking.mlflow.tag_run`, the sweep callback, the back-fill)."""
    added = {k: v for k, v in STORE_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def key_of(path: Path) -> str:
    """A short hash of a directory's absolute path: tag values searched on, free of the
    quoting a path would need in an MLflow filter string."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:20]


def content_digest(run_dir: Path) -> str:
    """A hash of the record's final ``results.json`` and ``rounds.csv``: a run logged again
    after it changed (resumed, extended) is told apart from one already logged."""
    digest = hashlib.sha256()
    for name in (RESULTS, "rounds.csv"):
        path = run_dir / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:20]


# --------------------------------------------------------------------------------------
# What a run holds, from the record
# --------------------------------------------------------------------------------------


def run_params(run: Run) -> dict[str, str]:
    """The flattened config as MLflow params (strings, at most 6000 characters each)."""
    out = {}
    for key, value in run.config.items():
        text = cell(value)
        if len(text) > MAX_PARAM_LENGTH:
            text = text[: MAX_PARAM_LENGTH - 3] + "..."
        out[key] = text
    return out


def run_tags(run: Run) -> dict[str, str]:
    """What produced the run and what it is, as MLflow tags."""
    results, config = run.results, run.config
    versions = results.get("versions") or {}
    experiment = results.get("experiment") or {}
    tags = {
        "fedlab.version": versions.get("fedlab"),
        "fedlab.git_commit": versions.get("git_commit"),
        "fedlab.git_dirty": versions.get("git_dirty"),
        "fedlab.seed": results.get("seed", config.get("seed")),
        "fedlab.engine": config.get("simulation.backend"),
        "fedlab.strategy": experiment.get("strategy"),
        "fedlab.dataset": experiment.get("dataset"),
        "fedlab.model": experiment.get("model"),
        "fedlab.status": results.get("status"),
        "fedlab.run_dir": str(run.path.resolve()),
        "fedlab.run_key": key_of(run.path),
        "fedlab.kind": "run",
        # MLflow's own tag: the UI shows the commit next to the run
        "mlflow.source.git.commit": versions.get("git_commit"),
    }
    return {k: str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in tags.items() if v is not None}


def run_name(run: Run) -> str:
    """The run's name in MLflow: the overrides it was started with (a sweep job's
    ``strategy=fedprox seed=1``), else the run directory's own name."""
    overrides = [o for o in run.results.get("overrides") or []
                 if not o.startswith(("hydra.", "resume="))]
    return " ".join(overrides)[:250] or run.path.name


def round_metrics(
    rows: Sequence[Mapping[str, Any]], after: int, through: int | None, stamp: Any
) -> list[tuple[int, list[Any]]]:
    """The metrics of the rows with ``after < round <= through`` (``through`` None: every
    later row), grouped by round: every numeric column but ``round`` itself, with ``step`` =
    round and the timestamp ``stamp(row)`` (ms). Empty and non-numeric cells are left out; a
    NaN or infinite loss is kept (a diverged run's history says so)."""
    from mlflow.entities import Metric

    out = []
    for row in rows:
        r = number(row.get("round"))
        if r is None or r <= after or (through is not None and r > through):
            continue
        ms = stamp(row)
        metrics = []
        for key, value in row.items():
            if key == "round" or value is None or value == "" or isinstance(value, bool):
                continue
            try:
                v = float(value)
            except (TypeError, ValueError):
                continue
            metrics.append(Metric(key, v, ms, int(r)))
        out.append((int(r), metrics))
    return out


def log_rounds(client: MlflowClient, run_id: str, grouped: list[tuple[int, list[Any]]]) -> int:
    """Log rounds' metrics in batches of whole rounds, each batch with the tag
    ``fedlab.logged_through`` (the last round it holds) in the same call, so a resumed run
    knows exactly which rounds the store already has. Returns that last round (-1: none)."""
    from mlflow.entities import RunTag

    last, batch = -1, []
    for r, metrics in grouped:
        if batch and len(batch) + len(metrics) > BATCH_METRICS:
            client.log_batch(run_id, metrics=batch, tags=[RunTag(LOGGED_THROUGH, str(last))])
            batch = []
        batch.extend(metrics)
        last = r
    if last >= 0:
        client.log_batch(run_id, metrics=batch, tags=[RunTag(LOGGED_THROUGH, str(last))])
    return last


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log ``params`` the run does not have yet. MLflow's params never change: a value that
    did (``num_rounds`` of an extended run) becomes the tag ``fedlab.changed.<key>``."""
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    changed = [RunTag(f"fedlab.changed.{k}", v[:MAX_TAG_LENGTH])
               for k, v in params.items() if k in existing and existing[k] != v]
    for start in range(0, len(new), BATCH_PARAMS):
        client.log_batch(run_id, params=new[start : start + BATCH_PARAMS])
    if changed:
        client.log_batch(run_id, tags=changed)


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` in batches (MLflow allows 100 per call)."""
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)[:MAX_TAG_LENGTH]) for k, v in tags.items()]
    for start in range(0, len(items), BATCH_PARAMS):
        client.log_batch(run_id, tags=items[start : start + BATCH_PARAMS])


def summary_metrics(run: Run) -> dict[str, float]:
    """The numbers ``fedlab-compare`` reads from this record (accuracy, loss, traffic,
    every tracker's objectives), named ``final/<name>``: found through the trackers the
    record names, so a user's tracker's numbers land too, and never the same key as a
    per-round history."""
    from fedlab.reports.metrics import metric_value, metrics_for

    out = {}
    for metric in metrics_for(run.trackers):
        value = metric_value(metric, run)
        if value is not None and math.isfinite(value):
            out[f"final/{metric.name}"] = value
    return out


def log_summary(client: MlflowClient, run_id: str, run: Run, stamp_ms: int) -> None:
    from mlflow.entities import Metric

    step = int(number(run.results.get("rounds_completed")) or 0)
    metrics = [Metric(k, v, stamp_ms, step) for k, v in summary_metrics(run).items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def log_record_files(client: MlflowClient, run_id: str, run_dir: Path) -> int:
    """Log the run directory's files as the run's artifacts (see :data:`NOT_ARTIFACTS`);
    returns how many."""
    count = 0
    for path in sorted(run_dir.iterdir()):
        if path.name in NOT_ARTIFACTS or path.name.startswith("."):
            continue
        if path.is_file():
            client.log_artifact(run_id, str(path))
            count += 1
        elif path.is_dir():
            client.log_artifacts(run_id, str(path), path.name)
            count += 1
    return count


# --------------------------------------------------------------------------------------
# Experiments, runs, parents
# --------------------------------------------------------------------------------------


def open_client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing. In a SQLite store its artifacts go
    next to the database file (``mlruns/`` beside ``mlruns.db``), not into whatever
    directory the first run happened to start in."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = None
    if scheme(uri) == "sqlite":
        location = Path(uri[len("sqlite:///"):]).parent.joinpath("mlruns").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another job of the sweep created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def find_runs(client: MlflowClient, experiment: str, tag: str, value: str) -> list[Any]:
    """Runs of ``experiment`` whose tag ``tag`` is ``value`` (a hash: no quoting needed),
    newest first."""
    return list(client.search_runs(
        [experiment], filter_string=f"tags.`{tag}` = '{value}'", order_by=["start_time DESC"],
    ))


def ensure_parent(client: MlflowClient, experiment: str, sweep_dir: Path, uri: str,
                  *, record: bool = True) -> str:
    """The parent run of the sweep in ``sweep_dir``: found by its ``fedlab.sweep_key`` tag,
    else created. Jobs of a parallel launcher race for it, so the sweep directory is locked
    (``flock``) while one looks; ``record`` writes it into :data:`PARENT_FILE` for the
    callback that closes it at the end of the multirun."""
    sweep_dir = Path(sweep_dir).resolve()
    fd = os.open(sweep_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        found = find_runs(client, experiment, "fedlab.sweep_key", key_of(sweep_dir))
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(experiment, run_name=_sweep_name(sweep_dir), tags={
                "fedlab.kind": "sweep", "fedlab.sweep_dir": str(sweep_dir),
                "fedlab.sweep_key": key_of(sweep_dir),
            }).info.run_id
        if record:
            parents = read_parents(sweep_dir)
            entry = {"uri": uri, "experiment_id": experiment, "run_id": run_id}
            if entry not in parents:
                write_json(sweep_dir / PARENT_FILE, {"parents": [*parents, entry]})
        return run_id
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_parents(sweep_dir: Path) -> list[dict[str, str]]:
    """The parent runs :func:`ensure_parent` recorded in ``sweep_dir`` (none: [])."""
    try:
        data = json.loads((Path(sweep_dir) / PARENT_FILE).read_text())
    except (OSError, ValueError):
        return []
    parents = data.get("parents") if isinstance(data, dict) else None
    return [p for p in parents or [] if isinstance(p, dict) and p.get("run_id")]


def _sweep_name(sweep_dir: Path) -> str:
    """``multirun/2026-12-02/10-11-12`` -> ``sweep 2026-12-02/10-11-12``."""
    return f"sweep {sweep_dir.parent.name}/{sweep_dir.name}"


def close_parent(client: MlflowClient, run_id: str, sweep_dir: Path) -> int:
    """End a sweep's parent run: its children counted, ``multirun.yaml`` as an artifact.
    Returns the number of children."""
    children = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'",
    )
    set_tags(client, run_id, {"fedlab.children": str(len(children))})
    overview = Path(sweep_dir) / "multirun.yaml"
    if overview.is_file():
        client.log_artifact(run_id, str(overview))
    client.set_terminated(run_id, "FINISHED")
    return len(children)


def finish(client: MlflowClient, run_id: str, status: str) -> None:
    """End the run with the MLflow status for fedlab's ``status``."""
    client.set_terminated(run_id, MLFLOW_STATUS.get(status, "FINISHED"))


def record_stamp(run: Run) -> Any:
    """Timestamps for a record's rows logged after the fact: its start plus the row's
    ``elapsed_s`` (what the history looked like while it ran)."""
    from datetime import datetime

    started = run.results.get("started_at")
    try:
        base = datetime.fromisoformat(started).timestamp() if started else time.time()
    except ValueError:
        base = time.time()

    def stamp(row: Mapping[str, Any]) -> int:
        return int(1000 * (base + (number(row.get("elapsed_s")) or 0.0)))

    return stamp

