"""The process-pool engine: the in-process engine's Grid, with the ClientApp calls served by
persistent worker processes on this machine's cores, without Ray (``simulation=pool``).

Why a pool of forked workers rather than Ray or ``concurrent.futures``:

* Workers are **forked** from the driver after torch, Flower and the ClientApp are loaded, so
  a worker starts in milliseconds, imports nothing and needs nothing pickled to build its
  ClientApp (its closures, which do not pickle, are inherited). Each worker stays for the
  whole run, so the data (``load_cached``) and the model template are loaded once per worker,
  not once per message. Ray's actors import torch and Flower afresh (~7 s here) and its
  daemons cost ~2 s to start and ~0.5 GiB.
* ``concurrent.futures.ProcessPoolExecutor`` cannot kill one hung task (a hung worker hangs
  ``shutdown``) and breaks the whole pool when one worker dies; here each worker is a
  :class:`multiprocessing.Process` with its own pipe, so a worker that crashes (its exit is
  seen on its sentinel) or exceeds the round timeout (``simulation.round_timeout_s``, killed)
  becomes an **error reply** for its client and is replaced by a fresh fork, and the round
  goes on with the others, as a client error does on Flower's engine.
* Replies carry the client's update: their arrays' bytes are written into a shared-memory
  block per worker and only their layout travels through the pipe (a reply too large for the
  block falls back to the pipe). Messages to the clients are pickled: the global model is the
  same for every client and a few hundred kB at most for fedlab's models.

Any worker may serve any client: the node's Context travels with each message (and its state
comes back), per-client state of stateful algorithms is on disk, and every draw is seeded
from (seed, round, client), so a run gives the same numbers as in-process and on Ray whichever
worker trains which client (tests/test_engines.py compares them).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedlab.config.schema import SimulationConfig
from fedlab.engines.inprocess import InProcessGrid, run_in_process

log = logging.getLogger("fedlab")

#: Shared memory per worker for its replies' arrays: this many times the largest message sent
#: to it (an update plus an algorithm's extra records, e.g. SCAFFOLD's control variate), and at
#: least :data:`MIN_SHARED_BYTES`.
SHARED_FACTOR = 4
MIN_SHARED_BYTES = 1 << 20
_STOP_GRACE_S = 2.0  # how long a worker may take to leave at the end of the run
_PARENT_CHECK_S = 1.0  # how often an idle worker checks that the driver is still there


def _error(msg: Any, reason: str) -> Any:
    """An error reply to ``msg``, as Flower's engine makes for a failed client."""
    from flwr.app import Error, Message

    return Message(Error(code=2, reason=reason), reply_to=msg)


def _pack(reply: Any, shared: SharedMemory) -> list[tuple[str, str, str, tuple, str, int, int]]:
    """Move the reply's array bytes into ``shared``; return their layout, or [] (and leave the
    reply whole) when they do not fit."""
    if reply.has_error():
        return []
    records = reply.content.array_records
    arrays = [(name, key, a) for name, record in records.items() for key, a in record.items()]
    if sum(len(a.data) for _, _, a in arrays) > shared.size or not arrays:
        return []
    layout, offset = [], 0
    for name, key, a in arrays:
        shared.buf[offset : offset + len(a.data)] = a.data
        layout.append((name, key, a.dtype, tuple(a.shape), a.stype, offset, len(a.data)))
        offset += len(a.data)
    from flwr.app import ArrayRecord

    for name in records:
        reply.content[name] = ArrayRecord()  # emptied: the bytes travel in shared memory
    return layout


def _unpack(reply: Any, layout: list, shared: SharedMemory) -> Any:
    """Put the arrays :func:`_pack` moved into shared memory back into ``reply`` (in order)."""
    from flwr.app import Array, ArrayRecord

    rebuilt: dict[str, dict[str, Any]] = {}
    for name, key, dtype, shape, stype, offset, size in layout:
        data = bytes(shared.buf[offset : offset + size])
        rebuilt.setdefault(name, {})[key] = Array(dtype=dtype, shape=shape, stype=stype, data=data)
    for name, arrays in rebuilt.items():
        reply.content[name] = ArrayRecord(arrays)
    return reply


def _serve(conn: Connection, client_app: ClientApp, shared: SharedMemory, parent: int) -> None:
    """A worker's loop: (message, context) in, (reply, layout, context state) out, until told
    to stop or the driver is gone. Ctrl-C and SIGTERM are the driver's to handle: it ends the
    run and then its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # the driver's handlers came with the fork
    while True:
        if not conn.poll(_PARENT_CHECK_S):
            if os.getppid() != parent:  # the driver died without saying stop
                return
            continue
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        msg, context = item
        try:
            reply = client_app(msg, context)
        except Exception as err:  # a client exception is an error reply, as on Flower's engine
            reply = _error(msg, repr(err))
        layout = _pack(reply, shared)
        conn.send((reply, layout, context.state))


@dataclass(eq=False)  # identity: workers are dict keys
class _Worker:
    """One worker process, the driver's end of its pipe, its shared memory and its job."""

    process: Any
    conn: Connection
    shared: SharedMemory
    job: tuple[Any, float] | None = None  # (message being served, when it was sent)
    served: int = field(default=0)


class PoolGrid(InProcessGrid):
    """A Flower Grid whose ClientApp calls run in ``workers`` forked processes.

    ``send_and_receive`` hands each message to an idle worker with its node's Context and
    collects the replies as they come, until all are in or ``timeout`` passes: a worker still
    busy then is killed and replaced, and its client gets an error reply naming the timeout;
    a worker that dies mid-message (a crash, the OOM killer, SIGKILL) gives its client an
    error reply naming the exit code and is replaced. Every other client's reply is kept.
    """

    def __init__(self, client_app: ClientApp, num_clients: int, workers: int) -> None:
        super().__init__(client_app, num_clients)
        # Every worker's first torch optimizer imports torch._dynamo (torch.optim's lazy
        # ``_disable_dynamo``, ~1 s of CPU): imported once here, each fork inherits it.
        import torch._dynamo  # noqa: F401
        self._mp = multiprocessing.get_context("fork")
        self._shared_bytes = MIN_SHARED_BYTES
        self.workers: list[_Worker] = []
        self.replaced = 0  # workers replaced after a crash or a timeout
        for _ in range(max(1, workers)):
            self.workers.append(self._start(SharedMemory(create=True, size=self._shared_bytes)))

    def _start(self, shared: SharedMemory) -> _Worker:
        """Fork one worker using ``shared`` for its replies."""
        mine, theirs = self._mp.Pipe()
        process = self._mp.Process(
            target=_serve,
            args=(theirs, self.client_app, shared, os.getpid()),
            name="fedlab-pool-worker",
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(process, mine, shared)

    def _replace(self, worker: _Worker, grow_to: int = 0) -> _Worker:
        """Kill ``worker`` (if still alive) and put a fresh one in its place."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        shared = worker.shared
        if grow_to > shared.size:  # a larger model than the block was made for
            _release(shared)
            shared = SharedMemory(create=True, size=grow_to)
        fresh = self._start(shared)
        self.workers[self.workers.index(worker)] = fresh
        return fresh

    def _dispatch(self, worker: _Worker, msg: Any) -> None:
        size = SHARED_FACTOR * sum(
            a.count_bytes() for a in msg.content.array_records.values()
        )
        if size > worker.shared.size:  # forked workers cannot map a new block: start anew
            worker = self._replace(worker, max(size, MIN_SHARED_BYTES))
        context = self.contexts[msg.metadata.dst_node_id]
        worker.conn.send((msg, context))
        worker.job = (msg, time.monotonic())

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        """Serve every message on the workers; return the replies (any order) by ``timeout``."""
        pending = list(messages)
        replies: list[Any] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending or any(w.job for w in self.workers):
            for worker in self.workers:
                if worker.job is None and pending:
                    self._dispatch(worker, pending.pop(0))
            busy = {w.conn: w for w in self.workers if w.job}
            sentinels = {w.process.sentinel: w for w in busy.values()}
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([*busy, *sentinels], timeout=left)
            if not ready:  # the round timeout passed
                for worker in [w for w in self.workers if w.job]:
                    msg = worker.job[0]
                    replies.append(_error(msg, f"no reply within {timeout:g} s "
                                          "(simulation.round_timeout_s); worker replaced"))
                    self.replaced += 1
                    self._replace(worker)
                replies.extend(
                    _error(m, f"not started within {timeout:g} s (simulation.round_timeout_s)")
                    for m in pending
                )
                break
            for worker in dict.fromkeys([*(busy.get(r) for r in ready),
                                         *(sentinels.get(r) for r in ready)]):
                if worker is not None and worker.job is not None:
                    replies.append(self._collect(worker))
        return replies

    def _collect(self, worker: _Worker) -> Any:
        """The reply of a worker whose pipe or sentinel became ready."""
        msg = worker.job[0] if worker.job else None
        worker.job = None
        try:
            if worker.conn.poll():
                reply, layout, state = worker.conn.recv()
                self.contexts[msg.metadata.dst_node_id].state = state
                worker.served += 1
                return _unpack(reply, layout, worker.shared) if layout else reply
        except (EOFError, OSError):
            pass
        worker.process.join()
        code = worker.process.exitcode
        name = signal.Signals(-code).name if code is not None and code < 0 else f"exit {code}"
        self.replaced += 1
        self._replace(worker)
        return _error(msg, f"worker process died ({name}) while serving this client; replaced")

    def close(self) -> None:
        """Stop every worker (asked first, killed after a grace period) and free the memory."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        ends = time.monotonic() + _STOP_GRACE_S
        for worker in self.workers:
            worker.process.join(max(0.0, ends - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
            _release(worker.shared)
        self.workers.clear()


def _release(shared: SharedMemory) -> None:
    """Close and unlink a shared-memory block (its name is this run's alone)."""
    shared.close()
    with contextlib.suppress(FileNotFoundError):
        shared.unlink()


def run_pool(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, sim: SimulationConfig
) -> None:
    """Run one simulation with ``simulation.workers`` worker processes (null: one per usable
    core, at most one per client); a ServerApp exception propagates as raised."""
    from fedlab.engines.auto import usable_cores

    workers = sim.workers if sim.workers is not None else min(usable_cores(), num_clients)
    grid = PoolGrid(client_app, num_clients, workers)
    try:
        run_in_process(server_app, grid)
    finally:
        grid.close()
        if grid.replaced:
            log.warning("fedlab: warning: %d pool workers replaced (crashed or timed out)",
                        grid.replaced)
