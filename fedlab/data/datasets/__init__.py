"""Datasets: where the examples come from, before they are partitioned among clients.

Every dataset option in ``conf/dataset/`` names a :class:`DatasetSpec` subclass with
``_target_``; its fields are the option's settings and :meth:`DatasetSpec.load` returns a
:class:`CentralData` (a training pool to partition, a held-out central test split, and natural
user ids where the data has them). Adding a dataset is one YAML file plus one small module here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedlab.config.schema import require


@dataclass(frozen=True)
class ArraySplit:
    """Examples as arrays: ``x`` float32 of shape (n, *input_shape), ``y`` int64 labels."""

    x: np.ndarray
    y: np.ndarray
    users: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> ArraySplit:
        """The examples at ``index`` (users kept when present)."""
        users = None if self.users is None else self.users[index]
        return ArraySplit(self.x[index], self.y[index], users)


@dataclass(frozen=True)
class CentralData:
    """A dataset before partitioning: the pool clients share, and the server's test split."""

    name: str
    pool: ArraySplit
    test: ArraySplit
    num_classes: int
    input_shape: tuple[int, ...]


@dataclass
class DatasetSpec:
    """Fields shared by every dataset option.

    ``test_fraction`` is the share of examples held out for the server's centralized evaluation
    when the source has no official test split; ``client_test_fraction`` is the share of each
    client's partition kept for federated evaluation on that client.
    """

    test_fraction: float = 0.2
    client_test_fraction: float = 0.2
    #: Whether the partitioned federation is small enough to be prepared in a forked child
    #: and sent back through a pipe (:mod:`fedlab.background`): true for the bundled
    #: in-memory datasets, false for downloads, which may be large.
    background: ClassVar[bool] = False
    #: The modules :meth:`load` imports (in order), which a child preparing the data in the
    #: background imports ahead, while the driver still imports torch and Flower.
    imports: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        require(
            0 < self.test_fraction < 1,
            "dataset.test_fraction",
            f"must be in (0, 1), got {self.test_fraction}",
        )
        require(
            0 <= self.client_test_fraction < 1,
            "dataset.client_test_fraction",
            f"must be in [0, 1), got {self.client_test_fraction}",
        )

    @property
    def name(self) -> str:
        """Short name used in records and plots."""
        return type(self).__name__.lower()

    @property
    def has_users(self) -> bool:
        """Whether :meth:`load` returns natural user ids (needed by ``partition=natural``)."""
        return False

    def load(self, seed: int) -> CentralData:
        """Load or generate the data; the same seed gives the same arrays."""
        raise NotImplementedError


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded stratified train/test split.

    scikit-learn's splitter is used so the central test split keeps the class balance of the
    source; it needs at least one example of every class on each side, which tiny splits
    cannot give, so those fall back to a plain seeded permutation.
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    try:
        train, test = train_test_split(
            index, test_size=test_fraction, random_state=seed, stratify=y
        )
    except ValueError:
        train, test = train_test_split(index, test_size=test_fraction, random_state=seed)
    return np.sort(train), np.sort(test)
