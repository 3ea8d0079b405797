"""Hugging Face Hub datasets (mnist, cifar10, femnist, ...) for machines with network access.

Loading goes through ``datasets.load_dataset``, exactly what flwr-datasets' FederatedDataset
calls; partitioning then uses the same flwr-datasets partitioners as every other dataset here,
so a partition of mnist and one of digits come from one code path. ``path`` may also be a
local builder (``parquet``, ``csv``, ``imagefolder``) with ``data_files``, which is how the
tests exercise this loader offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedlab.config.schema import ConfigError, require
from fedlab.data.datasets import ArraySplit, CentralData, DatasetSpec, stratified_split


@dataclass
class HuggingFace(DatasetSpec):
    """A dataset with an image (or feature columns) and an integer label column."""

    path: str = "ylecun/mnist"
    subset: str | None = None
    data_files: dict[str, str] | None = None
    image_column: str | None = "image"
    feature_columns: list[str] = field(default_factory=list)
    label_column: str = "label"
    user_column: str | None = None
    train_split: str = "train"
    test_split: str | None = "test"
    max_examples: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            (self.image_column is None) != (not self.feature_columns),
            "dataset.image_column",
            "set exactly one of image_column or feature_columns",
        )
        require(
            self.max_examples is None or self.max_examples >= 1,
            "dataset.max_examples",
            "must be >= 1 or null",
        )

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def has_users(self) -> bool:
        return self.user_column is not None

    def _arrays(self, split: object) -> ArraySplit:
        columns = split.column_names  # type: ignore[attr-defined]
        wanted = [self.label_column, self.user_column, self.image_column, *self.feature_columns]
        for column in filter(None, wanted):
            if column not in columns:
                raise ConfigError(
                    "dataset", f"column '{column}' not in {self.path} (has: {', '.join(columns)})"
                )
        table = split.with_format("numpy")  # type: ignore[attr-defined]
        if self.image_column is not None:
            x = np.stack(table[self.image_column]).astype(np.float32) / 255.0
            # (n, H, W) -> (n, 1, H, W); (n, H, W, C) -> (n, C, H, W)
            x = x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)
        else:
            x = np.stack([table[c] for c in self.feature_columns], axis=1).astype(np.float32)
        y = np.asarray(table[self.label_column]).astype(np.int64)
        users = None
        if self.user_column is not None:
            _, users = np.unique(np.asarray(table[self.user_column]), return_inverse=True)
        return ArraySplit(np.ascontiguousarray(x), y, users)

    def load(self, seed: int) -> CentralData:
        import datasets

        splits = datasets.load_dataset(self.path, self.subset, data_files=self.data_files)
        train = splits[self.train_split]
        if self.max_examples is not None:
            train = train.shuffle(seed=seed).select(range(min(self.max_examples, len(train))))
        pool = self._arrays(train)
        if self.test_split is not None and self.test_split in splits:
            test = self._arrays(splits[self.test_split])
        else:
            keep, held_out = stratified_split(pool.y, self.test_fraction, seed)
            pool, test = pool.subset(keep), pool.subset(held_out)
        num_classes = int(max(pool.y.max(), test.y.max())) + 1
        return CentralData(self.name, pool, test, num_classes, tuple(pool.x.shape[1:]))
