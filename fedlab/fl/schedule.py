"""The seeded schedule of a round: who is sampled, who straggles, who fails, who evaluates.

Everything here is a pure function of (seed, round) and the config, so every strategy sees the
same clients and the same stragglers in the same round (as FedProx's original code does by
seeding client selection with the round number), a resumed run replays the same schedule, and
Ray's scheduling order cannot change a result.

The scheduler also keeps the run's simulated clock (:meth:`Scheduler.round_start_s`): rounds of
``hours_per_round`` each, or, with simulated devices (:mod:`fedlab.trackers.devices`), each round as
long as its slowest client takes on its device. Carbon-aware selection reads each client's grid
at that clock, and a deadline turns the clients too slow for it into stragglers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedlab.fl.training import seed_for

if TYPE_CHECKING:
    from fedlab.trackers.devices.fleet import Fleet

_SAMPLE, _STRAGGLE, _FAIL, _EVALUATE = range(4)


@dataclass(frozen=True)
class RoundPlan:
    """The schedule of one round, in partition ids."""

    server_round: int
    sampled: tuple[int, ...]
    epochs: dict[int, float]  # clients that train -> local epochs (stragglers: fewer)
    stragglers: tuple[int, ...]  # dropped or trained partially, by the straggler policy
    dropped: tuple[int, ...]  # stragglers whose work is discarded: they are not trained
    failing: frozenset[int]  # clients that will crash during training
    evaluate: tuple[int, ...]
    missed_deadline: tuple[int, ...] = ()  # stragglers because their device is too slow


@dataclass(frozen=True)
class Scheduler:
    """Builds the :class:`RoundPlan` of any round from the run's settings."""

    seed: int
    num_clients: int
    fraction_train: float
    min_train_clients: int
    fraction_evaluate: float
    local_epochs: int
    straggler_fraction: float
    straggler_policy: str  # "drop" or "partial"
    failure_rate: float
    selection: str = "random"  # or "carbon_aware"
    client_sampling: str = "fixed"  # or "poisson": each client independently at fraction_train
    fairness_floor: float = 0.2
    intensity: Callable[[int, float], float] | None = None  # (client, sim s) -> gCO2e/kWh
    evaluable: tuple[int, ...] | None = None  # clients holding test examples (None: all)
    hours_per_round: float = 1.0  # the simulated clock without devices
    fleet: Fleet | None = None  # simulated devices: round times come from them
    deadline_s: float | None = None  # a client slower than this is a straggler
    _phases: list[tuple[float, float]] = field(default_factory=list, compare=False, repr=False)

    def _rng(self, server_round: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(seed_for(self.seed, server_round, stream))

    def sample_size(self) -> int:
        """Clients sampled per round (fixed-size sampling): ``fraction_train`` of all, at least
        the minimum. Under Poisson sampling this is not a round's size, which varies."""
        wanted = max(self.min_train_clients, int(self.num_clients * self.fraction_train), 1)
        return min(wanted, self.num_clients)

    def expected_per_round(self) -> float:
        """Expected clients sampled per round: ``q * N`` under Poisson sampling, else the size."""
        if self.client_sampling == "poisson":
            return self.fraction_train * self.num_clients
        return float(self.sample_size())

    def trained_per_round(self) -> int:
        """Clients sent a training message each round (sampled minus dropped stragglers);
        under Poisson sampling, of a round of the expected size (rounded)."""
        n = self.sample_size() if self.client_sampling == "fixed" else round(
            self.expected_per_round()
        )
        return round(n * (1 - self.straggler_fraction)) if self.straggler_policy == "drop" else n

    def _select(self, server_round: int) -> np.ndarray:
        """The clients sampled for training.

        ``poisson``: every client independently with probability ``fraction_train`` (the
        sampling that privacy amplification by Poisson subsampling assumes; a round may be
        empty). ``random``: a uniform draw without replacement. ``carbon_aware`` (in the spirit of
        EcoLearn and Lowcarb): ceil(fairness_floor * k) of the k slots are drawn uniformly
        from all clients, so each keeps a chance of at least that share / N per round; the
        rest go to the clients whose grid has the lowest intensity at this round's hour
        (ties in a seeded random order).
        """
        rng = self._rng(server_round, _SAMPLE)
        if self.client_sampling == "poisson":
            return np.flatnonzero(rng.random(self.num_clients) < self.fraction_train)
        k = self.sample_size()
        if self.selection == "random" or self.intensity is None:
            return rng.choice(self.num_clients, k, replace=False)
        fair = rng.choice(self.num_clients, math.ceil(self.fairness_floor * k), replace=False)
        order = rng.permutation(self.num_clients)  # seeded tie-break
        start = self.round_start_s(server_round)
        cleanest = sorted(order, key=lambda c: self.intensity(int(c), start))
        rest = [c for c in cleanest if c not in set(fair.tolist())][: k - len(fair)]
        return np.concatenate([fair, np.asarray(rest, dtype=fair.dtype)])

    def plan(self, server_round: int) -> RoundPlan:
        """The schedule of ``server_round`` (1-based)."""
        sampled = np.sort(self._select(server_round))

        # FedProx: active = choice(selected, round(len * (1 - drop_percent))); the rest straggle.
        rng = self._rng(server_round, _STRAGGLE)
        n_active = round(len(sampled) * (1 - self.straggler_fraction))
        stragglers = set(rng.choice(sampled, len(sampled) - n_active, replace=False).tolist())
        epochs: dict[int, float] = {}
        dropped: list[int] = []
        for pid in sampled.tolist():
            if pid not in stragglers:
                epochs[pid] = float(self.local_epochs)
            elif self.straggler_policy == "drop":
                dropped.append(pid)
            elif self.local_epochs >= 2:  # FedProx: randint(1, E) -> 1..E-1 epochs
                epochs[pid] = float(rng.integers(1, self.local_epochs))
            else:  # with one local epoch, partial work is a random share of that epoch
                epochs[pid] = float(rng.uniform(0.05, 0.95))

        missed: list[int] = []
        if self.fleet is not None and self.deadline_s is not None:
            for pid in sorted(epochs):
                fits = self.fleet.epochs_within(pid, epochs[pid], self.deadline_s)
                if fits == epochs[pid]:
                    continue
                missed.append(pid)
                stragglers.add(pid)
                if self.straggler_policy == "partial" and fits > 0:
                    epochs[pid] = fits  # FedProx: the work that fits is aggregated
                else:
                    del epochs[pid]
                    dropped.append(pid)

        rng = self._rng(server_round, _FAIL)
        trained = sorted(epochs)
        fails = rng.random(len(trained)) < self.failure_rate
        failing = frozenset(pid for pid, f in zip(trained, fails, strict=True) if f)

        evaluate: tuple[int, ...] = ()
        # Federated evaluation draws among the clients that hold test examples: one with none
        # has nothing to report (and an all-empty round would leave nothing to average).
        pool = np.arange(self.num_clients) if self.evaluable is None else np.array(self.evaluable)
        if self.fraction_evaluate > 0 and len(pool):
            n_eval = min(len(pool), max(1, int(self.num_clients * self.fraction_evaluate)))
            rng = self._rng(server_round, _EVALUATE)
            evaluate = tuple(np.sort(rng.choice(pool, n_eval, replace=False)).tolist())
        return RoundPlan(
            server_round=server_round,
            sampled=tuple(sampled.tolist()),
            epochs=epochs,
            stragglers=tuple(sorted(stragglers)),
            dropped=tuple(sorted(dropped)),
            failing=failing,
            evaluate=evaluate,
            missed_deadline=tuple(missed),
        )

    def phases_s(self, server_round: int) -> tuple[float, float]:
        """(training, evaluation) seconds of ``server_round`` on the simulated devices."""
        assert self.fleet is not None, "round phases need simulated devices"
        self.round_start_s(server_round + 1)  # works the clock forward, keeping each round's
        return self._phases[server_round - 1]

    def round_start_s(self, server_round: int) -> float:
        """Simulated seconds from the start of the run to the start of ``server_round``.

        Without devices, ``hours_per_round`` per round. With them, the sum of the earlier
        rounds' device times, worked out forward one round at a time (a round's plan may
        depend on the clock at its start, through carbon-aware selection) and kept.
        """
        if self.fleet is None:
            return (server_round - 1) * self.hours_per_round * 3600.0
        while len(self._phases) < server_round - 1:
            plan = self.plan(len(self._phases) + 1)
            self._phases.append(
                self.fleet.round_seconds(
                    plan.epochs, plan.evaluate, plan.failing, self.deadline_s, plan.missed_deadline
                )
            )
        return math.fsum(sum(p) for p in self._phases[: server_round - 1])
