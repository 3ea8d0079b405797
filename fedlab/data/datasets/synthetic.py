"""The FedProx Synthetic(alpha, beta) benchmark (Li et al., "Federated Optimization in
Heterogeneous Networks", MLSys 2020), generated from the recipe of the original code
(litian96/FedProx, data/synthetic_*/generate_niid.py), but seeded: the original is not.

For user k: n_k = int(lognormal(4, 2)) + 50 examples; u_k ~ N(0, alpha) is the mean of that
user's model, W_k, b_k ~ N(u_k, 1); B_k ~ N(0, beta) and v_k ~ N(B_k, 1) per feature is the
mean of its inputs, x ~ N(v_k, diag(j^-1.2)); y = argmax(softmax(x W_k + b_k)). In the IID
variant all users share one W, b ~ N(0, 1) and v_k = 0. Each user's examples are split 90/10
into train and test; the union of the test parts is the server's test set, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlab.config.schema import require
from fedlab.data.datasets import ArraySplit, CentralData, DatasetSpec


@dataclass
class Synthetic(DatasetSpec):
    """Synthetic(alpha, beta) with ``num_users`` natural users."""

    alpha: float = 1.0
    beta: float = 1.0
    iid: bool = False
    num_users: int = 30
    dimension: int = 60
    num_classes: int = 10
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha >= 0, "dataset.alpha", f"must be >= 0, got {self.alpha}")
        require(self.beta >= 0, "dataset.beta", f"must be >= 0, got {self.beta}")
        require(self.num_users >= 1, "dataset.num_users", "must be >= 1")
        require(self.dimension >= 1, "dataset.dimension", "must be >= 1")
        require(self.num_classes >= 2, "dataset.num_classes", "must be >= 2")

    @property
    def name(self) -> str:
        return "synthetic_iid" if self.iid else f"synthetic_{self.alpha:g}_{self.beta:g}"

    @property
    def has_users(self) -> bool:
        return True

    def generate(self, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-user (x, y) arrays, in the order of the original generator's draws."""
        rng = np.random.default_rng(seed)
        n_users, dim, n_cls = self.num_users, self.dimension, self.num_classes
        sizes = rng.lognormal(4, 2, n_users).astype(int) + 50
        mean_w = rng.normal(0, self.alpha, n_users)
        shift = rng.normal(0, self.beta, n_users)
        std_x = np.power(np.arange(1, dim + 1), -1.2) ** 0.5
        if self.iid:
            mean_x = np.zeros((n_users, dim))
            w_global = rng.normal(0, 1, (dim, n_cls))
            b_global = rng.normal(0, 1, n_cls)
        else:
            mean_x = np.stack([rng.normal(shift[k], 1, dim) for k in range(n_users)])
        users = []
        for k in range(n_users):
            if self.iid:
                w, b = w_global, b_global
            else:
                w = rng.normal(mean_w[k], 1, (dim, n_cls))
                b = rng.normal(mean_w[k], 1, n_cls)
            # A diagonal covariance makes the multivariate normal a per-feature scaling.
            x = mean_x[k] + rng.standard_normal((sizes[k], dim)) * std_x
            y = np.argmax(x @ w + b, axis=1)  # softmax is monotone: argmax of the logits
            users.append((x.astype(np.float32), y.astype(np.int64)))
        return users

    def load(self, seed: int) -> CentralData:
        rng = np.random.default_rng([seed, 1])
        pools, tests = [], []
        for k, (x, y) in enumerate(self.generate(seed)):
            order = rng.permutation(len(y))
            n_train = round((1 - self.test_fraction) * len(y))
            user = np.full(len(y), k, dtype=np.int64)
            pools.append((x[order[:n_train]], y[order[:n_train]], user[:n_train]))
            tests.append((x[order[n_train:]], y[order[n_train:]]))
        pool = ArraySplit(*(np.concatenate(parts) for parts in zip(*pools, strict=True)))
        test = ArraySplit(*(np.concatenate(parts) for parts in zip(*tests, strict=True)))
        return CentralData(self.name, pool, test, self.num_classes, (self.dimension,))
