"""The fleet: every client's device and link, and what a round costs on them.

The seeded schedule asks the fleet how long a planned round takes (deadline stragglers, the
simulated clock) before the round runs; the :class:`~fedlab.trackers.devices.ledger.DeviceLedger`
prices the round that actually happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from fedlab.trackers.devices.flops import (
    epochs_for_steps,
    examples_processed,
    flops_per_example,
    steps_for,
)
from fedlab.trackers.devices.profiles import (
    Device,
    Link,
    client_devices,
    client_links,
    device_profiles,
    link_profiles,
)


@dataclass(frozen=True)
class PhaseCost:
    """One client's work in one phase of a round, on its device."""

    flops: float
    compute_s: float
    transfer_s: float

    @property
    def busy_s(self) -> float:
        """Seconds the client is busy (transfers and compute, one after the other)."""
        return self.compute_s + self.transfer_s


@dataclass(frozen=True)
class Fleet:
    """Every client's device and link, and the run's per-example work and model payload.

    Built once per run (:meth:`from_config`); the scheduler asks it how long a planned round
    takes, the ``DeviceLedger`` how much energy the round that happened used.
    """

    devices: tuple[Device, ...]  # per client
    links: tuple[Link, ...]  # per client
    train_sizes: tuple[int, ...]
    test_sizes: tuple[int, ...]
    batch_size: int
    poisson: bool  # DP-SGD's Poisson batches
    train_flops: float  # per example, forward + backward
    eval_flops: float  # per example, forward
    model_bytes: int  # one model payload, as the Grid meters it

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        model: nn.Module,
        input_shape: Sequence[int],
        num_classes: int,
        train_sizes: Sequence[int],
        test_sizes: Sequence[int],
        batch_size: int,
        seed: int,
        poisson: bool = False,
    ) -> Fleet:
        """The fleet a :class:`fedlab.config.schema.DevicesConfig` describes, for ``model``."""
        from flwr.app import ArrayRecord

        known_devices = device_profiles(cfg.profiles)
        known_links = link_profiles(cfg.profiles)
        n = len(train_sizes)
        names = client_devices(cfg, n, seed)
        devices = tuple(known_devices[name] for name in names)
        link_names = client_links(cfg, n, seed, names)
        return cls(
            devices=devices,
            links=tuple(known_links[name] for name in link_names),
            train_sizes=tuple(train_sizes),
            test_sizes=tuple(test_sizes),
            batch_size=batch_size,
            poisson=poisson,
            train_flops=flops_per_example(model, input_shape, num_classes, train=True),
            eval_flops=flops_per_example(model, input_shape, num_classes, train=False),
            model_bytes=ArrayRecord(model.state_dict()).count_bytes(),
        )

    def train_cost(self, client: int, steps: int) -> PhaseCost:
        """Receiving the model, ``steps`` local steps, sending the update back."""
        examples = examples_processed(
            self.train_sizes[client], self.batch_size, steps, poisson=self.poisson
        )
        flops = examples * self.train_flops
        return PhaseCost(
            flops=flops,
            compute_s=self.devices[client].compute_s(flops),
            transfer_s=self.links[client].seconds(self.model_bytes, self.model_bytes),
        )

    def evaluate_cost(self, client: int) -> PhaseCost:
        """Receiving the model and a forward pass over the client's test examples."""
        flops = self.test_sizes[client] * self.eval_flops
        return PhaseCost(
            flops=flops,
            compute_s=self.devices[client].compute_s(flops),
            transfer_s=self.links[client].seconds(self.model_bytes, 0),
        )

    def train_seconds(self, client: int, epochs: float) -> float:
        """Seconds the client's training phase takes for ``epochs`` local epochs."""
        steps = steps_for(epochs, self.train_sizes[client], self.batch_size)
        return self.train_cost(client, steps).busy_s

    def epochs_within(self, client: int, epochs: float, deadline_s: float) -> float:
        """The most of ``epochs`` the client finishes, transfers included, by ``deadline_s``.

        Whole local steps only; 0.0 when not even one step fits.
        """
        n = self.train_sizes[client]
        planned = steps_for(epochs, n, self.batch_size)
        if self.train_cost(client, planned).busy_s <= deadline_s:
            return epochs
        low, high = 0, planned  # train_cost grows with steps: bisect the last one that fits
        while low < high:
            mid = (low + high + 1) // 2
            if self.train_cost(client, mid).busy_s <= deadline_s:
                low = mid
            else:
                high = mid - 1
        return epochs_for_steps(low, n, self.batch_size) if low else 0.0

    def round_seconds(
        self,
        epochs: Mapping[int, float],
        evaluate: Sequence[int],
        failing: frozenset[int] = frozenset(),
        deadline_s: float | None = None,
        missed: Sequence[int] = (),
    ) -> tuple[float, float]:
        """(training phase, evaluation phase) seconds of a planned round.

        Training lasts until the slowest trained client is done, or the deadline when a
        client missed it (the server stops waiting then). A client told to fail crashes on
        receipt and does not hold the round up.
        """
        times = [self.train_seconds(c, e) for c, e in epochs.items() if c not in failing]
        train = max(times, default=0.0)
        if deadline_s is not None and missed:
            train = max(train, deadline_s)
        evaluation = max((self.evaluate_cost(c).busy_s for c in evaluate), default=0.0)
        return train, evaluation
