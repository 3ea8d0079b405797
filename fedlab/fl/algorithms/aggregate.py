"""Server-side pieces the stateful algorithms share, on top of Flower's FedAvg.

Flower's ``aggregate_arrayrecords`` sums every ArrayRecord of a reply into one, so a reply that
carries two records (SCAFFOLD's model and control variate) or only part of the model (FedBN,
FedPer, FedRep keep layers at home) needs its own aggregation; the arithmetic below is the
papers' and is written out because Flower offers no such strategy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedlab.fl.model import ndarray_of


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: ndarray_of(v) for k, v in record.items()}


def as_record(arrays: dict[str, np.ndarray], like: ArrayRecord | None = None) -> ArrayRecord:
    """An ArrayRecord of ``arrays``, each cast back to the dtype it has in ``like``."""
    return ArrayRecord(
        {
            k: Array(np.asarray(v, dtype=np.dtype(like[k].dtype) if like and k in like else None))
            for k, v in arrays.items()
        }
    )


def mean(arrays: list[dict[str, np.ndarray]], weights: list[float] | None = None) -> dict:
    """The (weighted) mean of dicts of arrays over the keys of the first, in float64."""
    w = np.full(len(arrays), 1 / len(arrays)) if weights is None else np.asarray(weights)
    w = w / w.sum()
    return {
        k: sum(wi * a[k].astype(np.float64) for wi, a in zip(w, arrays, strict=True))
        for k in arrays[0]
    }


class RememberingFedAvg(FedAvg):
    """FedAvg that keeps the global model it sent this round (``_sent``, private: not
    checkpointed, since every round's ``configure_train`` sets it again) and puts what the
    clients did not send back (their personal layers) into the aggregate unchanged.

    Extra entries for the round's config come from :meth:`round_config`. An algorithm with a
    server rule of its own (SCAFFOLD, FedDyn, FedNova) overrides :meth:`step`: the new global
    model from the one sent and the round's valid replies.
    """

    _sent: ArrayRecord | None = None

    def round_config(self) -> dict[str, Any]:
        return {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = arrays
        config = ConfigRecord({**dict(config), **self.round_config()})
        return super().configure_train(server_round, arrays, config, grid)

    def step(self, sent: dict[str, np.ndarray], replies: list[Message]) -> dict | None:
        """The new global model; None: FedAvg's weighted mean (Flower's own)."""
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = [r for r in replies if not r.has_error()]  # the Grid dropped malformed ones
        if not valid or self._sent is None:
            return super().aggregate_train(server_round, replies)
        new = self.step(as_numpy(self._sent), valid)
        if new is None:
            arrays, metrics = super().aggregate_train(server_round, valid)
            if arrays is None:
                return arrays, metrics
            new = as_numpy(arrays)
        else:
            metrics = self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)
        return as_record({**as_numpy(self._sent), **new}, self._sent), metrics
