"""Central DP with amplification by client sampling: epsilon against Opacus and dp-accounting
called directly, the issue's published anchors, Poisson sampling rates, budget, resume, audit."""

from __future__ import annotations

import json
import math
import warnings

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import PRVAccountant, RDPAccountant

from fedlab.config.schema import ConfigError
from fedlab.fl.schedule import Scheduler
from fedlab.record.run_dir import read_csv
from fedlab.trackers.privacy.amplified import central_epsilon
from fedlab.trackers.privacy.audit import epsilon_lower_bound, p_value

DELTA = 1e-5


def _opacus(kind: str, z: float, q: float, rounds: int) -> float:
    acc = RDPAccountant() if kind == "rdp" else PRVAccountant()
    acc.history = [(z, q, rounds)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(DELTA))


def _pld_poisson(z: float, q: float, rounds: int) -> float:
    acc = PLDAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds)
    return float(acc.get_epsilon(DELTA))


def _wor(z: float, m: int, n: int, rounds: int) -> float:
    acc = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(n, m, dp_accounting.GaussianDpEvent(z))
    acc.compose(event, rounds)
    return float(acc.get_epsilon(DELTA))


@pytest.mark.parametrize(
    ("accountant", "rounds", "published"),
    [
        ("rdp", 5, 4.54),
        ("prv", 5, 3.89),
        ("pld", 5, None),
        ("rdp", 100, 15.97),
        ("prv", 100, 14.54),
    ],
)
def test_poisson_epsilon_matches_independent_and_published(accountant, rounds, published) -> None:
    ours = central_epsilon([1.0] * rounds, "poisson", 0.2, 10, 50, DELTA, accountant)
    independent = (
        _pld_poisson(1.0, 0.2, rounds)
        if accountant == "pld"
        else _opacus(accountant, 1.0, 0.2, rounds)
    )
    assert ours == pytest.approx(independent, rel=0.01)
    if published is not None:
        assert ours == pytest.approx(published, abs=0.01)
    if accountant == "pld":  # PLD and PRV are both near-exact numerical accountants
        assert ours == pytest.approx(_opacus("prv", 1.0, 0.2, rounds), rel=0.02)


def test_fixed_size_epsilon_is_sampling_without_replacement_replace_one() -> None:
    # Replace-one sensitivity of the mean is 2C/m: config noise 2 is accounted as noise 1,
    # the anchor (10 of 50, 5 rounds, dp-accounting, replace-one): 5.73.
    ours = central_epsilon([2.0 / 2] * 5, "fixed", 0.2, 10, 50, DELTA, "rdp")
    assert ours == pytest.approx(_wor(1.0, 10, 50, 5), rel=0.01)
    assert ours == pytest.approx(5.73, abs=0.01)
    with pytest.raises(ValueError, match="cannot account fixed"):
        central_epsilon([1.0], "fixed", 0.2, 10, 50, DELTA, "prv")


def test_poisson_sampling_draws_each_client_at_the_rate() -> None:
    n, q, rounds = 40, 0.15, 800
    sched = Scheduler(
        seed=3,
        num_clients=n,
        fraction_train=q,
        min_train_clients=1,
        fraction_evaluate=0.0,
        local_epochs=1,
        straggler_fraction=0.0,
        straggler_policy="drop",
        failure_rate=0.0,
        client_sampling="poisson",
    )
    counts = np.zeros(n)
    sizes = []
    for r in range(1, rounds + 1):
        plan = sched.plan(r)
        counts[list(plan.sampled)] += 1
        sizes.append(len(plan.sampled))
        assert plan == sched.plan(r)  # seeded by (seed, round)
    # each client's count is Binomial(rounds, q): within 4.5 sd (all 40, by a union bound)
    sd = math.sqrt(rounds * q * (1 - q))
    assert np.all(np.abs(counts - rounds * q) < 4.5 * sd)
    assert np.mean(sizes) == pytest.approx(n * q, rel=0.05)
    assert len(set(sizes)) > 3  # sizes vary


CENTRAL = (
    "num_clients=20",
    "num_rounds=3",
    "model=logreg",
    "partition=iid",
    "privacy=central",
    "strategy.client_sampling=poisson",
    "strategy.fraction_train=0.3",
    "strategy.fraction_evaluate=0.2",
)


@pytest.mark.parametrize("accountant", ["rdp", "prv", "pld"])
def test_a_poisson_run_reports_the_independent_epsilon(run_inprocess, accountant) -> None:
    _, _, record, _ = run_inprocess(*CENTRAL, f"privacy.accountant={accountant}")
    privacy = record.results["privacy"]
    assert privacy["client_sampling"] == "poisson"
    assert privacy["neighbouring_relation"].startswith("add/remove")
    assert privacy["releases"] == 3
    independent = {
        "rdp": _opacus("rdp", 1.0, 0.3, 3),
        "prv": _opacus("prv", 1.0, 0.3, 3),
        "pld": _pld_poisson(1.0, 0.3, 3),
    }
    assert privacy["epsilon"] == pytest.approx(independent[accountant], rel=0.01)
    for name, eps in privacy["epsilons"].items():
        assert eps == pytest.approx(independent[name], rel=0.01)


def test_an_empty_poisson_round_is_recorded_and_accounted(run_inprocess) -> None:
    # q = 0.05 of 4 clients: most rounds are empty; each still releases noise
    _, _, record, _ = run_inprocess(
        "num_clients=4",
        "num_rounds=4",
        "model=logreg",
        "partition=iid",
        "privacy=central",
        "strategy.client_sampling=poisson",
        "strategy.fraction_train=0.05",
    )
    privacy = record.results["privacy"]
    assert 0 in privacy["clients_per_release"] and privacy["releases"] == 4
    assert privacy["epsilon"] == pytest.approx(_opacus("rdp", 1.0, 0.05, 4), rel=0.01)
    rounds = read_csv(record.dir / "rounds.csv")[1:]  # after round 0, the initial model
    assert [int(r["clients_sampled"]) for r in rounds] == privacy["clients_per_release"]


def test_budget_stops_before_the_round_that_would_exceed_it(run_inprocess) -> None:
    budget = (_opacus("rdp", 1.0, 0.3, 2) + _opacus("rdp", 1.0, 0.3, 3)) / 2
    from fedlab.trackers.base import StopRun

    with pytest.raises(StopRun, match="budget_exhausted"):
        run_inprocess(*CENTRAL, "num_rounds=5", f"privacy.budget_epsilon={budget}")


def test_bad_central_configs_name_their_key(run_inprocess) -> None:
    for extra, key in [
        (("strategy.client_sampling=fixed", "privacy.accountant=prv"), "privacy.accountant"),
        (("strategy.client_sampling=fixed", "privacy.accountant=pld"), "privacy.accountant"),
        (("privacy.budget_epsilon=0.01",), "privacy.budget_epsilon"),
        (("privacy.audit=canaries", "privacy.audit_canaries=21"), "privacy.audit_canaries"),
        (("strategy.fraction_train=1.5",), "strategy.fraction_train"),
    ]:
        with pytest.raises(ConfigError) as err:
            run_inprocess(*CENTRAL, *extra)
        assert err.value.key == key


def test_a_resumed_poisson_run_ends_with_the_same_epsilon(run_inprocess, tmp_path) -> None:
    _, _, whole, _ = run_inprocess(*CENTRAL, "num_rounds=4", run_dir=tmp_path / "whole")
    _, _, part, _ = run_inprocess(*CENTRAL, "num_rounds=2", run_dir=tmp_path / "part")
    run_inprocess(*CENTRAL, "num_rounds=4", resume=tmp_path / "part")
    resumed = json.loads((part.dir / "results.json").read_text())["privacy"]
    assert resumed["releases"] == 4
    assert resumed["epsilon"] == pytest.approx(whole.results["privacy"]["epsilon"], rel=1e-12)


def test_audit_bound_formula() -> None:
    # all r guesses right, delta = 0: P[Bin(r, p) >= r] = p^r = 0.05 -> eps = logit(0.05^(1/r))
    r = 50
    p = 0.05 ** (1 / r)
    assert epsilon_lower_bound(r, r, r, 0.0) == pytest.approx(math.log(p / (1 - p)), rel=1e-6)
    assert p_value(100, 20, 10, 0.0, 0.0) > 0.05  # a coin's score proves nothing
    assert epsilon_lower_bound(100, 20, 10, 1e-5) == 0.0


AUDIT = (
    # one round with everyone (q = 1): every included canary is in, so with no noise all
    # 480 guesses (abstaining on the middle 20) can be right: bound logit(0.05 ** (1 / 480))
    # ~ 5.07 > 4.73 claimed for noise 1
    "num_clients=500",
    "num_rounds=1",
    "model=logreg",
    "partition=iid",
    "privacy=central",
    "strategy.client_sampling=poisson",
    "strategy.fraction_train=1.0",
    "strategy.fraction_evaluate=0.0",
    "client.local_epochs=1",
    "client.lr=1e-6",  # real updates near zero, so each canary's score is its own signal
    "privacy.audit=canaries",
    "privacy.audit_canaries=500",
    "privacy.audit_guesses=240",
    "privacy.audit_guesses_excluded=240",
)


def test_the_audit_catches_a_mechanism_without_noise(run_inprocess, monkeypatch) -> None:
    _, _, honest, _ = run_inprocess(*AUDIT)
    claimed = honest.results["privacy"]["epsilon"]
    audit = honest.results["privacy"]["audit"]
    assert audit["consistent"] and audit["epsilon_lower_bound"] <= claimed

    import fedlab.trackers.privacy.mechanism as mechanism

    monkeypatch.setattr(mechanism, "gaussian_noise", lambda shape, std: np.zeros(shape))
    _, _, broken, _ = run_inprocess(*AUDIT)
    bound = broken.results["privacy"]["audit"]["epsilon_lower_bound"]
    assert bound > claimed  # the accountant claims `claimed` for noise 1: the audit refutes it
