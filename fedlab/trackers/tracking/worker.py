"""The process that talks to the MLflow store for one run: ``python -m
fedlab.trackers.tracking.worker``, started by :class:`~.mlflow.MlflowTracker`.

Why a process, not a thread: importing MLflow takes ~3 s of Python, opening a SQLite store
~1.7 s (schema checks), the first ``torch.export`` ~3 s more; in a thread all of it would
hold the GIL the training needs, and a slow server's retries would sit in the run's own
process. Here the run only writes one JSON line per round to a pipe (from a thread of its
own, so not even a full pipe blocks a round), and everything MLflow does happens beside it.

Protocol (JSON lines). In on stdin: ``start`` (the store, the run directory, resume or not,
the sweep, the model's spec and shape), ``rounds`` (log the record's rows up to ``through``;
null: all), ``publish`` (the record is final: summary metrics, tags, artifacts, the model,
the run's end), then end of input. Out on the saved stdout: ``started`` (run, experiment,
parent ids), ``published`` (the model's URI), or ``error`` (once: the worker then ignores
the rest). End of input without ``publish`` (the run's process died) ends the MLflow run as
``KILLED``; a resumed run sets it running again. Everything else the libraries print goes to
stderr, which the tracker keeps the end of for its warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO, Any

from fedlab.record.reader import load_run
from fedlab.record.run_dir import read_csv
from fedlab.trackers.tracking import model as tracked_model
from fedlab.trackers.tracking import store

#: A file the worker appends ``<time> <op> <seconds>`` to for every message, when set.
TRACE_ENV = "FEDLAB_MLFLOW_TRACE"


def _now_ms(row: Any = None) -> int:
    return int(time.time() * 1000)


class Session:
    """One MLflow run, opened from a ``start`` message."""

    def __init__(self, msg: dict[str, Any], emit: Any) -> None:
        self.uri: str = msg["uri"]
        self.run_dir = Path(msg["run_dir"])
        self.msg = msg
        self.emit = emit
        self.published = False
        self.client = store.open_client(self.uri)
        self.experiment_id = store.experiment_id(self.client, msg["experiment"], self.uri)
        record = load_run(self.run_dir)
        self.run_id, self.logged_through = self._continued() if msg.get("resume") else (None, -1)
        self.parent_id: str | None = None
        if self.run_id is None:
            if msg.get("sweep_dir"):
                self.parent_id = store.ensure_parent(
                    self.client, self.experiment_id, Path(msg["sweep_dir"]), self.uri
                )
            tags = store.run_tags(record)
            if self.parent_id:
                tags["mlflow.parentRunId"] = self.parent_id
            self.run_id = self.client.create_run(
                self.experiment_id, run_name=store.run_name(record), tags=tags
            ).info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
            store.set_tags(self.client, self.run_id, store.run_tags(record))
        store.log_params(self.client, self.run_id, store.run_params(record))
        emit({"event": "started", "run_id": self.run_id, "experiment_id": self.experiment_id,
              "parent_run_id": self.parent_id, "logged_through": self.logged_through})
        # The first torch.export's imports, in a thread: rounds keep being logged meanwhile,
        # and a run that ends without a model (failed early) never waits for it.
        self.warming = threading.Thread(
            target=tracked_model.warm_up,
            args=(msg["model"], msg["input_shape"], msg["num_classes"]), daemon=True,
        )
        if msg.get("log_model"):
            self.warming.start()

    def _continued(self) -> tuple[str | None, int]:
        """The MLflow run a resumed record continues: the one its ``results.json`` names,
        else the newest with its ``fedlab.run_key`` (a run killed before it learnt its id),
        and the last round the store holds (``fedlab.logged_through``)."""
        from mlflow.exceptions import MlflowException

        candidates = []
        if self.msg.get("run_id"):
            with contextlib.suppress(MlflowException):  # gone from the store: a new run
                candidates.append(self.client.get_run(self.msg["run_id"]))
        if not candidates:
            candidates = store.find_runs(
                self.client, self.experiment_id, "fedlab.run_key", store.key_of(self.run_dir)
            )
        if not candidates or candidates[0].info.lifecycle_stage == "deleted":
            return None, -1
        run = candidates[0]
        self.parent_id = run.data.tags.get("mlflow.parentRunId")
        return run.info.run_id, int(run.data.tags.get(store.LOGGED_THROUGH, -1))

    def rounds(self, through: int | None) -> None:
        """Log the record's rows after the last one logged, up to ``through``."""
        path = self.run_dir / "rounds.csv"
        if not path.is_file():
            return
        grouped = store.round_metrics(read_csv(path), self.logged_through, through, _now_ms)
        last = store.log_rounds(self.client, self.run_id, grouped)
        self.logged_through = max(self.logged_through, last)

    def publish(self, status: str) -> None:
        """The record is final: everything else, then the run's end."""
        self.rounds(None)
        record = load_run(self.run_dir)
        tags = store.run_tags(record) | {"fedlab.content": store.content_digest(self.run_dir)}
        store.log_summary(self.client, self.run_id, record, _now_ms())
        model_uri = None
        if status != "interrupted":  # a resumed run logs the files and model when it ends
            if self.msg.get("log_artifacts"):
                store.log_record_files(self.client, self.run_id, self.run_dir)
            if self.msg.get("log_model") and (self.run_dir / "model.safetensors").is_file():
                if self.warming.is_alive():
                    self.warming.join()
                model = tracked_model.final_model(self.run_dir, self.msg["model"],
                                          self.msg["input_shape"], self.msg["num_classes"])
                step = int(record.results.get("rounds_completed") or 0)
                model_uri, fmt = tracked_model.log_model(
                    self.uri, self.run_id, model, self.msg["input_shape"], step
                )
                tags |= {"fedlab.model_uri": model_uri, "fedlab.model_format": fmt}
        store.set_tags(self.client, self.run_id, tags)
        store.finish(self.client, self.run_id, status)
        self.published = True
        self.emit({"event": "published", "model_uri": model_uri})

    def abandon(self) -> None:
        """Input ended without ``publish``: the run's process died."""
        if not self.published:
            self.client.set_terminated(self.run_id, "KILLED")


def _quiet() -> None:
    """MLflow's INFO lines (database creation, alembic migrations) and its warnings about
    pickled models are the worker's business, not the run's console."""
    warnings.simplefilter("ignore")
    for name in ("mlflow", "alembic", "urllib3", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def serve(lines: IO[str], emit: Any) -> None:
    """Handle the messages in ``lines`` until they end (see the module docstring)."""
    session: Session | None = None
    failed = False
    trace = os.environ.get(TRACE_ENV)
    for line in lines:
        if failed or not line.strip():
            continue  # keep reading: the run's writes must never meet a closed pipe
        msg = json.loads(line)
        began = time.perf_counter()
        try:
            if msg["op"] == "start":
                session = Session(msg, emit)
            elif session is not None and msg["op"] == "rounds":
                session.rounds(msg.get("through"))
            elif session is not None and msg["op"] == "publish":
                session.publish(msg["status"])
        except Exception as err:  # any store failure: report once, go inert
            failed = True
            text = str(err).strip().splitlines()
            emit({"event": "error", "op": msg.get("op"),
                  "message": f"{type(err).__name__}: {text[0] if text else ''}"[:400]})
        if trace:  # where a run's tracking time goes (benchmarks/tracking_overhead.py)
            with open(trace, "a") as f:
                f.write(f"{time.time():.3f} {msg.get('op')} {time.perf_counter() - began:.3f}\n")
    if session is not None and not failed:
        with contextlib.suppress(Exception):  # nothing is left to tell
            session.abandon()


def main() -> None:
    """Entry point of the worker process."""
    for signum in (signal.SIGINT, signal.SIGHUP):  # the run decides when this ends
        signal.signal(signum, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # on a busy machine the training comes first
        os.nice(10)
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints cannot corrupt it
    _quiet()

    def emit(event: dict[str, Any]) -> None:
        protocol.write(json.dumps(event) + "\n")
        protocol.flush()

    serve(sys.stdin, emit)
    # Everything is committed; skip the interpreter's teardown of torch and MLflow (seconds),
    # which would only compete for the CPU with the next job of a sweep.
    sys.stderr.flush()
    protocol.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
