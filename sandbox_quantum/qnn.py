"""The classifier circuit shared by every QNN in the sandbox, and the engines that evaluate it.

One circuit (feature map, then a ``real_amplitudes`` ansatz, reading <Z_i> on every qubit) can be
evaluated by three interchangeable torch modules with the same ``weight`` parameter and the same
outputs:

* ``"reference"``: ``TorchConnector(EstimatorQNN)`` on Qiskit's exact ``StatevectorEstimator``,
  with parameter-shift gradients; the textbook path;
* ``"aer"``: the same on Aer's ``EstimatorV2``;
* ``"torch"``: :class:`~sandbox_quantum.statevector.StatevectorQNN`, an exact batched simulation
  with autograd, about 100x faster on small circuits (see benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.circuit.library import real_amplitudes, z_feature_map, zz_feature_map
from qiskit.quantum_info import SparsePauliOp
from qiskit_machine_learning.connectors import TorchConnector
from qiskit_machine_learning.neural_networks import EstimatorQNN

from .primitives import make_estimator
from .statevector import StatevectorQNN

FeatureMapName = Literal["z", "zz"]
Engine = Literal["torch", "reference", "aer"]


def feature_map(name: FeatureMapName, num_features: int, reps: int = 1) -> QuantumCircuit:
    """``z_feature_map`` (product state, no entanglement) or ``zz_feature_map`` (pairwise ZZ).

    Both encode feature x as the phase 2x, so inputs should lie in [0, pi/2] (one half-turn).
    """
    if name == "z":
        return z_feature_map(num_features, reps=reps)
    if name == "zz":
        return zz_feature_map(num_features, reps=reps)
    raise ValueError(f"unknown feature map {name!r}: use 'z' or 'zz'")


@dataclass(frozen=True)
class QNNCircuit:
    """A classifier circuit with its input (feature) and weight (trainable) parameters."""

    circuit: QuantumCircuit
    input_params: tuple[Parameter, ...]
    weight_params: tuple[Parameter, ...]


def classifier_circuit(
    num_qubits: int, *, reps: int = 1, feature_map_name: FeatureMapName = "z"
) -> QNNCircuit:
    """Feature map (one repetition) followed by ``real_amplitudes(num_qubits, reps)``."""
    encoder = feature_map(feature_map_name, num_qubits)
    ansatz = real_amplitudes(num_qubits, reps=reps)
    circuit = QuantumCircuit(
        num_qubits, name=f"classifier_{feature_map_name}_{num_qubits}q_r{reps}"
    )
    circuit.compose(encoder, inplace=True)
    circuit.compose(ansatz, inplace=True)
    return QNNCircuit(circuit, tuple(encoder.parameters), tuple(ansatz.parameters))


def per_qubit_z(num_qubits: int) -> list[SparsePauliOp]:
    """Observables Z_0, ..., Z_{n-1}: one bounded feature per qubit for a classical head."""
    return [
        SparsePauliOp.from_sparse_list([("Z", [q], 1.0)], num_qubits) for q in range(num_qubits)
    ]


def quantum_layer(
    qnn_circuit: QNNCircuit,
    observables: list[SparsePauliOp],
    *,
    engine: Engine = "torch",
    input_gradients: bool = True,
) -> torch.nn.Module:
    """Torch module mapping (batch, num_inputs) to (batch, len(observables)) expectations.

    ``input_gradients`` matters only for the EstimatorQNN engines (autograd always has them):
    switch it off when nothing trainable sits before the layer, it saves a third of the
    parameter-shift circuits. ``precision=0`` makes those engines exact and deterministic
    (EstimatorQNN's own default of 1/64 would add noise to every output).
    """
    if engine == "torch":
        return StatevectorQNN(
            qnn_circuit.circuit, qnn_circuit.input_params, qnn_circuit.weight_params, observables
        )
    qnn = EstimatorQNN(
        circuit=qnn_circuit.circuit,
        estimator=make_estimator(engine, precision=0.0),
        observables=observables,
        input_params=list(qnn_circuit.input_params),
        weight_params=list(qnn_circuit.weight_params),
        input_gradients=input_gradients,
        default_precision=0.0,
    )
    return TorchConnector(qnn)
