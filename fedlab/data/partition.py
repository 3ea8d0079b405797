"""Partitioning: which examples each simulated client holds.

The split itself is done by flwr-datasets' partitioners (IID, Dirichlet, pathological, shard,
natural id), configured in ``conf/partition/`` with ``_target_``. They work on a Hugging Face
``Dataset``; fedlab hands them a table of just labels, user ids and row indices, and keeps
the feature arrays in numpy, so partitioning a 1000-client federation costs milliseconds.

The result, :class:`FederatedData`, is written once by the driver to an ``.npz`` file
(no pickle) that every simulated client process loads once: per-client data loading is kept
out of the per-message hot path.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from fedlab.config.schema import ConfigError, require
from fedlab.data.datasets import ArraySplit, CentralData
from fedlab.record.run_dir import save_figure

# Range checks for partitioner arguments whose violations flwr-datasets reports late or
# not at all (e.g. a negative Dirichlet alpha produces NaN proportions).
_RULES: dict[str, tuple[Any, str]] = {
    "alpha": (lambda v: float(v) > 0, "must be > 0"),
    "num_classes_per_partition": (lambda v: int(v) >= 1, "must be >= 1"),
    "num_shards_per_partition": (lambda v: v is None or int(v) >= 1, "must be >= 1"),
    "shard_size": (lambda v: v is None or int(v) >= 1, "must be >= 1"),
    "min_partition_size": (lambda v: int(v) >= 0, "must be >= 0"),
}


@dataclass(frozen=True)
class FederatedData:
    """The central test split and, for each client, index arrays into the shared pool."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    pool: ArraySplit
    test: ArraySplit
    client_train: tuple[np.ndarray, ...]
    client_test: tuple[np.ndarray, ...]

    @property
    def num_clients(self) -> int:
        return len(self.client_train)

    def client(self, partition_id: int) -> tuple[ArraySplit, ArraySplit]:
        """The (train, test) examples of one client."""
        return (
            self.pool.subset(self.client_train[partition_id]),
            self.pool.subset(self.client_test[partition_id]),
        )

    def label_counts(self) -> np.ndarray:
        """Training examples per (client, class), shape (num_clients, num_classes)."""
        return np.stack(
            [np.bincount(self.pool.y[idx], minlength=self.num_classes) for idx in self.client_train]
        )

    def save(self, path: Path) -> None:
        """Write to ``path`` (.npz). Ragged index lists are stored flat with offsets."""
        offsets = np.cumsum([0, *(len(i) for i in self.client_train)])
        test_offsets = np.cumsum([0, *(len(i) for i in self.client_test)])
        np.savez(
            path,
            name=np.array(self.name),
            num_classes=np.array(self.num_classes),
            input_shape=np.array(self.input_shape),
            pool_x=self.pool.x,
            pool_y=self.pool.y,
            test_x=self.test.x,
            test_y=self.test.y,
            train_index=np.concatenate(self.client_train),
            train_offsets=offsets,
            test_index=np.concatenate(self.client_test),
            test_offsets=test_offsets,
        )

    @staticmethod
    def load(path: Path) -> FederatedData:
        """Read what :meth:`save` wrote; never unpickles."""
        with np.load(path, allow_pickle=False) as f:

            def split(index: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, ...]:
                return tuple(index[a:b] for a, b in pairwise(offsets))

            return FederatedData(
                name=str(f["name"]),
                num_classes=int(f["num_classes"]),
                input_shape=tuple(int(v) for v in f["input_shape"]),
                pool=ArraySplit(f["pool_x"], f["pool_y"]),
                test=ArraySplit(f["test_x"], f["test_y"]),
                client_train=split(f["train_index"], f["train_offsets"]),
                client_test=split(f["test_index"], f["test_offsets"]),
            )


@lru_cache(maxsize=2)
def load_cached(path: str) -> FederatedData:
    """Load a federation once per process (each Ray actor serves many clients and rounds)."""
    return FederatedData.load(Path(path))


def _build_partitioner(spec: dict[str, Any], num_clients: int, seed: int) -> Any:
    """Instantiate a flwr-datasets partitioner, passing only the arguments it accepts."""
    from hydra.utils import get_class

    spec = dict(spec)
    target = spec.pop("_target_")
    for key, value in spec.items():
        if key in _RULES and not _RULES[key][0](value):
            raise ConfigError(f"partition.{key}", f"{_RULES[key][1]}, got {value}")
    cls = get_class(target)
    accepted = inspect.signature(cls).parameters
    for key, value in (("num_partitions", num_clients), ("partition_by", "label"), ("seed", seed)):
        if key in accepted and key not in spec:
            spec[key] = value
    if "partition_by" in spec and spec["partition_by"] not in ("label", "user"):
        raise ConfigError("partition.partition_by", "must be label or user")
    try:
        return cls(**spec)
    except (TypeError, ValueError) as err:
        raise ConfigError("partition", str(err).splitlines()[0]) from None


def partition(
    data: CentralData,
    spec: dict[str, Any],
    num_clients: int,
    seed: int,
    client_test_fraction: float,
) -> FederatedData:
    """Split ``data.pool`` among ``num_clients`` clients with the configured partitioner."""
    import datasets

    datasets.disable_progress_bars()
    n = len(data.pool)
    require(
        num_clients <= n,
        "num_clients",
        f"{num_clients} clients but dataset '{data.name}' has only {n} training examples; "
        f"use num_clients <= {n}",
    )
    partitioner = _build_partitioner(spec, num_clients, seed)
    columns: dict[str, Any] = {"label": data.pool.y, "row": np.arange(n)}
    is_natural = getattr(partitioner, "_partition_by", None) == "user"
    if is_natural:
        require(
            data.pool.users is not None,
            "partition",
            f"natural partitioning needs user ids; dataset '{data.name}' has none "
            "(use iid, dirichlet, pathological or shard)",
        )
        num_users = len(np.unique(data.pool.users))
        require(
            num_users == num_clients,
            "num_clients",
            f"partition=natural gives one client per user and '{data.name}' has {num_users} "
            f"users; set num_clients={num_users}",
        )
        columns["user"] = data.pool.users
    table = datasets.Dataset.from_dict(columns)
    if not is_natural:  # IidPartitioner shards contiguously: shuffle first, with the seed.
        table = table.shuffle(seed=seed).flatten_indices()
    try:
        parts = _split(partitioner, table, num_clients)
    except ValueError:
        raise ConfigError(
            "num_clients", _what_works(spec, table, num_clients, seed)
        ) from None

    rng = np.random.default_rng([seed, 2])
    train, test = [], []
    for pid, rows in enumerate(parts):
        require(
            len(rows) > 0,
            "num_clients",
            f"client {pid} gets no examples with this partition of {n} examples; "
            "use fewer clients or another partition",
        )
        rows = rng.permutation(rows)
        n_test = int(len(rows) * client_test_fraction) if len(rows) > 1 else 0
        train.append(np.sort(rows[n_test:]))
        test.append(np.sort(rows[:n_test]))
    return FederatedData(
        data.name,
        data.num_classes,
        data.input_shape,
        data.pool,
        data.test,
        tuple(train),
        tuple(test),
    )


def _split(partitioner: Any, table: Any, num_clients: int) -> list[np.ndarray]:
    """Each client's sorted row indices from ``partitioner`` over ``table``.

    flwr-datasets' Dirichlet partitioner warns on every redrawn sample that missed
    ``min_partition_size`` (a paragraph each); a split that succeeds needs no warning and one
    that fails ends in fedlab's one-line error, so they are not shown.
    """
    import warnings

    partitioner.dataset = table
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*min_partition_size.*")
        return [
            np.sort(np.asarray(partitioner.load_partition(i)["row"])) for i in range(num_clients)
        ]


def _what_works(spec: dict[str, Any], table: Any, num_clients: int, seed: int) -> str:
    """The message for a partitioner that could not split ``table`` among ``num_clients``
    (Dirichlet's ``min_partition_size`` out of reach): the largest client count that works
    with the same partition, found by trying (milliseconds each), and the other way out."""
    working = None
    for fewer in range(num_clients - 1, 0, -1):
        try:
            _split(_build_partitioner(spec, fewer, seed), table, fewer)
        except ValueError:
            continue
        working = fewer
        break
    size = spec.get("min_partition_size")
    fixes = [f"num_clients={working} works" if working else "use fewer clients"]
    if size:
        fixes.append(f"or lower partition.min_partition_size (now {size})")
    fixes.append("or use partition=iid")
    return (
        f"the partition cannot give each of {num_clients} clients enough of the "
        f"{len(table)} training examples; {', '.join(fixes)}"
    )


def plot_label_distribution(fed: FederatedData, path: Path, title: str = "") -> None:
    """Save a stacked bar chart of training labels per client (the partition picture)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    counts = fed.label_counts()
    clients = np.arange(fed.num_clients)
    fig = Figure(figsize=(min(2 + 0.25 * fed.num_clients, 16), 4))
    ax = fig.subplots()
    cmap = colormaps["tab10" if fed.num_classes <= 10 else "tab20"]
    bottom = np.zeros(fed.num_clients)
    for cls in range(fed.num_classes):
        ax.bar(
            clients,
            counts[:, cls],
            bottom=bottom,
            color=cmap(cls % cmap.N),
            label=str(cls),
            width=0.85,
        )
        bottom += counts[:, cls]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training examples")
    ax.set_title(title or f"{fed.name}: labels per client")
    if fed.num_classes <= 20:
        ax.legend(title="class", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    save_figure(fig, path)
