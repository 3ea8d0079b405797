"""The FedProx Synthetic(alpha, beta) benchmark (Li et al., "Federated Optimization in
Heterogeneous Networks", MLSys 2020), generated from the recipe of the original code
(litian96/FedProx, data/synthetic_*/generate_niid.py), but seeded: the original is not.

For user k: n_k = int(lognormal(4, 2)) + 50 examples; u_k ~ N(0, alpha) is the mean of that
user's model, W_k, b_k ~ N(u_k, 1); B_k ~ N(0, beta) and v_k ~ N(B_k, 1) per feature is the
mean of its inputs, x ~ N(v_k, diag(j^-1.2)); y = argmax(softmax(x W_k + b_k)). In the IID
variant all users share one W, b ~ N(0, 1) and v_k = 0. Each user's examples are split 90/10
into train and test; the union of the test parts is the server's test set, as in the paper.

``lazy=true`` is the same recipe for federations too large to hold at once (10,000 users are
about 1 GB of features): every user gets its own seeded streams, so any one user's examples
can be generated alone, when that client is sampled (:mod:`fedlab.data.partition`'s lazy
federation). One sequential generator cannot do that: numpy's normal sampler consumes a
variable number of raw draws, so user k's state cannot be reached without drawing users
0..k-1. The lazy data is therefore a different (equally distributed) draw than the default
one, which stays as it was so that recorded runs replay. Its server test set is a seeded
uniform sample of at most ``max_test_examples`` of the union of the users' test parts, so
central evaluation costs the same whatever the number of users.
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
    lazy: bool = False
    max_test_examples: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha >= 0, "dataset.alpha", f"must be >= 0, got {self.alpha}")
        require(self.beta >= 0, "dataset.beta", f"must be >= 0, got {self.beta}")
        require(self.num_users >= 1, "dataset.num_users", "must be >= 1")
        require(self.dimension >= 1, "dataset.dimension", "must be >= 1")
        require(self.num_classes >= 2, "dataset.num_classes", "must be >= 2")
        require(
            self.max_test_examples >= 1,
            "dataset.max_test_examples",
            f"must be >= 1, got {self.max_test_examples}",
        )

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
        if self.lazy:  # every user's training part at once: what a lazy federation avoids
            users = [self.user_examples(seed, k, "train") for k in range(self.num_users)]
            pool = ArraySplit(
                *(
                    np.concatenate(p)
                    for p in zip(*((u.x, u.y, u.users) for u in users), strict=True)
                )
            )
            return CentralData(
                self.name, pool, self.central_test(seed), self.num_classes, (self.dimension,)
            )
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

    # ---- lazy generation: one user at a time --------------------------------------------

    def user_sizes(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) examples of every user, without generating any example."""
        sizes = np.random.default_rng([seed, 11]).lognormal(4, 2, self.num_users).astype(int) + 50
        n_train = np.round((1 - self.test_fraction) * sizes).astype(np.int64)
        return n_train, sizes - n_train

    def _user_model(self, seed: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """User ``k``'s input mean and labelling model (W_k, b_k) from its own stream."""
        dim, n_cls = self.dimension, self.num_classes
        if self.iid:  # one shared model, drawn from a stream of its own
            shared = np.random.default_rng([seed, 12])
            w, b = shared.normal(0, 1, (dim, n_cls)), shared.normal(0, 1, n_cls)
            return np.zeros(dim), w, b
        rng = np.random.default_rng([seed, 13, k])
        mean_w, shift = rng.normal(0, self.alpha), rng.normal(0, self.beta)
        mean_x = rng.normal(shift, 1, dim)
        return mean_x, rng.normal(mean_w, 1, (dim, n_cls)), rng.normal(mean_w, 1, n_cls)

    def user_examples(self, seed: int, k: int, part: str) -> ArraySplit:
        """User ``k``'s ``part`` ("train" or "test") examples, generated now (lazy mode)."""
        n_train, n_test = self.user_sizes(seed)
        n = int((n_train if part == "train" else n_test)[k])
        return self._draw(seed, k, part, n)

    def _draw(self, seed: int, k: int, part: str, n: int) -> ArraySplit:
        mean_x, w, b = self._user_model(seed, k)
        rng = np.random.default_rng([seed, 14 if part == "train" else 15, k])
        std_x = np.power(np.arange(1, self.dimension + 1), -1.2) ** 0.5
        x = mean_x + rng.standard_normal((n, self.dimension)) * std_x
        y = np.argmax(x @ w + b, axis=1)
        return ArraySplit(x.astype(np.float32), y.astype(np.int64), np.full(n, k, np.int64))

    def central_test(self, seed: int) -> ArraySplit:
        """The server's test set in lazy mode: a seeded uniform sample of at most
        ``max_test_examples`` rows of the union of the users' test parts (only the sampled
        users' test rows are generated)."""
        _, n_test = self.user_sizes(seed)
        offsets = np.concatenate([[0], np.cumsum(n_test)])
        total = int(offsets[-1])
        take = min(total, self.max_test_examples)
        rows = np.sort(np.random.default_rng([seed, 16]).choice(total, take, replace=False))
        owner = np.searchsorted(offsets, rows, side="right") - 1
        xs, ys = [], []
        for k in np.unique(owner):
            part = self._draw(seed, int(k), "test", int(n_test[k]))
            local = rows[owner == k] - offsets[k]
            xs.append(part.x[local])
            ys.append(part.y[local])
        return ArraySplit(np.concatenate(xs), np.concatenate(ys))
