"""The seeded schedule of a round: who is sampled, who straggles, who fails, who evaluates.

Everything here is a pure function of (seed, round) and the config, so every strategy sees the
same clients and the same stragglers in the same round (as FedProx's original code does by
seeding client selection with the round number), a resumed run replays the same schedule, and
Ray's scheduling order cannot change a result.

The scheduler also keeps the run's simulated clock (:meth:`Scheduler.round_time`): rounds of
``clock.round_hours`` each, or, with simulated devices (:mod:`fedlab.trackers.devices`), each round
as long as its slowest client takes on its device; a temporal policy (:mod:`fedlab.fl.shifting`)
may make a round wait for a cleaner hour, and availability windows for enough clients.
Carbon-aware selection reads each client's grid forecast at that clock, and a device deadline
turns the clients too slow for it into stragglers. The clock is worked out forward one round at
a time (a round's plan may depend on the time it starts) and is, like the plans, a pure function
of the config: a resumed run and a replay (:mod:`fedlab.trackers.carbon.replay`) see the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fedlab.fl.training import seed_for

if TYPE_CHECKING:
    from fedlab.fl.shifting import Availability, Signal, TemporalPolicy
    from fedlab.trackers.devices.fleet import Fleet

_SAMPLE, _STRAGGLE, _FAIL, _EVALUATE = range(4)
#: How far the clock steps while it waits for enough available clients, and the longest wait.
_AVAILABILITY_STEP_S = 900.0
_AVAILABILITY_WAIT_S = 7 * 86400.0


class NoClientsAvailable(ValueError):
    """No time within a week of a round's planned start has enough clients available."""


def sample_size(num_clients: int, fraction_train: float, min_train_clients: int) -> int:
    """Clients a round samples (fixed-size sampling): ``fraction_train`` of all, at least the
    minimum and one, at most all."""
    wanted = max(min_train_clients, int(num_clients * fraction_train), 1)
    return min(wanted, num_clients)


@dataclass(frozen=True)
class RoundTime:
    """A round's place on the simulated clock, in seconds since ``clock.start``."""

    wait_s: float  # from the end of the previous round (or the clock's start) to this start
    start_s: float
    train_s: float
    evaluate_s: float

    @property
    def end_s(self) -> float:
        """When the round's evaluation ends."""
        return self.start_s + self.train_s + self.evaluate_s


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
    round_s: float = 3600.0  # a round's duration on the simulated clock without devices
    fleet: Fleet | None = None  # simulated devices: round times come from them
    deadline_s: float | None = None  # a client slower than this is a straggler
    num_rounds: int | None = None  # what a temporal policy plans for
    policy: TemporalPolicy | None = None  # when rounds run (None: back to back)
    signal: Signal | None = None  # the forecast a policy minimises
    availability: Availability | None = None  # who can train when (None: always everyone)
    start_epoch: float | None = None  # clock.start as POSIX seconds (None: undated)
    _times: list[RoundTime] = field(default_factory=list, compare=False, repr=False)
    _plans: dict[int, RoundPlan] = field(default_factory=dict, compare=False, repr=False)

    def _rng(self, server_round: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(seed_for(self.seed, server_round, stream))

    def sample_size(self) -> int:
        """Clients sampled per round (fixed-size sampling): ``fraction_train`` of all, at least
        the minimum. Under Poisson sampling this is not a round's size, which varies."""
        return sample_size(self.num_clients, self.fraction_train, self.min_train_clients)

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

    def available(self, start_s: float) -> np.ndarray | None:
        """Clients available at ``start_s`` on the simulated clock (None: every client)."""
        if self.availability is None or self.start_epoch is None:
            return None
        return np.asarray(self.availability.available_clients(self.start_epoch + start_s), int)

    def _select(self, server_round: int, start_s: float) -> np.ndarray:
        """The clients sampled for training.

        ``poisson``: every client independently with probability ``fraction_train`` (the
        sampling that privacy amplification by Poisson subsampling assumes; a round may be
        empty). ``random``: a uniform draw without replacement. ``carbon_aware`` (in the spirit of
        EcoLearn and Lowcarb): ceil(fairness_floor * k) of the k slots are drawn uniformly
        from all clients, so each keeps a chance of at least that share / N per round; the
        rest go to the clients whose grid has the lowest intensity at this round's hour
        (ties in a seeded random order), by the forecast at the round's start.

        With availability windows only the clients available at the round's start are drawn
        from (all of them when fewer are available than a round samples).
        """
        rng = self._rng(server_round, _SAMPLE)
        pool = self.available(start_s)
        if self.client_sampling == "poisson":
            drawn = np.flatnonzero(rng.random(self.num_clients) < self.fraction_train)
            return drawn if pool is None else np.intersect1d(drawn, pool)
        k = self.sample_size()
        if pool is None:
            pool = np.arange(self.num_clients)
            if self.selection == "random" or self.intensity is None:
                return rng.choice(self.num_clients, k, replace=False)
        k = min(k, len(pool))
        if self.selection == "random" or self.intensity is None:
            return rng.choice(pool, k, replace=False)
        fair = rng.choice(pool, math.ceil(self.fairness_floor * k), replace=False)
        order = rng.permutation(pool)  # seeded tie-break
        cleanest = sorted(order, key=lambda c: self.intensity(int(c), start_s))
        rest = [c for c in cleanest if c not in set(fair.tolist())][: k - len(fair)]
        return np.concatenate([fair, np.asarray(rest, dtype=fair.dtype)])

    def plan(self, server_round: int) -> RoundPlan:
        """The schedule of ``server_round`` (1-based)."""
        found = self._plans.get(server_round)
        if found is None:
            found = self._plan_at(server_round, self.round_time(server_round).start_s)
            self._plans[server_round] = found
        return found

    def _plan_at(self, server_round: int, start_s: float) -> RoundPlan:
        """The schedule of ``server_round`` if it started at ``start_s`` on the clock."""
        sampled = np.sort(self._select(server_round, start_s))

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
        present = self.available(start_s)
        if present is not None:
            pool = np.intersect1d(pool, present)
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
        """(training, evaluation) seconds of ``server_round`` on the simulated clock."""
        time = self.round_time(server_round)
        return time.train_s, time.evaluate_s

    def round_start_s(self, server_round: int) -> float:
        """Simulated seconds from ``clock.start`` to the start of ``server_round``."""
        return self.round_time(server_round).start_s

    def round_time(self, server_round: int) -> RoundTime:
        """Where ``server_round`` lies on the simulated clock (worked out forward and kept)."""
        while len(self._times) < server_round:
            self._times.append(self._next_time(len(self._times) + 1))
        return self._times[server_round - 1]

    def _duration(self, plan: RoundPlan) -> tuple[float, float]:
        """(training, evaluation) seconds of a planned round: its devices' time, else the
        configured round duration (all of it training)."""
        if self.fleet is None:
            return self.round_s, 0.0
        return self.fleet.round_seconds(
            plan.epochs, plan.evaluate, plan.failing, self.deadline_s, plan.missed_deadline
        )

    def _next_time(self, server_round: int) -> RoundTime:
        """Place ``server_round`` after the previous one: the policy's start (on the round's
        duration as planned from the earliest start), then, with availability windows, the
        first quarter hour from there when enough clients are available."""
        now = self._times[-1].end_s if self._times else 0.0
        start = now
        if self.policy is not None and self.signal is not None and self.num_rounds is not None:
            estimate = sum(self._duration(self._plan_at(server_round, now)))
            remaining = max(1, self.num_rounds - server_round + 1)
            start = self.policy.next_start(
                now, remaining, estimate, self.signal, first=server_round == 1
            )
        needed = min(max(1, self.min_train_clients), self.num_clients)
        waited = 0.0
        while (pool := self.available(start)) is not None and len(pool) < needed:
            if waited >= _AVAILABILITY_WAIT_S:
                raise NoClientsAvailable(
                    f"clock.availability: round {server_round} finds fewer than {needed} "
                    "clients available within 7 days of its planned start"
                )
            start += _AVAILABILITY_STEP_S
            waited += _AVAILABILITY_STEP_S
        train, evaluation = self._duration(self._plan_at(server_round, start))
        return RoundTime(start - now, start, train, evaluation)
