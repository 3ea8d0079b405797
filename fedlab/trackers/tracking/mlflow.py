"""``tracking=mlflow``: every run also an MLflow run, through the tracker interface.

:class:`MlflowTracker` is configured like every tracker (``trackers.tracking`` in
``conf/config.yaml``) and is built only when ``tracking.backend`` is ``mlflow``. It never
names another tracker: a round's metrics are whatever ``rounds.csv`` holds once the round is
recorded (so every tracker's columns, present and future), logged when the next round starts
and when the run closes; the artifacts and the model go once the record is final
(:meth:`Tracker.published`). What lands where is :mod:`.store`'s docstring.

Never failing, never slowing the training: the store is driven by a separate process
(:mod:`.worker`) fed from a thread, so a round costs one queued message. A store that cannot
be used (unwritable directory, unreachable server, MLflow missing its tables...) is one
warning, in the console and in ``results.json["tracking"]``, and the tracker goes inert; the
record is untouched, and ``fedlab-mlflow log RUN_DIR`` logs it later. The end of a run waits
at most ``tracking.wait_s`` for the store.

``results.json["tracking"]`` names the MLflow run (``uri``, ``experiment_id``, ``run_id``,
``parent_run_id``): ``resume=`` continues that run, logging only the rounds the store does
not have yet, and other tools tag it with :func:`tag_run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from logging import getLogger
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedlab.config.schema import ConfigError
from fedlab.record.run_dir import RESULTS
from fedlab.trackers.base import RunContext, Tracker
from fedlab.trackers.tracking.store import bounded_http, normalize_uri, set_tags, store_env

if TYPE_CHECKING:
    from fedlab.config.experiment import Experiment
    from fedlab.record.reader import Run

log = getLogger("fedlab")


class WorkerLink:
    """The worker process and the threads that feed it and read it.

    The run's thread only puts messages in a queue (:meth:`send`): a writer thread moves
    them into the worker's stdin, a reader thread turns its stdout into events, and a third
    keeps the last lines of its stderr for a warning should it die. All are daemons: a hung
    store never keeps ``fedlab-run`` alive.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._outbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedlab.trackers.tracking.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(env), text=True, bufsize=1,
            start_new_session=True,  # Ctrl-C reaches the run, which then ends the MLflow run
        )
        for target in (self._write, self._read, self._drain_stderr):
            name = f"fedlab-mlflow{target.__name__}"
            threading.Thread(target=target, daemon=True, name=name).start()

    def send(self, msg: dict[str, Any]) -> None:
        self._outbox.put(msg)

    def end_input(self) -> None:
        """No more messages: the worker finishes what it has and exits."""
        self._outbox.put(None)

    def _write(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while (msg := self._outbox.get()) is not None:
                stdin.write(json.dumps(msg) + "\n")
                stdin.flush()
        except (OSError, ValueError):  # the worker died: the reader says so
            pass
        with contextlib.suppress(OSError, ValueError):
            stdin.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        code = self.proc.wait()
        self.events.put({"event": "exit", "code": code})

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.strip():
                self.stderr_tail.append(line.strip())

    def terminate(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()


class MlflowTracker(Tracker):
    """Ships the run to an MLflow store while it runs (see the module docstring)."""

    name: ClassVar[str] = "tracking"

    def __init__(self, run: RunContext) -> None:
        cfg = run.exp.cfg.tracking
        self.run_dir = Path(run.run_dir).resolve()
        self.wait_s = float(cfg.wait_s)
        previous = _previous_section(self.run_dir)  # a resumed run continues its MLflow run
        self.section: dict[str, Any] = {
            "backend": "mlflow",
            "uri": previous.get("uri") or normalize_uri(cfg.uri),
            "experiment": previous.get("experiment") or cfg.experiment,
            "experiment_id": previous.get("experiment_id"),
            "run_id": previous.get("run_id"),
            "parent_run_id": previous.get("parent_run_id"),
            "status": "starting",
            "warnings": [],
        }
        self.inert = False
        self.started = False
        self.link: WorkerLink | None = None
        try:
            self.link = WorkerLink(store_env(os.environ))
        except OSError as err:
            self._fail(f"cannot start the MLflow worker: {err}")
            return
        self.link.send({
            "op": "start", "uri": self.section["uri"], "experiment": self.section["experiment"],
            "run_dir": str(self.run_dir), "resume": bool(previous),
            "run_id": self.section["run_id"], "sweep_dir": _sweep_dir(),
            "log_model": bool(cfg.log_model), "log_artifacts": bool(cfg.log_artifacts),
            "model": dict(run.exp.cfg.model), "input_shape": list(run.fed.input_shape),
            "num_classes": int(run.fed.num_classes),
        })

    @classmethod
    def check(cls, exp: Experiment) -> None:
        from importlib.util import find_spec

        if exp.cfg.tracking.backend == "mlflow" and find_spec("mlflow") is None:
            raise ConfigError("tracking.backend", "mlflow is not installed here: "
                              "pip install 'fedlab[tracking]', or tracking=none")

    @classmethod
    def build(cls, run: RunContext, **options: Any) -> MlflowTracker | None:
        if run.exp.cfg.tracking.backend == "none":
            return None
        return cls(run, **options)

    # -- the worker's events ---------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        """The store cannot be used: warn once, go inert, keep the record as it is."""
        if self.inert:
            return
        self.inert = True
        text = (f"tracking: the MLflow store {self.section['uri']} cannot be used ({reason}); "
                f"the run goes on without it (log it later: fedlab-mlflow log {self.run_dir})")
        self.section["status"] = "unavailable"
        self.section["warnings"].append(text)
        log.warning("fedlab: warning: %s", text)
        if self.link is not None:
            self.link.end_input()

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "started":
            self.started = True
            self.section.update({k: event.get(k) for k in
                                 ("run_id", "experiment_id", "parent_run_id")})
            self.section["status"] = "tracked"
        elif kind == "published":
            self.section["status"] = "logged"
        elif kind == "error":
            self._fail(event.get("message") or "unknown error")
        elif kind == "exit" and self.section["status"] not in ("logged", "unavailable"):
            tail = self.link.stderr_tail[-1] if self.link and self.link.stderr_tail else ""
            self._fail(f"its worker exited with code {event.get('code')}"
                       + (f": {tail}" if tail else ""))

    def _drain(self) -> None:
        if self.link is None:
            return
        while True:
            try:
                self._handle(self.link.events.get_nowait())
            except queue.Empty:
                return

    def _wait(self, done: Any, timeout: float) -> bool:
        """Handle events until ``done()`` or the worker exits, at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while self.link is not None and not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                event = self.link.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            self._handle(event)
            if event.get("event") == "exit":
                break
        return done()

    def _send(self, msg: dict[str, Any]) -> None:
        self._drain()
        if not self.inert and self.link is not None:
            self.link.send(msg)

    # -- the tracker's hooks -----------------------------------------------------------------

    def start_round(self, server_round: int) -> None:
        """Rounds before ``server_round`` are in ``rounds.csv`` with every tracker's columns."""
        self._send({"op": "rounds", "through": server_round - 1})

    def summary(self) -> dict[str, Any]:
        self._drain()
        return {**self.section, "warnings": list(self.section["warnings"])}

    def close(self) -> dict[str, Any]:
        """The last rounds; and the run's id, which the record must hold for ``resume=``
        (a run shorter than the worker's start-up waits for it here)."""
        self._send({"op": "rounds", "through": None})
        if not self.inert and not self._wait(lambda: self.started or self.inert, self.wait_s):
            self._fail(f"no answer within tracking.wait_s={self.wait_s:g} s")
        return self.summary()

    def published(self, status: str) -> None:
        """The record is final: the worker logs the rest and ends the MLflow run."""
        if self.inert or self.link is None:
            return
        self.link.send({"op": "publish", "status": status})
        self.link.end_input()
        finished = self._wait(lambda: self.section["status"] == "logged" or self.inert,
                              self.wait_s)
        if not finished:
            self._fail(f"the record was not logged within tracking.wait_s={self.wait_s:g} s")
            self.link.terminate()

    def final_fragment(self, section: Any) -> str | None:
        if isinstance(section, Mapping) and section.get("run_id") and not self.inert:
            return f"mlflow run {section['run_id'][:8]}"
        return None

    @classmethod
    def card_section(cls, run: Run) -> str | None:
        """Where the run is tracked (from the record alone)."""
        section = run.section(cls.name)
        if section.get("backend") != "mlflow" or not section.get("run_id"):
            return None
        parent = section.get("parent_run_id")
        return (
            "## Experiment tracking\n\n"
            f"MLflow run `{section['run_id']}` in experiment `{section.get('experiment')}`"
            + (f", a child of sweep run `{parent}`" if parent else "")
            + f", store `{section.get('uri')}` "
            f"(browse: `mlflow ui --backend-store-uri {section.get('uri')}`)."
        )


def _previous_section(run_dir: Path) -> dict[str, Any]:
    """The tracking section of the record a resumed run continues ({} for a new run: its
    ``results.json`` was just written with this tracker's inactive section, null)."""
    try:
        section = json.loads((run_dir / RESULTS).read_text()).get(MlflowTracker.name)
    except (OSError, ValueError, AttributeError):
        return {}
    return section if isinstance(section, dict) and section.get("backend") == "mlflow" else {}


def _sweep_dir() -> str | None:
    """The sweep directory of the Hydra multirun job this is (None outside one): its jobs
    become children of one parent run (any launcher: Hydra sets the job's config in each)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return None
        return str(Path(HydraConfig.get().sweep.dir).resolve())
    except Exception:  # no Hydra job config: not a sweep
        return None


def tag_run(section: Mapping[str, Any], tags: Mapping[str, str]) -> bool:
    """Set ``tags`` on the MLflow run that ``section`` (a record's ``results.json
    ["tracking"]``) names; a warning and False when there is none or its store cannot be
    reached (a release gate's verdict, say, must not fail for want of a tracking server)."""
    if not isinstance(section, Mapping) or not section.get("run_id") or not section.get("uri"):
        log.warning("fedlab: warning: tracking: the record names no MLflow run to tag")
        return False
    try:
        with bounded_http():
            from fedlab.trackers.tracking.store import open_client

            set_tags(open_client(str(section["uri"])), str(section["run_id"]),
                     {str(k): str(v) for k, v in tags.items()})
    except Exception as err:  # unreachable, deleted, MLflow missing: a warning
        text = str(err).strip().splitlines()
        log.warning("fedlab: warning: tracking: cannot tag MLflow run %s at %s (%s: %s)",
                    section["run_id"], section["uri"], type(err).__name__, text[0] if text else "")
        return False
    return True
