"""Partitioning: which examples each simulated client holds.

The split itself is done by flwr-datasets' partitioners (IID, Dirichlet, pathological, shard,
natural id), configured in ``conf/partition/`` with ``_target_``. They work on a Hugging Face
``Dataset``; fedlab hands them a table of just labels, user ids and row indices, and keeps
the feature arrays in numpy, so partitioning a 1000-client federation costs milliseconds.

The result, :class:`FederatedData`, is written once by the driver to an ``.npz`` file
(no pickle) that every simulated client process loads once: per-client data loading is kept
out of the per-message hot path.

A dataset that can generate one user alone (FedProx synthetic with ``dataset.lazy=true``)
gives a :class:`LazyFederatedData` instead: no pool is held, the saved file holds only the
generator's settings, the per-client sizes and the server's test set, and
:meth:`LazyFederatedData.client` generates a client's examples when it is sampled. 10,000
clients then cost what the sampled ones do, not the ~1 GB the whole federation would.
"""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from fedlab.config.schema import ConfigError, require
from fedlab.data.datasets import ArraySplit, CentralData, DatasetSpec
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

    def label_counts(self, clients: int | None = None) -> np.ndarray:
        """Training examples per (client, class), shape (num_clients, num_classes); only the
        first ``clients`` clients when given."""
        n = self.num_clients if clients is None else min(clients, self.num_clients)
        return np.stack(
            [np.bincount(self.pool.y[self.client_train[i]], minlength=self.num_classes)
             for i in range(n)]
        )

    @property
    def pool_size(self) -> int:
        """Examples in the training pool the clients' indices point into."""
        return len(self.pool)

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
        """Read what :meth:`save` (or :meth:`LazyFederatedData.save`) wrote; never unpickles."""
        with np.load(path, allow_pickle=False) as f:
            if "lazy_spec" in f:
                return LazyFederatedData.from_file(f)

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


class _Ranges(Sequence[np.ndarray]):
    """Each client's row indices into the (virtual) pool, made only when one is asked for:
    a lazy federation's index arrays would otherwise cost as much memory as 4.5 million rows."""

    def __init__(self, starts: np.ndarray, stops: np.ndarray) -> None:
        self._starts, self._stops = starts, stops

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i: int) -> np.ndarray:  # type: ignore[override]
        return np.arange(self._starts[i], self._stops[i])

    def __iter__(self) -> Iterator[np.ndarray]:
        return (np.arange(a, b) for a, b in zip(self._starts, self._stops, strict=True))


class LazyFederatedData(FederatedData):
    """A federation of one client per natural user whose examples are generated on demand.

    The (virtual) pool is the users' training parts in user order; client ``k`` is user
    ``k``, its first ``client_test_fraction`` rows its local test split and the rest its
    training data (the rows of a user are i.i.d. draws, so a contiguous split is as random
    as a shuffled one). ``client_train``/``client_test`` are index ranges into that pool,
    so everything that only counts examples works unchanged; :attr:`pool` generates the
    whole pool (what this class exists to avoid: only for small federations and hashing).
    """

    _CACHE = 8  # clients kept generated: train and evaluate of a round reuse them

    def __init__(
        self,
        spec: DatasetSpec,
        seed: int,
        client_test_fraction: float,
        test: ArraySplit,
    ) -> None:
        n_train, _ = spec.user_sizes(seed)  # type: ignore[attr-defined]
        n_local_test = np.where(n_train > 1, (n_train * client_test_fraction).astype(int), 0)
        starts = np.concatenate([[0], np.cumsum(n_train)[:-1]]).astype(np.int64)
        fields = {
            "name": spec.name,
            "num_classes": spec.num_classes,  # type: ignore[attr-defined]
            "input_shape": (spec.dimension,),  # type: ignore[attr-defined]
            "test": test,
            "client_train": _Ranges(starts + n_local_test, starts + n_train),
            "client_test": _Ranges(starts, starts + n_local_test),
            "spec": spec,
            "seed": seed,
            "client_test_fraction": client_test_fraction,
            "_local_test": n_local_test,
            "_generated": OrderedDict(),
        }
        for key, value in fields.items():
            object.__setattr__(self, key, value)

    def __repr__(self) -> str:
        return f"LazyFederatedData({self.name!r}, {self.num_clients} clients, seed {self.seed})"

    def __eq__(self, other: object) -> bool:  # the dataclass one would generate every pool
        return self is other

    __hash__ = object.__hash__

    @property
    def pool(self) -> ArraySplit:  # type: ignore[override]
        """Every client's training part at once (generated now, ~100 bytes per feature row)."""
        return self.spec.load(self.seed).pool

    def client(self, partition_id: int) -> tuple[ArraySplit, ArraySplit]:
        """The (train, test) examples of one client, generated now (a few recent ones kept)."""
        cached = self._generated.get(partition_id)
        if cached is None:
            user = self.spec.user_examples(self.seed, partition_id, "train")  # type: ignore[attr-defined]
            cut = int(self._local_test[partition_id])
            rows = np.arange(len(user))
            cached = (user.subset(rows[cut:]), user.subset(rows[:cut]))
            self._generated[partition_id] = cached
            while len(self._generated) > self._CACHE:
                self._generated.popitem(last=False)
        return cached

    def label_counts(self, clients: int | None = None) -> np.ndarray:
        """Training examples per (client, class), generating one client at a time."""
        n = self.num_clients if clients is None else min(clients, self.num_clients)
        return np.stack(
            [np.bincount(self.client(pid)[0].y, minlength=self.num_classes) for pid in range(n)]
        )

    @property
    def pool_size(self) -> int:
        return int(self.client_train._stops[-1]) if self.num_clients else 0  # type: ignore[attr-defined]

    def recipe(self) -> dict[str, np.ndarray]:
        """What the pool is generated from, for the lineage's hashes in place of the pool's
        arrays (about 1 GB at 10,000 users, never materialised): the generator's class and
        settings and the seed, as bytes (the generation is deterministic, so equal recipes
        give equal pools)."""
        spec = {
            "class": f"{type(self.spec).__module__}.{type(self.spec).__qualname__}",
            "fields": asdict(self.spec),
            "seed": self.seed,
            "client_test_fraction": self.client_test_fraction,
        }
        blob = json.dumps(spec, sort_keys=True).encode()
        return {"pool.recipe": np.frombuffer(blob, dtype=np.uint8)}

    def save(self, path: Path) -> None:
        """Write the generator's settings and the server's test set: nothing per example."""
        spec = {
            "class": f"{type(self.spec).__module__}.{type(self.spec).__qualname__}",
            "fields": asdict(self.spec),
        }
        np.savez(
            path,
            lazy_spec=np.array(json.dumps(spec)),
            seed=np.array(self.seed),
            client_test_fraction=np.array(self.client_test_fraction),
            test_x=self.test.x,
            test_y=self.test.y,
        )

    @staticmethod
    def from_file(f: Any) -> LazyFederatedData:
        """The federation :meth:`save` wrote, from the open ``.npz`` ``f``."""
        from hydra.utils import get_class

        spec = json.loads(str(f["lazy_spec"]))
        return LazyFederatedData(
            get_class(spec["class"])(**spec["fields"]),
            int(f["seed"]),
            float(f["client_test_fraction"]),
            ArraySplit(f["test_x"], f["test_y"]),
        )


def federate(
    dataset: DatasetSpec, spec: dict[str, Any], num_clients: int, seed: int
) -> FederatedData | LazyFederatedData:
    """Load ``dataset`` and partition it among ``num_clients`` clients with partitioner
    ``spec``; a dataset that generates one user at a time (``dataset.lazy=true``) is not loaded
    at all: its clients generate their own examples when sampled (:class:`LazyFederatedData`).

    A function of its arguments alone (no torch imported): it is what a forked child runs to
    prepare the data while the driver imports the rest (:mod:`fedlab.background`).
    """
    fraction = dataset.client_test_fraction
    if getattr(dataset, "lazy", False):
        return lazy_federation(dataset, spec, num_clients, seed, fraction)
    return partition(dataset.load(seed), spec, num_clients, seed, fraction)


def background_imports(dataset: Any, partitioner: Any) -> tuple[str, ...] | None:
    """What preparing the federation configured by ``dataset`` and ``partitioner`` (their
    config nodes, ``_target_`` and settings) imports, or None when its dataset is not prepared
    in a forked child (``DatasetSpec.background``).

    Asked before the config is validated, while nothing heavy is imported yet, so that a child
    can import these on the second core while the driver imports torch and Flower: a target
    that does not resolve is None here, and its error is the validation's to report.
    """
    from hydra.utils import get_class

    try:
        cls = get_class(str(dataset["_target_"]))
        target = str(partitioner["_target_"])
    except Exception:  # invalid config: reported by the validation that follows
        return None
    if not (isinstance(cls, type) and issubclass(cls, DatasetSpec) and cls.background):
        return None
    return (*cls.imports, target.rpartition(".")[0], *PARTITION_IMPORTS)


def lazy_federation(
    dataset: DatasetSpec,
    spec: dict[str, Any],
    num_clients: int,
    seed: int,
    client_test_fraction: float,
) -> LazyFederatedData:
    """The federation of a dataset generated one user at a time: natural partition only."""
    target = str(spec.get("_target_", ""))
    require(
        target.endswith("NaturalIdPartitioner"),
        "partition",
        f"dataset.lazy=true generates one client per user: use partition=natural, got '{target}'",
    )
    num_users = dataset.num_users  # type: ignore[attr-defined]
    require(
        num_users == num_clients,
        "num_clients",
        f"partition=natural gives one client per user and '{dataset.name}' has {num_users} "
        f"users; set num_clients={num_users}",
    )
    test = dataset.central_test(seed)  # type: ignore[attr-defined]
    return LazyFederatedData(dataset, seed, client_test_fraction, test)


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


#: What :func:`partition` imports besides its partitioner's module: the partitioners work on a
#: Hugging Face ``datasets.Dataset``.
PARTITION_IMPORTS = ("datasets",)


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
        raise ConfigError("num_clients", _what_works(spec, table, num_clients, seed)) from None

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


#: Clients drawn in the partition picture at most.
PICTURE_CLIENTS = 200


def plot_label_distribution(fed: FederatedData, path: Path, title: str = "") -> None:
    """Save a stacked bar chart of training labels per client (the partition picture)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    counts = fed.label_counts(PICTURE_CLIENTS)  # a bar per client: more would not be read
    clients = np.arange(len(counts))
    fig = Figure(figsize=(min(2 + 0.25 * len(counts), 16), 4))
    ax = fig.subplots()
    cmap = colormaps["tab10" if fed.num_classes <= 10 else "tab20"]
    bottom = np.zeros(len(counts))
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
    shown = "" if len(counts) == fed.num_clients else f" (first {len(counts)} of {fed.num_clients})"
    ax.set_title(title or f"{fed.name}: labels per client{shown}")
    if fed.num_classes <= 20:
        ax.legend(title="class", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    save_figure(fig, path)
