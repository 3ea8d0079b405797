"""Datasets load offline, deterministically, and follow their published recipes."""

from __future__ import annotations

import numpy as np
import pytest

from fedlab.data.datasets.huggingface import HuggingFace
from fedlab.data.datasets.sklearn import Digits, Iris
from fedlab.data.datasets.synthetic import Synthetic


def test_digits_shapes_and_split() -> None:
    data = Digits().load(seed=0)
    assert data.pool.x.shape[1:] == (1, 8, 8) and data.num_classes == 10
    assert len(data.pool) + len(data.test) == 1797
    assert len(data.test) == pytest.approx(0.2 * 1797, abs=1)
    assert data.pool.x.min() >= 0.0 and data.pool.x.max() <= 1.0
    # stratified: every class in the test split, in about its overall share
    counts = np.bincount(data.test.y, minlength=10)
    assert counts.min() >= 30
    assert np.array_equal(Digits().load(seed=0).test.y, data.test.y)


def test_iris_binary_is_setosa_vs_versicolor_and_standardized() -> None:
    data = Iris(binary=True, test_fraction=0.3).load(seed=1)
    assert set(np.unique(data.pool.y)) == {0, 1} and len(data.pool) + len(data.test) == 100
    assert np.allclose(data.pool.x.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(data.pool.x.std(axis=0), 1, atol=1e-4)


def test_synthetic_follows_the_fedprox_recipe() -> None:
    spec = Synthetic(alpha=1.0, beta=1.0, num_users=30)
    users = spec.generate(seed=0)
    sizes = np.array([len(y) for _, y in users])
    assert len(users) == 30 and sizes.min() >= 50  # n_k = int(lognormal(4, 2)) + 50
    assert all(x.shape[1] == 60 for x, _ in users)
    # the heavy tail of lognormal(4, 2): the largest user dwarfs the median
    assert sizes.max() > 5 * np.median(sizes)
    # non-IID: users' feature means differ (v_k ~ N(B_k, 1))
    means = np.array([x.mean(axis=0)[:5] for x, _ in users])
    assert means.std(axis=0).mean() > 0.5
    again = Synthetic(alpha=1.0, beta=1.0, num_users=30).generate(seed=0)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(users, again, strict=True))
    assert not np.array_equal(Synthetic().generate(seed=1)[0][0], users[0][0])


def test_synthetic_iid_features_have_the_published_covariance() -> None:
    x = np.concatenate(
        [x for x, _ in Synthetic(alpha=0, beta=0, iid=True, num_users=30).generate(seed=0)]
    )
    assert np.allclose(x.mean(axis=0), 0, atol=0.05)
    expected = np.arange(1, 61) ** -1.2  # diag(j^-1.2)
    assert np.allclose(x.var(axis=0), expected, rtol=0.1)


def test_synthetic_iid_labels_come_from_one_shared_model() -> None:
    users = Synthetic(alpha=0, beta=0, iid=True, num_users=5).generate(seed=0)
    x = np.concatenate([u[0] for u in users])
    y = np.concatenate([u[1] for u in users])
    # one linear model explains every user's labels exactly (argmax of x W + b)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1e4, max_iter=5000).fit(x, y)
    assert clf.score(x, y) > 0.97


def test_synthetic_split_is_ninety_ten_per_user() -> None:
    data = Synthetic(num_users=10).load(seed=0)
    assert data.pool.users is not None and len(np.unique(data.pool.users)) == 10
    assert len(data.test) / (len(data.pool) + len(data.test)) == pytest.approx(0.1, abs=0.01)


def test_huggingface_loader_on_local_parquet(tmp_path) -> None:
    import datasets

    rng = np.random.default_rng(0)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Value("int64"),
            "writer": datasets.Value("string"),
        }
    )
    for split, n in (("train", 40), ("test", 10)):
        images = [rng.integers(0, 256, (6, 6), dtype=np.uint8) for _ in range(n)]
        table = datasets.Dataset.from_dict(
            {
                "image": images,
                "label": rng.integers(0, 3, n).tolist(),
                "writer": [f"w{i % 4}" for i in range(n)],
            },
            features=features,
        )
        table.to_parquet(str(tmp_path / f"{split}.parquet"))
    spec = HuggingFace(
        path="parquet",
        data_files={
            "train": str(tmp_path / "train.parquet"),
            "test": str(tmp_path / "test.parquet"),
        },
        user_column="writer",
    )
    data = spec.load(seed=0)
    assert data.pool.x.shape == (40, 1, 6, 6) and data.test.x.shape == (10, 1, 6, 6)
    assert data.pool.x.max() <= 1.0 and data.num_classes == 3
    assert len(np.unique(data.pool.users)) == 4
