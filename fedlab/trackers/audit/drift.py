"""Per-round drift: how far each client's update lands from the aggregate, and how much the
labels the round trained on moved since the previous round.

* ``update_distance`` (``clients.csv``, the client's train row): the L2 distance between the
  weights a client sent back and the new global model, over every parameter and buffer of the
  model. A client far from the aggregate either holds data unlike the others' (label skew
  pulls its local optimum away) or is misbehaving; the round's mean and max
  (``rounds.csv``) show whether the federation is converging towards one model.
* ``label_shift_tv`` (``rounds.csv``): the total variation distance between the label
  histogram of the round's participating training data (the clients whose update was
  accepted) and that of the previous round, ``0.5 * sum_c |p_c - q_c|`` in [0, 1].

**Clients' data are static in fedlab's partitions** (:class:`fedlab.data.partition.
FederatedData` fixes each client's examples once): a label shift between rounds comes only from
*who* is sampled, fails or straggles, never from a client's data changing. With every client
in every round (``fraction_train=1``, no failures) it is 0.

Why by hand with numpy: the distance is one vectorised norm over Flower's arrays, and no
library offers it over an ``ArrayRecord``; fetching the arrays is the only cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array

from fedlab.fl.model import ndarray_of

#: The ``ArrayRecord`` of a training reply that holds the model (fedlab's ClientApp's name).
MODEL_RECORD = "arrays"


def flat_arrays(arrays: Any) -> dict[str, np.ndarray]:
    """An ``ArrayRecord`` (or a mapping of numpy arrays) as name -> float64 array: integer
    buffers count as numbers, so every entry of a state dict enters the distance."""
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        array = ndarray_of(value, writable=False) if isinstance(value, Array) else value
        out[key] = np.asarray(array, dtype=np.float64)
    return out


def model_record(records: Mapping[str, Any]) -> Any | None:
    """The model's ``ArrayRecord`` in a reply's array records: ``"arrays"``, or the only
    one; None when there is none to compare."""
    if MODEL_RECORD in records:
        return records[MODEL_RECORD]
    if len(records) == 1:
        return next(iter(records.values()))
    return None


def update_distance(client: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray]) -> float:
    """L2 distance between two flattened models (:func:`flat_arrays`) over the aggregate's
    entries; NaN when they do not have the same entries and shapes (nothing comparable)."""
    if set(client) != set(aggregate):
        return math.nan
    total = 0.0
    for key, target in aggregate.items():
        mine = np.asarray(client[key], dtype=np.float64)
        if mine.shape != np.shape(target):
            return math.nan
        total += float(np.sum(np.square(mine - np.asarray(target, dtype=np.float64))))
    return math.sqrt(total)


def label_histogram(label_counts: Any, clients: Iterable[int]) -> np.ndarray | None:
    """The normalised label histogram of ``clients``' training data; ``label_counts[pid]`` is
    a client's examples per class (a row of :meth:`FederatedData.label_counts`, or a mapping
    filled on demand); None when they hold no example."""
    ids = sorted(set(clients))
    if not ids:
        return None
    counts = np.sum([np.asarray(label_counts[pid], dtype=np.float64) for pid in ids], axis=0)
    total = counts.sum()
    return counts / total if total > 0 else None


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance of two distributions over the same classes, in [0, 1]."""
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


class DriftLedger:
    """The drift figures of a run so far, and what the next round compares with (the
    previous round's histogram): all of it JSON-able for the checkpoint."""

    def __init__(self) -> None:
        self.previous: list[float] | None = None  # last round's label histogram
        self.distance_sum: dict[str, float] = {}  # client id (str: JSON keys) -> sum
        self.distance_count: dict[str, int] = {}
        self.max_distance: float | None = None
        self.max_distance_at: dict[str, int] | None = None  # {"round", "client"}
        self.shifts: list[float] = []

    def end_round(
        self,
        server_round: int,
        distances: Mapping[int, float],
        histogram: np.ndarray | None,
    ) -> dict[str, Any]:
        """Record one round (``distances``: client -> update distance); its round columns.

        Clients are taken in id order, not in the order their replies came (which differs
        from run to run on the process pool), so that every sum, and so every figure, is the
        same whichever engine ran and however its workers were scheduled.
        """
        finite = {pid: d for pid, d in sorted(distances.items()) if math.isfinite(d)}
        for pid, d in finite.items():
            key = str(pid)
            self.distance_sum[key] = self.distance_sum.get(key, 0.0) + d
            self.distance_count[key] = self.distance_count.get(key, 0) + 1
            if self.max_distance is None or d > self.max_distance:
                self.max_distance = d
                self.max_distance_at = {"round": server_round, "client": pid}
        shift = None
        if histogram is not None:
            if self.previous is not None and len(self.previous) == len(histogram):
                shift = total_variation(histogram, np.asarray(self.previous))
                self.shifts.append(shift)
            self.previous = [float(v) for v in histogram]
        values = list(finite.values())
        return {
            "update_distance_mean": float(np.mean(values)) if values else None,
            "update_distance_max": max(values) if values else None,
            "label_shift_tv": shift,
        }

    def summary(self) -> dict[str, Any]:
        by_client = {
            k: self.distance_sum[k] / self.distance_count[k] for k in sorted(self.distance_sum,
                                                                             key=int)
        }
        client_rounds = sum(self.distance_count.values())
        return {
            "update_distance": {
                "mean": sum(self.distance_sum[k] for k in by_client) / client_rounds  # id order
                if client_rounds else None,
                "max": self.max_distance,
                "max_at": self.max_distance_at,
                "client_rounds": client_rounds,
                "by_client_mean": by_client,
                "farthest_client": max(by_client, key=by_client.__getitem__) if by_client else None,
            },
            "label_shift_tv": {
                "mean": float(np.mean(self.shifts)) if self.shifts else None,
                "max": max(self.shifts) if self.shifts else None,
                "rounds": len(self.shifts),
            },
            "note": "clients' data are static in fedlab's partitions: the label shift between "
            "rounds comes from which clients were sampled and succeeded, not from data changing",
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "previous": self.previous,
            "distance_sum": dict(self.distance_sum),
            "distance_count": dict(self.distance_count),
            "max_distance": self.max_distance,
            "max_distance_at": self.max_distance_at,
            "shifts": list(self.shifts),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.previous = None if state["previous"] is None else list(state["previous"])
        self.distance_sum = {str(k): float(v) for k, v in state["distance_sum"].items()}
        self.distance_count = {str(k): int(v) for k, v in state["distance_count"].items()}
        self.max_distance = state["max_distance"]
        self.max_distance_at = state["max_distance_at"]
        self.shifts = [float(v) for v in state["shifts"]]
