"""A run record's life: claim the directory, run the body, close the record exactly once.

Shared by ``fedlab-run`` and ``fedlab-quantum``, so both refuse, skip and retry directories
the same way and end every record with the same statuses: ``completed``, ``failed`` (with the
error) or ``interrupted``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from logging import getLogger
from pathlib import Path
from typing import Any

from fedlab.config.schema import ConfigError
from fedlab.record.run_dir import RESULTS, RunRecord, existing_status

log = getLogger("fedlab")


class RunFailed(RuntimeError):
    """The run started but did not complete; its record says ``failed`` and why."""


class RunStopped(Exception):
    """A tracker ended the run early on purpose; the record's status says why (for example
    ``budget_exhausted`` or ``diverged``) and ``stopped`` holds the reason and round."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (what ``kill``, SLURM preemption and a closed terminal send), raised in
    the main thread like Ctrl-C so that every engine ends the run the same way: the record
    says ``interrupted`` (``error`` names the signal) and the last checkpoint stays intact."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The signals that end a run as ``interrupted`` besides Ctrl-C (SIGINT).
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def handle_termination() -> None:
    """Make SIGTERM and SIGHUP raise :class:`Terminated` in the main thread (a no-op in any
    other thread, where Python cannot install handlers). Ray replaces the driver's SIGTERM
    handler when it starts; its engine puts this one back (fedlab.engines.ray)."""
    if threading.current_thread() is threading.main_thread():
        for signum in TERMINATING:
            signal.signal(signum, _raise_terminated)


def error_line(err: BaseException) -> str:
    """An exception as one line for the record and the console (type and last line)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"[:500]


def claim(run_dir: Path, config_yaml: str) -> dict | None:
    """Make ``run_dir`` ready for a run of ``config_yaml``; what to do with an existing record.

    The same configuration, completed: return its results (a rerun sweep skips it). The same
    configuration, not completed (failed, interrupted, killed): move that attempt aside into
    ``attempts/<n>/`` and return None (run again). Another configuration: raise
    :class:`ConfigError`, since a record is never overwritten.
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


def supervise(
    record: RunRecord,
    body: Callable[[], None],
    closing: Callable[[str], dict[str, Any]],
    finished: Callable[[], None] | None = None,
) -> None:
    """Run ``body`` and close ``record`` once, whatever ends it.

    ``closing(status)`` releases what the run holds and returns the record's final fields
    (it runs before the status is written, so a reader never sees ``completed`` with
    sections still missing); ``finished()`` runs after it is written (reports made from the
    record, such as the model card). ``KeyboardInterrupt`` marks the record ``interrupted`` and goes
    on; a tracker's ``StopRun`` (whatever engine carried it, so it is read from the record's
    ``stopped`` field) gives the record that status and becomes :class:`RunStopped`; any other
    exception marks it ``failed`` and becomes :class:`RunFailed`.
    """
    started = time.perf_counter()

    def close(status: str, error: str | None = None) -> None:
        fields = {"duration_s": round(time.perf_counter() - started, 3), **closing(status)}
        record.finish(status, error=error, **fields)
        if finished is not None:
            finished()

    try:
        body()
    except KeyboardInterrupt as err:
        close("interrupted", f"{err.args[0]} received" if isinstance(err, Terminated) else None)
        raise
    except Exception as err:
        stopped = record.results.get("stopped")
        if stopped:  # a tracker ended the run on purpose (fedlab.trackers.base.StopRun)
            close(stopped["status"], stopped["reason"])
            raise RunStopped(stopped["status"], stopped["reason"]) from None
        close("failed", error_line(err))
        raise RunFailed(error_line(err)) from err
    close("completed")
