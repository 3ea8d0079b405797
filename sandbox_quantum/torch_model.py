"""A hybrid quantum-classical classifier that plugs into fedlab like any torch model.

fedlab builds models with ``hydra.utils.instantiate(cfg.model, input_shape=..., num_classes=...)``,
averages their ``state_dict`` across clients and saves it with safetensors. ``HybridQNN`` keeps to
that contract: its state is three or five plain tensors, it needs no shared state between
processes, and two instances built after the same ``torch.manual_seed`` are identical.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from .qnn import Engine, FeatureMapName, classifier_circuit, per_qubit_z, quantum_layer

InputEncoding = Literal["standardized", "angles"]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count, restoring it on exit.

    Quantum layers work on tensors of a few hundred amplitudes, where extra threads only add
    synchronization: on a busy 2-core machine one thread was 10x faster than two.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class HybridQNN(nn.Module):
    """[Linear ->] squash to [0, pi/2] -> quantum layer (<Z_i> per qubit) -> Linear -> logits.

    Args:
        input_shape: shape of one sample; it is flattened to ``prod(input_shape)`` features.
        num_classes: number of logits.
        num_qubits: circuit width. When it differs from the number of features, a trainable
            ``nn.Linear`` maps features to qubits first.
        reps: repetitions of the ``real_amplitudes`` ansatz (weights = num_qubits * (reps + 1)).
        feature_map_name: ``"z"`` or ``"zz"``.
        engine: ``"torch"`` (fast exact statevector), ``"reference"`` or ``"aer"``
            (``TorchConnector(EstimatorQNN)``); all three compute the same function.
        input_encoding: ``"standardized"`` for z-scored features (fedlab's convention), mapped
            to angles by (pi/2) * sigmoid(z); ``"angles"`` for features already scaled to
            [0, pi/2] (the qml datasets), used as they are.

    Train it with one torch thread (``torch_threads(1)`` or ``torch.set_num_threads(1)``): its
    tensors are tiny, and intra-op threads only add synchronization (see benchmarks/README.md).

    Example (Hydra config)::

        model:
          _target_: sandbox_quantum.torch_model.HybridQNN
          num_qubits: 4
          reps: 2
    """

    #: fedlab's audit does not explain it (fedlab.trackers.audit.explain.skip_reason)
    unexplained_reason = (
        "the hybrid quantum model (model=qnn) is not explained: its quantum layer gives no "
        "input gradients when features feed the qubits directly, and IG would simulate "
        "ig_steps circuits per example"
    )

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        num_qubits: int = 4,
        reps: int = 1,
        feature_map_name: FeatureMapName = "z",
        engine: Engine = "torch",
        input_encoding: InputEncoding = "standardized",
    ) -> None:
        super().__init__()
        if input_encoding not in ("standardized", "angles"):
            raise ValueError(f"unknown input encoding {input_encoding!r}")
        num_features = math.prod(input_shape)
        if input_encoding == "angles" and num_features != num_qubits:
            raise ValueError("'angles' inputs feed the qubits directly: need one feature per qubit")
        self.input_encoding = input_encoding
        self.encoder = (
            nn.Identity() if num_features == num_qubits else nn.Linear(num_features, num_qubits)
        )
        self.quantum = quantum_layer(
            classifier_circuit(num_qubits, reps=reps, feature_map_name=feature_map_name),
            per_qubit_z(num_qubits),
            engine=engine,
            input_gradients=num_features != num_qubits,
        )
        self.head = nn.Linear(num_qubits, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_classes) for x of shape (batch, *input_shape)."""
        z = self.encoder(x.flatten(1))
        angles = z if self.input_encoding == "angles" else (math.pi / 2) * torch.sigmoid(z)
        return self.head(self.quantum(angles))
