"""Small real datasets that ship with scikit-learn, so the default experiment needs no network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedlab.data.datasets import ArraySplit, CentralData, DatasetSpec, stratified_split


@dataclass
class Digits(DatasetSpec):
    """UCI handwritten digits (1797 images of 8x8 pixels, 10 classes).

    Pixels are scaled by their known range (0..16) rather than by statistics of the pooled
    data, which in a federation no single party would have.
    """

    as_image: bool = True
    background: ClassVar[bool] = True  # 1797 / 150 examples
    imports: ClassVar[tuple[str, ...]] = ("sklearn.datasets", "sklearn.model_selection")

    @property
    def name(self) -> str:
        return "digits"

    def load(self, seed: int) -> CentralData:
        from sklearn.datasets import load_digits

        raw = load_digits()
        x = (raw.data / 16.0).astype(np.float32)
        shape: tuple[int, ...] = (1, 8, 8) if self.as_image else (64,)
        x = x.reshape((-1, *shape))
        y = raw.target.astype(np.int64)
        train, test = stratified_split(y, self.test_fraction, seed)
        data = ArraySplit(x, y)
        return CentralData("digits", data.subset(train), data.subset(test), 10, shape)


@dataclass
class Iris(DatasetSpec):
    """Fisher's iris (150 flowers, 4 features, 3 classes; or 2 with ``binary``).

    Features are standardized with the training pool's mean and standard deviation (a
    documented shortcut: the pool statistics stand in for a federated estimate). ``binary``
    keeps setosa vs versicolor, the usual task for small quantum classifiers.
    """

    binary: bool = False
    background: ClassVar[bool] = True  # 1797 / 150 examples
    imports: ClassVar[tuple[str, ...]] = ("sklearn.datasets", "sklearn.model_selection")

    @property
    def name(self) -> str:
        return "iris_binary" if self.binary else "iris"

    def load(self, seed: int) -> CentralData:
        from sklearn.datasets import load_iris

        raw = load_iris()
        x, y = raw.data.astype(np.float32), raw.target.astype(np.int64)
        if self.binary:
            keep = y < 2
            x, y = x[keep], y[keep]
        train, test = stratified_split(y, self.test_fraction, seed)
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        x = ((x - mean) / std).astype(np.float32)
        data = ArraySplit(x, y)
        num_classes = 2 if self.binary else 3
        return CentralData(self.name, data.subset(train), data.subset(test), num_classes, (4,))
