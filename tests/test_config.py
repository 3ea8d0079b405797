"""Every file in conf/ composes and validates; the schema rejects bad values by key."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedlab.config.experiment import Experiment
from fedlab.config.schema import ClientConfig, ConfigError, FedlabConfig, SimulationConfig

CONF = Path(__file__).resolve().parents[1] / "conf"

GROUPS = ["dataset", "partition", "model", "strategy", "client", "simulation", "devices"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compatible(group: str, option: str) -> list[str]:
    """Overrides that make a group option usable (e.g. natural partitions need user ids)."""
    if group == "partition" and option == "natural":
        return ["dataset=synthetic", "num_clients=30"]
    if group == "dataset" and option in ("synthetic", "synthetic_iid"):
        return ["partition=natural"]
    if group == "dataset" and option == "femnist":
        return ["partition=natural"]
    return []


def test_every_group_option_is_exercised() -> None:
    assert len(OPTIONS) >= 30  # 7 datasets, 5 partitions, 3 models, 12 strategies, ...
    assert {"fedavg", "fedprox", "bulyan", "qfedavg"} <= {o for g, o in OPTIONS if g == "strategy"}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_option_composes_and_validates(compose_cfg, group: str, option: str) -> None:
    cfg = compose_cfg(f"{group}={option}", *_compatible(group, option))
    OmegaConf.resolve(cfg)
    exp = Experiment.from_config(cfg)
    assert isinstance(exp.cfg, FedlabConfig)
    assert exp.scheduler().sample_size() >= 1


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_preset_composes(compose_cfg, name: str) -> None:
    exp = Experiment.from_config(compose_cfg(f"experiment={name}"))
    assert exp.cfg.num_rounds >= 1


def test_synthetic_protocol_matches_the_paper(compose_cfg) -> None:
    exp = Experiment.from_config(compose_cfg("experiment=fedprox_synthetic"))
    c = exp.cfg
    assert (c.num_clients, c.client.lr, c.client.batch_size, c.client.local_epochs) == (
        30,
        0.01,
        10,
        20,
    )
    assert exp.scheduler().sample_size() == 10
    assert c.strategy.flower["proximal_mu"] == 1.0 and exp.straggler_policy == "partial"
    fedavg = Experiment.from_config(compose_cfg("experiment=fedavg_synthetic"))
    assert fedavg.straggler_policy == "drop" and "proximal_mu" not in fedavg.cfg.strategy.flower


def test_defaults(compose_cfg) -> None:
    exp = Experiment.from_config(compose_cfg())
    d = exp.describe()
    assert (d["dataset"], d["partition"], d["model"], d["strategy"]) == (
        "digits",
        "DirichletPartitioner",
        "MLP",
        "fedavg",
    )
    assert (d["num_clients"], d["num_rounds"]) == (10, 10)


BAD = [
    (("num_clients=0",), "num_clients"),
    (("num_rounds=0",), "num_rounds"),
    (("seed=-1",), "seed"),
    (("strategy.fraction_train=1.5",), "strategy.fraction_train"),
    (("strategy.fraction_train=0",), "strategy.fraction_train"),
    (("strategy.fraction_evaluate=-0.1",), "strategy.fraction_evaluate"),
    (("client.lr=0",), "client.lr"),
    (("client.batch_size=0",), "client.batch_size"),
    (("client.optimizer=rmsprop",), "client.optimizer"),
    (("stragglers.fraction=1.0",), "stragglers.fraction"),
    (("failures.rate=-0.1",), "failures.rate"),
    (("simulation.client_cpus=0",), "simulation.client_cpus"),
    (
        ("dataset=synthetic", "partition=natural", "num_clients=30", "dataset.beta=-1"),
        "dataset.beta",
    ),
    (("dataset.test_fraction=1.0",), "dataset.test_fraction"),
    (("strategy=fedprox", "strategy.flower.proximal_mu=-1"), "strategy.flower.proximal_mu"),
    (("strategy=fedadam", "strategy.flower.beta_1=1.0"), "strategy.flower.beta_1"),
    (("strategy=bulyan", "num_clients=5"), "strategy.flower.num_malicious_nodes"),
    (
        ("strategy=krum", "strategy.flower.num_malicious_nodes=4"),
        "strategy.flower.num_malicious_nodes",
    ),
    (("strategy.flower._target_=flwr.serverapp.strategy.Nope",), "strategy.flower._target_"),
    (("dataset._target_=fedlab.fl.model.MLP",), "dataset._target_"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_name_their_key(compose_cfg, overrides: tuple[str, ...], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(compose_cfg(*overrides))
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ")
    assert "\n" not in str(err.value)


def test_dataclasses_check_ranges_when_built_directly() -> None:
    with pytest.raises(ConfigError, match=r"client\.momentum"):
        ClientConfig(momentum=1.0)
    with pytest.raises(ConfigError, match=r"simulation\.ray_num_cpus"):
        SimulationConfig(ray_num_cpus=0)


@pytest.mark.parametrize("dataset", ["synthetic", "synthetic_iid", "iris"])
def test_dataset_recommendations_apply_and_say_so(compose_cfg, dataset: str) -> None:
    """conf/recommended/<dataset>.yaml: the values it sets are the ones its `recommended`
    block declares (so the record's `applied` is true by default), and a command-line value
    wins over them."""
    from fedlab.run import recommended_settings

    said = recommended_settings(compose_cfg(f"dataset={dataset}"))
    assert said["source"] and said["settings"]
    assert all(s["applied"] for s in said["settings"].values()), said
    key = next(iter(said["settings"]))
    value = said["settings"][key]["recommended"]
    other = recommended_settings(compose_cfg(f"dataset={dataset}", f"{key}={value * 2}"))
    assert other["settings"][key] == {"recommended": value, "used": value * 2, "applied": False}
