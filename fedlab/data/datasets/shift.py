"""Feature shift: the same task seen differently by different clients.

Personalized FL methods that keep layers local (FedBN, FedPer, FedRep) are evaluated where the
clients' *inputs* differ while the labels mean the same, e.g. FedBN's digit datasets from
different sources. :class:`RotatedDigits` builds that from scikit-learn's digits with no
download, as the rotated-MNIST benchmarks do: every example is dealt (seeded) to one of
``domains`` domains and rotated by 360/domains degrees times its domain's index, and each domain
is split into ``users_per_domain`` natural users, so ``partition=natural`` gives every client
the examples of one domain. The server's test split mixes all domains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlab.config.schema import require
from fedlab.data.datasets import ArraySplit, CentralData
from fedlab.data.datasets.sklearn import Digits


@dataclass
class RotatedDigits(Digits):
    """Digits in ``domains`` rotations (0, 90, 180, 270 degrees for 4), with natural users."""

    domains: int = 4
    users_per_domain: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.domains in (1, 2, 4), "dataset.domains",
                f"must be 1, 2 or 4 (rotations by multiples of 90 degrees), got {self.domains}")
        require(self.users_per_domain >= 1, "dataset.users_per_domain", "must be >= 1")
        require(self.as_image, "dataset.as_image", "rotations need images (as_image=true)")

    @property
    def name(self) -> str:
        return f"digits_rotated{self.domains}"

    def load(self, seed: int) -> CentralData:
        base = super().load(seed)
        rng = np.random.default_rng(seed)

        def rotate(split: ArraySplit, users: bool) -> ArraySplit:
            domain = rng.integers(0, self.domains, size=len(split))
            turns = domain * (4 // self.domains)
            x = np.stack(
                [np.rot90(img, k, axes=(1, 2)) for img, k in zip(split.x, turns, strict=True)]
            )
            within = rng.integers(0, self.users_per_domain, len(split))
            user = domain * self.users_per_domain + within
            return ArraySplit(np.ascontiguousarray(x), split.y, user if users else None)

        pool, test = rotate(base.pool, users=True), rotate(base.test, users=False)
        return CentralData(self.name, pool, test, base.num_classes, base.input_shape)
