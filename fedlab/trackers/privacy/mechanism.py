"""Central DP under Poisson client sampling: noise on the sum, scaled by the expected size.

Flower's server-side fixed clipping adds noise of std ``z * C / m`` to the *mean* of the
replies, with m fixed at construction. Under Poisson sampling the round size n varies, so
that mean (sum / n) has no fixed sensitivity and the accounting of Poisson subsampling would
not hold. This module's wrapper releases instead, every round (McMahan et al., ICLR 2018,
DP-FedAvg's fixed-denominator estimator)::

    new = current + (sum of the clipped updates + N(0, (z C)^2)) / (q N)

The sum moves by at most C when one client is added or removed, so each round is exactly one
Poisson-subsampled Gaussian of noise multiplier z under add/remove-one neighbours, whoever
answered and however many were drawn (:mod:`fedlab.trackers.privacy.amplified` accounts it).
An empty round still runs the mechanism: the model moves by noise alone. The strategy under
the wrapper sees each clipped update scaled by n / (q N), so its (equal-weight) mean is the
estimator above and a server optimiser post-processes it as with Flower's wrapper.

Canary clients for the one-run audit (:mod:`fedlab.trackers.privacy.audit`) are virtual
users whose update is C times a known random direction; each is in the population with
probability 1/2 and, when it is, drawn by the same Poisson sampling as everyone else.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from fedlab.fl.training import seed_for
from fedlab.trackers.privacy.audit import canary_directions

_CANARY_STREAM = 7  # seed_for(seed, round, stream): the canaries' Poisson draws


def gaussian_noise(shape: tuple[int, ...], std: float) -> np.ndarray:
    """The mechanism's noise (numpy's global generator, which the Grid seeds every round).

    One function so that a test can replace it to check that the audit catches a mechanism
    that silently adds none.
    """
    return np.random.normal(0.0, std, shape)


class Canaries:
    """The audit's canary users: who is included, their directions, how often each was drawn."""

    def __init__(self, count: int, seed: int, rate: float) -> None:
        self.count, self.seed, self.rate = count, seed, rate
        self.included = np.random.default_rng(seed_for(seed, 0, _CANARY_STREAM)).random(count) < 0.5
        self.directions: np.ndarray | None = None  # known once the model's size is
        self.initial: np.ndarray | None = None
        self.latest: np.ndarray | None = None

    def drawn(self, server_round: int) -> np.ndarray:
        """Indices of the included canaries the round's Poisson sampling drew."""
        rng = np.random.default_rng(seed_for(self.seed, server_round, _CANARY_STREAM))
        return np.flatnonzero(self.included & (rng.random(self.count) < self.rate))

    def sum_of_updates(self, server_round: int, dimension: int, clip: float) -> np.ndarray:
        """The drawn canaries' clipped updates, summed (C times their directions)."""
        if self.directions is None:
            self.directions = canary_directions(
                self.count, dimension, seed_for(self.seed, 0, _CANARY_STREAM + 1)
            )
        return clip * self.directions[self.drawn(server_round)].sum(axis=0)

    def scores(self) -> np.ndarray:
        """Each canary's score: its coefficient in the least-squares fit of the model's total
        change by all canary directions (the inner product with its own direction, corrected
        for the other canaries' overlap, which in a model of few parameters is not small)."""
        if self.directions is None or self.initial is None or self.latest is None:
            return np.zeros(self.count)
        change = self.latest - self.initial
        return np.linalg.lstsq(self.directions.T, change, rcond=None)[0]


class ExpectedSizeServerSideClipping(DifferentialPrivacyServerSideFixedClipping):
    """Server-side fixed clipping with noise on the sum, for Poisson client sampling."""

    def __init__(
        self,
        strategy: Any,
        noise_multiplier: float,
        clipping_norm: float,
        expected_clients: float,
        canaries: Canaries | None = None,
    ) -> None:
        super().__init__(
            strategy,
            noise_multiplier=noise_multiplier,
            clipping_norm=clipping_norm,
            num_sampled_clients=max(1, round(expected_clients)),
        )
        self.expected_clients = float(expected_clients)
        self.canaries = canaries

    def __repr__(self) -> str:
        return "Differential Privacy Strategy Wrapper (noise on the sum / expected clients)"

    # The model a round starts from is set by every configure_train: kept out of the
    # checkpoint's strategy state (a private name), since a resumed round sets it again.
    @property
    def current_arrays(self) -> ArrayRecord:
        return self._current_arrays

    @current_arrays.setter
    def current_arrays(self, arrays: ArrayRecord) -> None:
        self._current_arrays = arrays

    def aggregate_train(
        self, server_round: int, replies: Any
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, sum, add noise ``z C``, divide by the expected count; the same in every round."""
        replies_list: list[Message] = list(replies)
        current = self.current_arrays
        keys = list(current.keys())
        base = [np.asarray(a, dtype=np.float64) for a in current.to_numpy_ndarrays()]
        shapes, sizes = [a.shape for a in base], [a.size for a in base]
        flat_base = np.concatenate([a.ravel() for a in base])
        scale = len(replies_list) / self.expected_clients
        for reply in replies_list:
            for name, record in reply.content.array_records.items():
                update = _flat(record) - flat_base
                update *= min(1.0, self.clipping_norm / max(float(np.linalg.norm(update)), 1e-12))
                # the inner strategy's equal-weight mean of these is current + sum / (q N)
                reply.content[name] = _record(keys, flat_base + update * scale, shapes, sizes)
        extra = gaussian_noise(flat_base.shape, self.noise_multiplier * self.clipping_norm)
        if self.canaries is not None:
            if self.canaries.initial is None:
                self.canaries.initial = flat_base.copy()
            extra += self.canaries.sum_of_updates(server_round, flat_base.size, self.clipping_norm)
        metrics = None
        released = flat_base
        if replies_list:  # an empty round aggregates nothing: the release is noise alone
            aggregated, metrics = self.strategy.aggregate_train(server_round, replies_list)
            released = flat_base if aggregated is None else _flat(aggregated)
        released = released + extra / self.expected_clients
        if self.canaries is not None:
            self.canaries.latest = released.copy()
        return _record(keys, released, shapes, sizes), metrics


def _flat(record: ArrayRecord) -> np.ndarray:
    arrays = record.to_numpy_ndarrays()
    return np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in arrays])


def _record(
    keys: list[str], flat: np.ndarray, shapes: list[tuple[int, ...]], sizes: list[int]
) -> ArrayRecord:
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return ArrayRecord(
        {
            k: Array(np.asarray(p.reshape(s), dtype=np.float32))
            for k, p, s in zip(keys, parts, shapes, strict=True)
        }
    )
