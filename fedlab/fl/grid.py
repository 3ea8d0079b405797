"""The Grid fedlab hands to Flower's strategies: Flower's own Grid plus the run's schedule.

Flower strategies sample nodes with ``random.sample`` over random node ids and send every node
the same message. A serious experiment needs more, and the Grid is the one place every
strategy (and every DP wrapper around one) goes through, so fedlab wraps it instead of
rewriting strategies:

* sampling follows the seeded :class:`~fedlab.fl.schedule.RoundPlan` (strategies only ever see
  the nodes planned for the current round and phase, through :meth:`FedlabGrid.view`);
* per-client instructions are added to the outgoing messages (partial epochs for FedProx
  stragglers, injected failures);
* bytes down and up are metered from the messages' array payloads;
* replies are checked (errors, missing replies, NaN or wrongly shaped updates become failures
  and are left out) and returned sorted by partition id, so floating-point aggregation is the
  same whatever order Ray finished the clients in;
* every client's outcome is kept as a row for ``clients.csv``;
* messages go out longest job first (the examples a client's phase goes through, times its
  epochs): an engine serving them in that order on several workers (the pool, Ray) ends the
  round sooner. This is list scheduling's LPT rule, within 4/3 of the shortest possible
  round where an arbitrary order can take up to twice as long (Graham, 1969); Flower sends
  them in its sampling order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import getLogger
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedlab.fl.client_app import FAIL_KEY
from fedlab.fl.model import ndarray_of
from fedlab.fl.schedule import RoundPlan, Scheduler
from fedlab.fl.training import seed_for

log = getLogger(__name__)


@dataclass
class RoundTally:
    """What happened to each client in the current round (rows of ``clients.csv``)."""

    server_round: int
    plan: RoundPlan
    started: float = field(default_factory=time.perf_counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    # partition id -> the arrays of its accepted training reply (references, dropped with the
    # tally at the next round): what trackers compare with the aggregate
    updates: dict[int, Any] = field(default_factory=dict)

    def count(self, phase: str, status: str) -> int:
        return sum(1 for r in self.rows if r["phase"] == phase and r["status"] == status)

    def total(self, phase: str, key: str) -> float:
        return sum(r.get(key) or 0 for r in self.rows if r["phase"] == phase)

    def weighted(self, phase: str, key: str) -> float | None:
        """Mean of ``key`` over successful replies weighted by their examples (Flower's rule)."""
        ok = [r for r in self.rows if r["phase"] == phase and r["status"] == "ok"]
        n = sum(r["num_examples"] for r in ok)
        return sum(r[key] * r["num_examples"] for r in ok) / n if n else None


class _PhaseView:
    """The Grid as a strategy sees it while configuring one phase of one round."""

    def __init__(self, grid: FedlabGrid, node_ids: list[int]) -> None:
        self._grid = grid
        self._node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class FedlabGrid:
    """Wraps a Flower :class:`Grid` with fedlab's schedule, metering and reply checks."""

    def __init__(
        self,
        grid: Grid,
        scheduler: Scheduler,
        reply_metrics: dict[str, str] | None = None,
        examples: Callable[[int, str], int] | None = None,
    ) -> None:
        self._grid = grid
        # (partition id, phase) -> the examples that phase goes through: the send order
        self.examples = examples
        self.scheduler = scheduler
        # reply metric key -> clients.csv column, asked for by the trackers (DP-SGD's steps...)
        self.reply_metrics = dict(reply_metrics or {})
        self.node_of: dict[int, int] = {}  # partition id -> node id
        self.partition_of: dict[int, int] = {}
        self.tally: RoundTally | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def connect(self, num_clients: int, timeout_s: float) -> None:
        """Wait for every SuperNode, then learn which partition each node holds.

        The ServerApp starts before the simulated SuperNodes register, and Flower would sample
        from whoever is there; a query message to every node returns its partition id. A Grid
        that holds its nodes' Contexts itself (``contexts``: node id -> Context, as fedlab's
        in-process engine does) already knows every node's ``partition-id``: it is read from
        there, because a query per node costs a ClientApp call each (10,000 clients: seconds
        on the in-process engine, minutes as Ray actor calls) before the first round.
        """
        deadline = time.monotonic() + timeout_s
        while len(nodes := list(self._grid.get_node_ids())) < num_clients:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(nodes)} of {num_clients} clients connected within {timeout_s:g} s "
                    "(simulation.connect_timeout_s)"
                )
            time.sleep(0.05)
        contexts = getattr(self._grid, "contexts", None)
        if isinstance(contexts, dict):
            self.node_of = {
                int(ctx.node_config["partition-id"]): node for node, ctx in contexts.items()
            }
            nodes = []
        queries = [
            Message(content=RecordDict(), dst_node_id=node, message_type="query") for node in nodes
        ]
        for reply in self._grid.send_and_receive(queries, timeout=timeout_s) if queries else ():
            if reply.has_error():
                raise RuntimeError(f"a client failed to start: {reply.error.reason}")
            pid = int(reply.content["info"]["partition-id"])
            self.node_of[pid] = reply.metadata.src_node_id
        missing = sorted(set(range(num_clients)) - set(self.node_of))
        if missing:
            raise RuntimeError(f"no node answered for partitions {missing[:10]}")
        self.partition_of = {node: pid for pid, node in self.node_of.items()}

    def view(self, server_round: int, phase: str) -> _PhaseView:
        """The nodes a strategy may sample for ``phase`` ("train" or "evaluate") this round."""
        if phase == "train":
            # Flower's DP wrappers draw their noise from numpy's global generator: seed it per
            # round so private runs are reproducible too.
            np.random.seed(seed_for(self.scheduler.seed, server_round, 5) % 2**32)
            self.tally = RoundTally(server_round, self.scheduler.plan(server_round))
            for pid in self.tally.plan.dropped:
                self.tally.rows.append(_row(server_round, pid, "train", "dropped"))
            pids = sorted(self.tally.plan.epochs)
        else:
            assert self.tally is not None and self.tally.server_round == server_round
            pids = list(self.tally.plan.evaluate)
        return _PhaseView(self, [self.node_of[pid] for pid in pids])

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Send with per-client instructions; return the valid replies sorted by partition id."""
        assert self.tally is not None, "strategies must configure rounds through view()"
        plan = self.tally.plan
        outgoing: list[Message] = []
        sent: dict[int, tuple[str, int, dict[tuple[str, str], tuple[int, ...]]]] = {}
        for msg in messages:
            pid = self.partition_of[msg.metadata.dst_node_id]
            content = msg.content
            if msg.metadata.message_type == "train":
                config = ConfigRecord(dict(content["config"]))
                config["local-epochs"] = plan.epochs[pid]
                config[FAIL_KEY] = pid in plan.failing
                content = RecordDict({**content, "config": config})
                msg = Message(
                    content=content, dst_node_id=msg.metadata.dst_node_id, message_type="train"
                )
            arrays = content.array_records
            down = sum(a.count_bytes() for a in arrays.values())
            shapes = {(name, k): v.shape for name, a in arrays.items() for k, v in a.items()}
            sent[pid] = (msg.metadata.message_type, down, shapes)
            outgoing.append(msg)
        if not outgoing:
            return []
        if self.examples is not None:  # longest job first (the module's docstring says why)
            outgoing.sort(key=lambda m: -self._work(m, plan))

        replies = list(self._grid.send_and_receive(outgoing, timeout=timeout))
        valid: list[tuple[int, Message]] = []
        answered: set[int] = set()
        for reply in replies:
            pid = self.partition_of[reply.metadata.src_node_id]
            answered.add(pid)
            phase, down, shapes = sent[pid]
            row = _row(self.tally.server_round, pid, phase, "ok", bytes_down=down)
            if reply.has_error():
                row.update(status="failed", error=_first_line(reply.error.reason))
            else:
                arrays = reply.content.array_records
                row["bytes_up"] = sum(a.count_bytes() for a in arrays.values())
                problem = _check_update(arrays, shapes) if phase == "train" else None
                if problem:
                    row.update(status="failed", error=problem)
                metrics = next(iter(reply.content.metric_records.values()), {})
                row.update(_metric_columns(phase, metrics, self.reply_metrics))
            self.tally.rows.append(row)
            if row["status"] == "ok":
                valid.append((pid, reply))
                if phase == "train":
                    self.tally.updates[pid] = reply.content.array_records
        for pid in sorted(set(sent) - answered):
            self.tally.rows.append(
                _row(
                    self.tally.server_round,
                    pid,
                    sent[pid][0],
                    "failed",
                    bytes_down=sent[pid][1],
                    error=f"no reply within {timeout:g} s",
                )
            )
        return [reply for _, reply in sorted(valid, key=lambda item: item[0])]

    def _work(self, msg: Message, plan: RoundPlan) -> float:
        """How much a message asks of its client: examples, times epochs for training."""
        assert self.examples is not None
        pid, phase = self.partition_of[msg.metadata.dst_node_id], msg.metadata.message_type
        return self.examples(pid, phase) * (plan.epochs.get(pid, 1) if phase == "train" else 1)


def _row(server_round: int, pid: int, phase: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "round": server_round,
        "client": pid,
        "phase": phase,
        "status": status,
        "bytes_down": 0,
        "bytes_up": 0,
        **extra,
    }


def _first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error"


def _check_update(arrays: Any, shapes: dict[tuple[str, str], tuple[int, ...]]) -> str | None:
    """Why an update must not be aggregated (an entry the server did not send, a wrong shape,
    NaN/inf), or None. A client may send back only part of what it got: algorithms that keep
    layers at home (FedBN, FedPer) do, and the strategy fills in the rest."""
    received = {(name, k): v for name, a in arrays.items() for k, v in a.items()}
    if not received:
        return "malformed update: no arrays"
    for (name, key), array in received.items():
        if (name, key) not in shapes:
            return f"malformed update: {name}/{key} is not an entry the server sent"
        if tuple(array.shape) != tuple(shapes[name, key]):
            return (
                f"malformed update: {key} has shape {tuple(array.shape)}, "
                f"expected {shapes[name, key]}"
            )
        if not np.isfinite(ndarray_of(array, writable=False)).all():
            return f"malformed update: {key} contains NaN or inf"
    return None


_TRAIN_COLUMNS = {
    "train-examples": "num_examples",
    "local-epochs": "local_epochs",
    "local-steps": "local_steps",
    "train_loss": "train_loss",
    "duration-s": "duration_s",
    "cpu-s": "cpu_s",
}
_EVALUATE_COLUMNS = {
    "num-examples": "num_examples",
    "loss": "loss",
    "accuracy": "accuracy",
    "personal-loss": "personal_loss",
    "personal-accuracy": "personal_accuracy",
    "duration-s": "duration_s",
    "cpu-s": "cpu_s",
}


def _metric_columns(phase: str, metrics: Any, extra: dict[str, str]) -> dict[str, Any]:
    columns = (_TRAIN_COLUMNS if phase == "train" else _EVALUATE_COLUMNS) | extra
    return {col: metrics[key] for key, col in columns.items() if key in metrics}
