"""The seeded round schedule: sampling, FedProx stragglers, failures, carbon-aware selection."""

from __future__ import annotations

import math

import numpy as np

from fedlab.fl.schedule import Scheduler

BASE = dict(seed=0, num_clients=20, fraction_train=0.25, min_train_clients=1,
            fraction_evaluate=0.5, local_epochs=5, straggler_fraction=0.4,
            straggler_policy="partial", failure_rate=0.1)


def test_plans_are_pure_functions_of_seed_and_round() -> None:
    a, b = Scheduler(**BASE), Scheduler(**BASE)
    assert a.plan(3) == b.plan(3)
    assert a.plan(3) != a.plan(4)
    assert Scheduler(**{**BASE, "seed": 1}).plan(3) != a.plan(3)


def test_sample_sizes_and_straggler_counts() -> None:
    s = Scheduler(**BASE)
    for r in range(1, 30):
        plan = s.plan(r)
        assert len(plan.sampled) == 5 and len(set(plan.sampled)) == 5
        assert len(plan.stragglers) == 5 - round(5 * 0.6)  # FedProx's rule
        assert all(1 <= plan.epochs[c] <= 4 for c in plan.stragglers)  # 1..E-1 epochs
        assert len(plan.evaluate) == 10
        assert plan.failing <= set(plan.epochs)


def test_failure_rate_is_about_right_over_many_rounds() -> None:
    s = Scheduler(**{**BASE, "failure_rate": 0.3, "straggler_fraction": 0.0})
    failed = sum(len(s.plan(r).failing) for r in range(1, 401))
    assert abs(failed / (400 * 5) - 0.3) < 0.04


def _intensity(client: int, server_round: int) -> float:
    return float(client * 10)  # client 0 is cleanest


def test_carbon_aware_prefers_clean_grids_but_keeps_everyone() -> None:
    s = Scheduler(**{**BASE, "straggler_fraction": 0.0, "selection": "carbon_aware",
                     "fairness_floor": 0.2, "intensity": _intensity})
    counts = np.zeros(20)
    for r in range(1, 301):
        sampled = set(s.plan(r).sampled)
        assert len(sampled) == 5
        # k - ceil(0.2 k) = 4 slots go to the cleanest clients the fairness draw left,
        # so the 4 cleanest are always in, whoever the fairness draw picked
        assert set(range(5 - math.ceil(0.2 * 5))) <= sampled
        counts[list(sampled)] += 1
    assert counts[:4].min() == 300  # the four cleanest always train
    assert counts[4:].min() > 0  # the fairness floor reaches everyone
    random = Scheduler(**{**BASE, "straggler_fraction": 0.0})
    mean_random = np.mean([np.mean([_intensity(c, r) for c in random.plan(r).sampled])
                           for r in range(1, 301)])
    mean_aware = np.mean([np.mean([_intensity(c, r) for c in s.plan(r).sampled])
                          for r in range(1, 301)])
    assert mean_aware < 0.5 * mean_random
