"""Models: the PyTorch networks clients train.

Every model takes ``input_shape`` and ``num_classes`` (filled in from the dataset) plus its own
settings from ``conf/model/``. By default only layers Opacus can compute per-sample gradients
for are used (GroupNorm, not BatchNorm), so every model works with ``privacy=local``;
``norm: batch`` (MLP, CNN) adds BatchNorm for the algorithms that need it (FedBN), and is
refused with DP-SGD at start-up.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from flwr.app import Array, ArrayRecord


class LogisticRegression(nn.Module):
    """Multinomial logistic regression, as in the FedProx synthetic protocol.

    Glorot-uniform weights and zero bias, as the original TensorFlow code initialises them.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_classes)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """A fully connected network with ReLU hidden layers."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden: tuple[int, ...] | list[int] = (128,),
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__()
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden layer sizes must be >= 1, got {list(hidden)}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be none or batch, got '{norm}'")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A small convolutional network for (C, H, W) images: conv-GroupNorm-ReLU blocks.

    Each block halves the resolution until it reaches 4x4, so the same config serves 8x8 digits
    and 28x28 or 32x32 images; global average pooling keeps the head small.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, ...] | list[int] = (16, 32),
        groups: int = 4,
        hidden: int = 64,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"needs image input (channels, height, width), got shape {tuple(input_shape)}"
            )
        if norm not in ("group", "batch"):
            raise ValueError(f"norm must be group or batch, got '{norm}'")
        if norm == "group" and any(c % groups for c in channels):
            raise ValueError(f"every channel count must be divisible by groups={groups}")
        blocks: list[nn.Module] = []
        in_ch, size = input_shape[0], min(input_shape[1:])
        for out_ch in channels:
            blocks += [
                nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
                nn.GroupNorm(groups, out_ch) if norm == "group" else nn.BatchNorm2d(out_ch),
                nn.ReLU(),
            ]
            if size > 4:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            in_ch = out_ch
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(
            nn.Linear(in_ch, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(spec: dict, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate the configured model (``conf/model/``) for a dataset's shape and classes."""
    from hydra.utils import instantiate

    return instantiate(
        spec, input_shape=tuple(input_shape), num_classes=num_classes, _convert_="all"
    )


def state_dict_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()``, without ``np.load`` for each array.

    Flower stores each array as an ``.npy`` file (``np.save``) and reads it back with
    ``np.load``, which parses the header with ``ast.literal_eval``: about 40 µs an array, a
    quarter of a small client's evaluation (issue #22), paid by every client for every
    message. An array whose header is exactly the one ``np.save`` writes for its declared
    dtype and shape (C order) is read from its bytes directly; any other goes through
    ``Array.numpy()``, so nothing is read differently from Flower.
    """
    return {key: torch.from_numpy(ndarray_of(array)) for key, array in record.items()}


def ndarray_of(array: Array, *, writable: bool = True) -> np.ndarray:
    """``array.numpy()``, reading the bytes ``np.save`` wrote directly (:func:`state_dict_of`
    says why); ``writable=False``: a read-only view of the message's bytes, no copy, for a
    reader that only looks (the Grid's finiteness check, the audit's drift)."""
    data = array.data
    if array.stype == "numpy.ndarray" and data[:6] == b"\x93NUMPY" and data[6] in (1, 2, 3):
        size = 2 if data[6] == 1 else 4
        start = 8 + size + int.from_bytes(data[8 : 8 + size], "little")
        dtype, shape = np.dtype(array.dtype), tuple(array.shape)
        header = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
        if data[8 + size : start].decode("latin1").rstrip() == header:
            view = np.frombuffer(data, dtype=dtype, offset=start).reshape(shape)
            return view.copy() if writable else view  # torch wants writable memory
    return array.numpy()
