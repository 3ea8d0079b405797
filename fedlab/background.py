"""Work done in a forked child while the driver goes on (issue #22): the data's preparation,
the partition picture.

Preparing the default experiment's data costs about 1.5 s of CPU, most of it importing
scikit-learn (its seeded stratified split), Hugging Face ``datasets`` and flwr-datasets (the
partitioners); the driver meanwhile has its own imports to do (``torch._dynamo``, which every
torch optimizer needs; matplotlib). Drawing ``partition.png`` (a bar per client and class)
takes up to 0.6 s that the first round need not wait for. On a machine with a second core
these overlap: :class:`Background` forks a child that runs a function and sends its result
(or exception) back through a pipe, and :meth:`Background.result` collects it.

A child computes exactly what the driver would have (every draw of fedlab is seeded), so the
numbers and files of a run do not depend on where they were made. Only datasets that say their
federation is small (``DatasetSpec.background``: the bundled scikit-learn sets) are prepared
this way: a large one (a download, a synthetic federation of 10,000 users) would cross the
pipe as a pickle and be held twice while it does.

A child can also be forked before its input is known (``awaits=True``): it imports ``imports``
at once, then waits for :meth:`Background.start` to send what its work takes. ``fedlab-run``
forks the data's child that way right after composing the config, before the driver imports
torch and Flower (~2 s), so that scikit-learn's and ``datasets``' imports (~2.6 s) are done on
the second core by the time the validated experiment sends its loader; and the trackers whose
close is heavy (the audit of the final model: Fairlearn, Captum) are closed by a child that is
sent their final state at the end, forked as the rounds start where they leave a core idle (so
that it imports what they need meanwhile), else at the close
(:meth:`fedlab.trackers.registry.Trackers.close`).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from fedlab.config.errors import ConfigError


def can_fork() -> bool:
    """Whether a child can be forked here (Linux; ``fork`` is unsafe on macOS and absent on
    Windows, where the driver does the work itself)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _child(
    conn: Connection,
    work: Callable[..., Any],
    inbox: tuple[Connection, Connection] | None,
    imports: Sequence[str],
) -> None:
    """Import ``imports``, run ``work()`` (``work(x)`` with ``x`` read from ``inbox``, a pipe's
    two ends, where one is given) and send ``("ok", result)``, ``("config", key, message)`` for
    a :class:`ConfigError` (whose constructor takes two arguments, so it does not unpickle) or
    ``("error", exception)``. Ctrl-C and SIGTERM are the driver's to handle: it ends the child.
    """
    if inbox is not None:  # the fork copied the driver's end too: close it, or no EOF comes
        inbox[1].close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # the driver's handlers came with the fork
    for module in imports:  # ahead of the work; a module that fails fails there, and says so
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    try:
        if inbox is None:
            conn.send(("ok", work()))
        else:
            try:
                given = inbox[0].recv()
            except EOFError:  # the driver did not need this child after all
                return
            conn.send(("ok", work(given)))
    except ConfigError as err:
        conn.send(("config", err.key, str(err).removeprefix(f"{err.key}: ")))
    except Exception as err:  # re-raised in the driver, as if it had done the work itself
        try:
            conn.send(("error", err))
        except Exception:  # an exception that does not pickle: its type and message
            conn.send(("error", RuntimeError(f"{type(err).__name__}: {err}")))
    finally:
        conn.close()


def _run_when_idle(pid: int) -> None:
    """Put child ``pid`` (forked a moment ago: one thread, whose later threads inherit its
    class) in Linux's ``SCHED_IDLE`` class, so that it runs only where a core would otherwise
    idle; ``nice`` 19 where the class is unavailable. Set here, not in the child, so that
    :func:`_run_as_usual` cannot come before it."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


def _run_as_usual(pid: int) -> None:
    """Move every thread of child ``pid`` back to the normal class, so that a busy machine
    does not starve work the driver is waiting for. Leaving ``SCHED_IDLE`` needs root or an
    ``RLIMIT_NICE`` that allows nice 0; without them the child keeps the idle class, which
    still has the core the waiting driver leaves."""
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(AttributeError, OSError):
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, os.sched_param(0))


class Background:
    """``work()`` running in a forked child from construction; :meth:`result` waits for it.

    The child first imports ``imports``. ``idle=True`` is for work the driver does not wait
    for until later (a picture, the close): the child runs only on cycles nothing else wants
    (:func:`_run_when_idle`), until :meth:`result` has to wait for it. At the driver's
    priority such a child took a third of the rounds' core (the rounds ran 1.6x longer); at
    ``nice`` 10 it still took enough to slow the pool's first rounds by a third (two workers
    and the driver on two cores). With ``awaits=True`` it then waits for
    :meth:`start` to send ``x`` and runs ``work(x)``: ``x`` is pickled, so it should be plain
    data, or a function of plain data (such as
    :meth:`fedlab.config.experiment.Experiment.loader`) that unpickles without what the
    driver imported after the fork.
    """

    def __init__(
        self,
        work: Callable[..., Any],
        name: str,
        imports: Sequence[str] = (),
        awaits: bool = False,
        idle: bool = False,
    ) -> None:
        context = multiprocessing.get_context("fork")
        for stream in (sys.stdout, sys.stderr):  # nothing buffered is written twice
            stream.flush()
        self._conn, theirs = context.Pipe(duplex=False)
        inbox, self._outbox = context.Pipe(duplex=False) if awaits else (None, None)
        ends = None if inbox is None else (inbox, self._outbox)
        self._process = context.Process(
            target=_child, args=(theirs, work, ends, tuple(imports)),
            name=f"fedlab-{name}", daemon=True,
        )  # fmt: skip
        self._process.start()
        if idle:
            _run_when_idle(self._process.pid)
        theirs.close()
        if inbox is not None:
            inbox.close()

    def start(self, given: Any) -> None:
        """Send a child forked with ``awaits=True`` what its work takes; once only."""
        if self._outbox is None:
            raise RuntimeError(f"{self._process.name} awaits nothing, or was started already")
        try:
            self._outbox.send(given)
        except OSError:  # it died meanwhile: result() says how
            pass
        finally:
            self._outbox.close()
            self._outbox = None

    def ready(self) -> bool:
        """Whether the child has sent its result (or died), so :meth:`result` would not wait."""
        return self._conn.poll()

    def result(self) -> Any:
        """The child's result, or its exception raised here; the child is gone afterwards."""
        if not self._conn.poll():  # the driver waits for it now: no longer only idle cycles
            _run_as_usual(self._process.pid)
        try:
            outcome = self._conn.recv()
        except EOFError:  # it died without a word (the OOM killer, a signal)
            self._process.join()
            code = self._process.exitcode
            raise RuntimeError(f"{self._process.name} process died (exit code {code})") from None
        finally:
            self._conn.close()
        self._process.join(timeout=5)  # it exits right after sending
        self.cancel()
        if outcome[0] == "config":
            raise ConfigError(outcome[1], outcome[2])
        if outcome[0] == "error":
            raise outcome[1]
        return outcome[1]

    def cancel(self) -> None:
        """End the child if it still runs (the driver failed or was interrupted meanwhile)."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._conn.close()
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None
