"""Strategies are judged by what they declare, not by what they are called.

A strategy added by one YAML file (in a config directory of its own, found through
``hydra.searchpath``) must get the same decisions as a shipped one: central DP reads
``strategy.aggregate`` and the Byzantine-robust client count reads
``strategy.min_clients_per_round``; neither looks at the Flower class name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from fedlab.config.experiment import Experiment
from fedlab.config.schema import ConfigError
from fedlab.fl.strategy import build_strategy
from fedlab.trackers.privacy.central import central_dp_strategy

EXE = Path(sys.executable).parent / "fedlab-run"

MEDIAN = "flower:\n  _target_: flwr.serverapp.strategy.FedMedian\n"
MEAN = "flower:\n  _target_: flwr.serverapp.strategy.FedAvg\naggregate: weighted_mean\n"
KRUM = (
    "flower:\n  _target_: flwr.serverapp.strategy.Krum\n  num_malicious_nodes: 1\n"
    "aggregate: krum\n"
)
REFUSED = (
    "strategy.aggregate: central DP cannot be combined with 'median' (strategy "
    "'robust_median'): the DP wrapper's noise (std z*C/m) covers a mean of m clipped updates, "
    "which one client moves by at most C/m, and this aggregate is not such a mean, so the "
    "reported epsilon would not hold; allowed: weighted_mean (fedavg, fedprox, fedavgm, "
    "fedadam, fedyogi, fedadagrad)"
)
UNDECLARED = (
    "strategy.aggregate: not declared by strategy 'undeclared_median', and central DP needs it: "
    "its noise (std z*C/m) is calibrated to a mean of the clipped updates, so declare what "
    "the strategy aggregates in its YAML (central DP allows: weighted_mean)"
)
MEAN_AGGREGATES = {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"}
# personalized algorithms whose client update refuses central DP (docs/algorithms.md)
PERSONAL_LAYERS = {"ditto", "fedbn", "fedper", "fedrep"}
SHIPPED = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "strategy").glob("*.yaml"))


@pytest.fixture()
def conf_dir(tmp_path: Path) -> Path:
    """A config directory of the user's own, with the strategies above in it."""
    strategy = tmp_path / "conf" / "strategy"
    strategy.mkdir(parents=True)
    for name, body in {
        "robust_median": MEDIAN + "aggregate: median\n",
        "undeclared_median": MEDIAN,
        "my_mean": MEAN,
        "my_krum": KRUM,
        "my_krum_bound": KRUM + "min_clients_per_round: {base: 3, per_malicious: 2}\n",
    }.items():
        (strategy / f"{name}.yaml").write_text(f"name: {name}\n{body}")
    return tmp_path / "conf"


@pytest.fixture()
def compose_with(compose_cfg, conf_dir: Path) -> Callable[..., DictConfig]:
    """``compose_cfg`` with the user's config directory on Hydra's search path."""
    return lambda *overrides: compose_cfg(f"hydra.searchpath=[file://{conf_dir}]", *overrides)


def _fedlab_run(conf_dir: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(EXE), f"hydra.searchpath=[file://{conf_dir}]", f"hydra.run.dir={run_dir}", *overrides],
        cwd=run_dir.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _refused(compose_with, *overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(compose_with(*overrides))
    assert "\n" not in str(err.value)
    return err.value


# ---------------------------------------------------------------- central DP


@pytest.mark.parametrize(
    ("strategy", "expected"), [("robust_median", REFUSED), ("undeclared_median", UNDECLARED)]
)
def test_central_dp_refuses_a_yaml_median_in_one_line(
    conf_dir: Path, tmp_path: Path, strategy: str, expected: str
) -> None:
    """(a) declared median, (b) undeclared: refused at start-up, exit 2, no record."""
    run_dir = tmp_path / "run"
    result = _fedlab_run(conf_dir, run_dir, f"strategy={strategy}", "privacy=central")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"fedlab-run: error: {expected}"]
    assert "Traceback" not in result.stderr + result.stdout
    assert not run_dir.exists() or not any(run_dir.iterdir())  # no record, no config.yaml


def test_undeclared_strategy_is_refused_only_with_central_dp(compose_with) -> None:
    """(b) in-process: the key is named; without central DP the YAML strategy runs as is."""
    err = _refused(compose_with, "strategy=undeclared_median", "privacy=central")
    assert err.key == "strategy.aggregate"
    assert str(err).startswith("strategy.aggregate: not declared by strategy 'undeclared_median'")
    for privacy in ("none", "local"):
        Experiment.from_config(compose_with("strategy=undeclared_median", f"privacy={privacy}"))


def test_a_declared_weighted_mean_is_wrapped(compose_with) -> None:
    """(c) a FedAvg-like strategy from a YAML file gets Flower's DP wrapper (fedlab accounts)."""
    exp = Experiment.from_config(compose_with("strategy=my_mean", "privacy=central"))
    cfg = exp.cfg
    wrapped = central_dp_strategy(
        build_strategy(cfg.strategy), cfg.privacy, cfg.strategy, 10, cfg.num_clients
    )
    assert type(wrapped).__name__ == "DifferentialPrivacyServerSideFixedClipping"
    assert wrapped.num_sampled_clients == 10  # noise z*C/m on the mean of the m sampled


def test_a_declared_weighted_mean_runs_with_central_dp(conf_dir: Path, tmp_path: Path) -> None:
    """(c) end to end: the run completes, its epsilon is three releases of the mean of all 4
    clients (4 of 4 without replacement), noise 1.5 on a replace-one sensitivity of 2C/m."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    run_dir = tmp_path / "run"
    result = _fedlab_run(
        conf_dir,
        run_dir,
        "strategy=my_mean",
        "privacy=central",
        "privacy.noise_multiplier=1.5",
        "num_clients=4",
        "num_rounds=3",
        "model.hidden=[16]",
        "partition=iid",
        "simulation=inprocess",
        "carbon=off",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    privacy = json.loads((run_dir / "results.json").read_text())["privacy"]
    accountant = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    gaussian = dp_accounting.GaussianDpEvent(1.5 / 2)
    accountant.compose(dp_accounting.SampledWithoutReplacementDpEvent(4, 4, gaussian), 3)
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=0.01)


@pytest.mark.parametrize("strategy", SHIPPED)
def test_shipped_strategies_keep_their_central_dp_decision(compose_cfg, strategy: str) -> None:
    """The six mean-type strategies are allowed; median, trimmed mean, the Krum family and
    q-FedAvg (its loss-weighted step is not the mean the noise is sized for) are refused."""
    cfg = compose_cfg(f"strategy={strategy}", "privacy=central")
    if strategy in MEAN_AGGREGATES | {"moon", "finetune"}:
        assert cfg.strategy.aggregate == "weighted_mean"
        Experiment.from_config(cfg)
        return
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(cfg)
    if strategy in PERSONAL_LAYERS:  # a mean, but of models whose personal part stays home
        assert cfg.strategy.aggregate == "weighted_mean" and err.value.key == "privacy.mode"
        assert "defined for privacy=none" in str(err.value)
        return
    assert err.value.key == "strategy.aggregate"
    assert f"'{cfg.strategy.aggregate}' (strategy '{strategy}')" in str(err.value)


def test_every_shipped_strategy_declares_its_aggregate(compose_cfg) -> None:
    assert len(SHIPPED) == 21
    for strategy in SHIPPED:
        assert compose_cfg(f"strategy={strategy}").strategy.aggregate is not None, strategy


def test_an_unknown_aggregate_is_refused(compose_cfg) -> None:
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(compose_cfg("strategy.aggregate=mean"))
    assert err.value.key == "strategy.aggregate" and "weighted_mean" in str(err.value)


# ---------------------------------------------------------------- Byzantine-robust bound


def test_krum_bound_comes_from_the_declaration(compose_with) -> None:
    """(d) the same Flower class with and without a declared bound; a changed bound."""
    err = _refused(compose_with, "strategy=my_krum_bound", "num_clients=4")
    assert err.key == "strategy.flower.num_malicious_nodes"
    assert "my_krum_bound with 1 malicious nodes needs at least 5 clients per round" in str(err)
    assert "(strategy.min_clients_per_round: 2f + 3)" in str(err)
    Experiment.from_config(compose_with("strategy=my_krum", "num_clients=4"))  # no bound declared
    Experiment.from_config(compose_with("strategy=krum", "num_clients=5"))  # shipped: 2f + 3 = 5
    err = _refused(
        compose_with, "strategy=krum", "num_clients=5", "strategy.min_clients_per_round.base=4"
    )
    assert "needs at least 6 clients per round" in str(err)
    err = _refused(compose_with, "strategy=bulyan", "num_clients=6")  # shipped: 4f + 3 = 7
    assert "needs at least 7 clients per round" in str(err)


def test_a_fixed_bound_names_its_own_key(compose_with) -> None:
    err = _refused(
        compose_with,
        "strategy=my_krum",
        "num_clients=4",
        "+strategy.min_clients_per_round.base=5",
    )
    assert err.key == "strategy.min_clients_per_round"
    err = _refused(compose_with, "strategy=krum", "+strategy.min_clients_per_round.f=2")
    assert err.key == "strategy.min_clients_per_round"


# ---------------------------------------------------------------- no import cycle


def test_config_validation_does_not_import_the_trackers() -> None:
    """The privacy value rules live in fedlab.config: checking a config imports no tracker,
    no Opacus and no torch (config -> trackers -> config was a cycle)."""
    code = (
        "import sys\n"
        "from fedlab.config.schema import PrivacyConfig\n"
        "PrivacyConfig(mode='local')\n"
        "PrivacyConfig(mode='central')\n"
        "heavy = ('fedlab.trackers', 'opacus', 'torch')\n"
        "loaded = [m for m in sys.modules if m.startswith(heavy)]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
