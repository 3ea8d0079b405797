"""Private runs end to end (in-process): the epsilon in the record equals an independent
recomputation with Opacus' accountants from what the record says happened."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import RDPAccountant

from fedlab.config.experiment import Experiment
from fedlab.config.schema import ConfigError
from fedlab.record.run_dir import read_csv

SMALL = ("num_clients=4", "num_rounds=3", "model.hidden=[16]", "partition=iid")


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = list(history)
    return accountant.get_epsilon(delta)


def test_local_dp_epsilon_is_recomputable_from_the_record(run_inprocess) -> None:
    _, _, record, _ = run_inprocess(*SMALL, "privacy=local", "privacy.noise_multiplier=1.2")
    rows = [
        r for r in read_csv(record.dir / "clients.csv") if r["phase"] == "train" and r["dp_steps"]
    ]
    by_client: dict[str, list[tuple[float, float, int]]] = {}
    for r in rows:
        by_client.setdefault(r["client"], []).append(
            (float(r["dp_noise_multiplier"]), float(r["dp_sample_rate"]), int(r["dp_steps"]))
        )
    expected = {c: _rdp_epsilon(h, 1e-5) for c, h in by_client.items()}
    privacy = record.results["privacy"]
    assert privacy["mode"] == "local" and privacy["unit"] == "record"
    assert privacy["epsilon"] == pytest.approx(max(expected.values()), rel=1e-9)
    for client, eps in privacy["client_epsilons"].items():
        assert eps == pytest.approx(expected[client], rel=1e-9)
    # steps are what DP-SGD over Poisson batches takes: local_epochs * ceil(n / batch)
    for r in rows:
        n, batch, epochs = int(r["num_examples"]), 32, 2
        assert int(r["dp_steps"]) == epochs * -(-n // batch)
        assert float(r["dp_sample_rate"]) == pytest.approx(1 / -(-n // batch))
    epsilons = [float(r["epsilon"]) for r in read_csv(record.dir / "rounds.csv")]
    assert epsilons == sorted(epsilons) and epsilons[-1] == pytest.approx(privacy["epsilon"])


def _wor_epsilon(noises: list[float], m: int, n: int, delta: float) -> float:
    """dp-accounting's RDP of sampling m of n without replacement, replace-one neighbours."""
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    for z in noises:
        gaussian = dp_accounting.GaussianDpEvent(z)
        accountant.compose(dp_accounting.SampledWithoutReplacementDpEvent(n, m, gaussian))
    return accountant.get_epsilon(delta)


def test_central_dp_epsilon_matches_dp_accounting(run_inprocess) -> None:
    _, _, record, _ = run_inprocess(*SMALL, "privacy=central", "privacy.noise_multiplier=1.5")
    privacy = record.results["privacy"]
    assert privacy["unit"] == "user" and privacy["client_sampling"] == "fixed"
    assert privacy["neighbouring_relation"] == "replace one client"
    # Three releases of the clipped mean of 4 of 4: replace-one sensitivity 2C/m, noise z*C/m.
    independent = _wor_epsilon([1.5 / 2] * 3, 4, 4, 1e-5)
    assert privacy["epsilon"] == pytest.approx(independent, rel=0.01)


def test_central_dp_with_a_failed_client_accounts_the_weaker_release(run_inprocess) -> None:
    _, _, record, _ = run_inprocess(
        "num_clients=6",
        "num_rounds=3",
        "model.hidden=[16]",
        "partition=iid",
        "privacy=central",
        "failures.rate=0.2",
    )
    rounds = read_csv(record.dir / "rounds.csv")[1:]
    aggregated = [int(r["clients_succeeded"]) for r in rounds]
    assert min(aggregated) < 6  # the seeded schedule made someone fail
    noises = [1.0 * n / (2 * 6) for n in aggregated]  # replace-one: z * n / (2 m)
    privacy = record.results["privacy"]
    assert privacy["accountant"].startswith("dp-accounting RDP")
    assert privacy["epsilon"] == pytest.approx(_wor_epsilon(noises, 6, 6, 1e-5), rel=1e-6)


def test_target_epsilon_chooses_the_noise(run_inprocess) -> None:
    _, _, record, _ = run_inprocess(*SMALL, "privacy=local", "privacy.target_epsilon=4")
    privacy = record.results["privacy"]
    assert privacy["target_epsilon"] == 4.0
    assert 3.8 <= privacy["epsilon"] <= 4.0
    assert privacy["noise_multiplier"] > 1.0


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("privacy=central", "strategy=fedmedian"), "strategy.aggregate"),
        (("privacy=central", "strategy=qfedavg"), "strategy.aggregate"),
        (("privacy=local", "privacy.accountant=gdp"), "privacy.accountant"),
        (("privacy=local", "privacy.target_epsilon=-1"), "privacy.target_epsilon"),
        (("privacy=central", "privacy.accountant=prv"), "privacy.accountant"),
        (("privacy=local", "privacy.noise_multiplier=-1"), "privacy.noise_multiplier"),
        (("privacy=local", "privacy.delta=1.5"), "privacy.delta"),
        (("privacy=local", "privacy.grad_sample_mode=magic"), "privacy.grad_sample_mode"),
        (
            ("privacy=local", "privacy.accountant=prv", "privacy.conversion=classic"),
            "privacy.conversion",
        ),
    ],
)
def test_bad_privacy_settings(compose_cfg, overrides, key) -> None:
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(compose_cfg(*overrides))
    assert err.value.key == key


def test_unreachable_target_epsilon(compose_cfg) -> None:
    exp = Experiment.from_config(
        compose_cfg(*SMALL, "privacy=local", "privacy.target_epsilon=0.0001")
    )
    with pytest.raises(ConfigError) as err:
        exp.prepare()
    assert err.value.key == "privacy.target_epsilon"
    central = Experiment.from_config(
        compose_cfg(*SMALL, "privacy=central", "privacy.target_epsilon=0.001")
    )
    with pytest.raises(ConfigError) as err:
        central.prepare()
    assert err.value.key == "privacy.target_epsilon"


def test_delta_rule_warns(compose_cfg) -> None:
    exp = Experiment.from_config(compose_cfg(*SMALL, "privacy=central", "privacy.delta=0.5"))
    _, warnings = exp.prepare()
    assert len(warnings) == 1 and "delta" in warnings[0] and "0.5" in warnings[0]
