"""Partitions come from flwr-datasets' partitioners and are checked for sense."""

from __future__ import annotations

import numpy as np
import pytest

from fedlab.config.schema import ConfigError
from fedlab.data.datasets.sklearn import Digits
from fedlab.data.datasets.synthetic import Synthetic
from fedlab.data.partition import FederatedData, partition, plot_label_distribution

DIGITS = Digits().load(seed=0)
P = "flwr_datasets.partitioner."


def _split(spec: dict, n: int = 10, data=DIGITS, test_fraction: float = 0.2) -> FederatedData:
    return partition(data, spec, n, seed=0, client_test_fraction=test_fraction)


@pytest.mark.parametrize(
    "spec",
    [
        {"_target_": P + "IidPartitioner"},
        {"_target_": P + "DirichletPartitioner", "alpha": 0.5, "min_partition_size": 10},
        {"_target_": P + "PathologicalPartitioner", "num_classes_per_partition": 2},
        {"_target_": P + "ShardPartitioner", "num_shards_per_partition": 2},
    ],
)
def test_partitions_are_disjoint_and_nonempty(spec: dict) -> None:
    fed = _split(spec)
    rows = np.concatenate([*fed.client_train, *fed.client_test])
    assert len(rows) == len(np.unique(rows))  # no example held twice
    assert all(len(t) > 0 for t in fed.client_train)
    if spec["_target_"].endswith(("IidPartitioner", "DirichletPartitioner")):
        assert len(rows) == len(DIGITS.pool)  # these use every example


def test_iid_gives_equal_sizes_and_all_classes() -> None:
    fed = _split({"_target_": P + "IidPartitioner"})
    sizes = [len(a) + len(b) for a, b in zip(fed.client_train, fed.client_test, strict=True)]
    assert max(sizes) - min(sizes) <= 1
    assert (fed.label_counts() > 0).all()


def test_pathological_limits_classes_per_client() -> None:
    fed = _split({"_target_": P + "PathologicalPartitioner", "num_classes_per_partition": 2})
    assert ((fed.label_counts() > 0).sum(axis=1) <= 2).all()


def test_dirichlet_alpha_controls_skew() -> None:
    def skew(alpha: float) -> float:
        counts = _split(
            {"_target_": P + "DirichletPartitioner", "alpha": alpha, "min_partition_size": 0}
        ).label_counts()
        shares = counts / counts.sum(axis=1, keepdims=True)
        return float(shares.max(axis=1).mean())

    assert skew(0.1) > skew(100.0) + 0.3


def test_natural_partition_is_one_client_per_user() -> None:
    data = Synthetic(num_users=12).load(seed=0)
    fed = _split({"_target_": P + "NaturalIdPartitioner", "partition_by": "user"}, 12, data)
    for pid in range(12):
        rows = np.concatenate([fed.client_train[pid], fed.client_test[pid]])
        assert len(np.unique(data.pool.users[rows])) == 1


def test_client_test_split_fraction() -> None:
    fed = _split({"_target_": P + "IidPartitioner"}, 5, test_fraction=0.25)
    for train, test in zip(fed.client_train, fed.client_test, strict=True):
        assert len(test) == int((len(train) + len(test)) * 0.25)


@pytest.mark.filterwarnings("ignore:The specified min_partition_size")
@pytest.mark.parametrize(
    ("spec", "n", "key"),
    [
        ({"_target_": P + "IidPartitioner"}, 5000, "num_clients"),
        ({"_target_": P + "DirichletPartitioner", "alpha": 0.0}, 10, "partition.alpha"),
        ({"_target_": P + "DirichletPartitioner", "alpha": -1}, 10, "partition.alpha"),
        ({"_target_": P + "NaturalIdPartitioner", "partition_by": "user"}, 10, "partition"),
        (
            {"_target_": P + "PathologicalPartitioner", "num_classes_per_partition": 0},
            10,
            "partition.num_classes_per_partition",
        ),
        (
            {"_target_": P + "DirichletPartitioner", "alpha": 0.5, "min_partition_size": 500},
            10,
            "num_clients",  # the message names a client count that works (or other ways out)
        ),
    ],
)
def test_impossible_partitions_are_config_errors(spec: dict, n: int, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _split(spec, n)
    assert err.value.key == key and "\n" not in str(err.value)


def test_natural_needs_num_clients_equal_to_users() -> None:
    with pytest.raises(ConfigError, match=r"num_clients: .* has 12 users; set num_clients=12"):
        _split(
            {"_target_": P + "NaturalIdPartitioner", "partition_by": "user"},
            10,
            Synthetic(num_users=12).load(seed=0),
        )


def test_save_load_round_trip_and_plot(tmp_path) -> None:
    fed = _split({"_target_": P + "DirichletPartitioner", "alpha": 0.3})
    fed.save(tmp_path / "f.npz")
    back = FederatedData.load(tmp_path / "f.npz")
    assert back.input_shape == fed.input_shape and back.num_classes == 10
    for a, b in zip(fed.client_train, back.client_train, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(back.test.x, fed.test.x)
    plot_label_distribution(fed, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- lazily generated federations (dataset.lazy=true) -----------------------------------

NATURAL = {"_target_": P + "NaturalIdPartitioner", "partition_by": "user"}


def test_lazy_clients_equal_the_materialized_pool(tmp_path) -> None:
    from fedlab.data.partition import LazyFederatedData, lazy_federation

    spec = Synthetic(num_users=15, lazy=True)
    fed = lazy_federation(spec, NATURAL, 15, seed=3, client_test_fraction=0.2)
    pool = spec.load(seed=3).pool  # every user at once, from the same per-user streams
    sizes = [len(a) + len(b) for a, b in zip(fed.client_train, fed.client_test, strict=True)]
    assert len(pool) == sum(sizes)
    fed.save(tmp_path / "fed.npz")
    again = FederatedData.load(tmp_path / "fed.npz")
    assert isinstance(again, LazyFederatedData)
    for pid in range(15):
        train, test = again.client(pid)
        assert np.array_equal(train.x, pool.x[fed.client_train[pid]])
        assert np.array_equal(test.y, pool.y[fed.client_test[pid]])
        assert set(pool.users[fed.client_train[pid]]) == {pid}  # one user per client
        assert len(test) == int((len(train) + len(test)) * 0.2)
    assert np.array_equal(again.test.x, fed.test.x)
    assert (fed.label_counts().sum(axis=1) == [len(i) for i in fed.client_train]).all()


def test_lazy_sizes_follow_the_recipe_without_generating() -> None:
    spec = Synthetic(num_users=2000, lazy=True, max_test_examples=500)
    n_train, n_test = spec.user_sizes(seed=0)
    sizes = n_train + n_test
    assert sizes.min() >= 50  # int(lognormal(4, 2)) + 50
    assert abs(np.median(np.log(sizes - 50 + 0.5)) - 4) < 0.2  # median of lognormal(4, 2)
    assert (np.abs(n_test - 0.1 * sizes) <= 0.5 + 1e-9).all()
    test = spec.central_test(seed=0)
    assert len(test) == 500 and test.x.shape == (500, 60)  # a capped sample of the union
    one = spec.user_examples(seed=0, k=7, part="train")
    assert len(one) == n_train[7] and (one.users == 7).all()


def test_lazy_needs_the_natural_partition() -> None:
    from fedlab.data.partition import lazy_federation

    with pytest.raises(ConfigError, match="partition=natural"):
        lazy_federation(Synthetic(num_users=5, lazy=True), {"_target_": P + "IidPartitioner"},
                        5, 0, 0.2)
    with pytest.raises(ConfigError, match="num_clients=5"):
        lazy_federation(Synthetic(num_users=5, lazy=True), NATURAL, 6, 0, 0.2)


def test_lazy_run_trains_only_sampled_clients_without_a_handshake(run_inprocess) -> None:
    _, fed, record, grid = run_inprocess(
        "experiment=fedprox_synthetic", "+dataset.lazy=true", "num_clients=200",
        "num_rounds=2", "strategy.fraction_train=0.05", "strategy.fraction_evaluate=0.05",
        "client.local_epochs=1", "client.batch_size=50", "stragglers.fraction=0",
        "trackers.audit.drift=false", "trackers.audit.fairness=false",
        "trackers.audit.explanations=false",
    )
    kinds = [m.metadata.message_type for m in grid.sent]
    assert "query" not in kinds  # the in-process Grid's contexts gave the partition ids
    assert kinds.count("train") == 2 * 10 and kinds.count("evaluate") == 2 * 10
    from fedlab.record.run_dir import read_csv

    rows = read_csv(record.dir / "clients.csv")
    assert len(rows) == 2 * (10 + 10)  # record rows only for the sampled clients
    assert fed.num_clients == 200 and not hasattr(fed, "pool_x")
