"""The torch statevector engine against Qiskit: gate matrices, states, and EstimatorQNN outputs."""

import pickle

import numpy as np
import pytest
import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter, ParameterVector
from qiskit.circuit.library import CPhaseGate, PhaseGate, RXGate, RYGate, RZGate, RZZGate
from qiskit.quantum_info import SparsePauliOp, Statevector
from qiskit_machine_learning.neural_networks import EstimatorQNN

from sandbox_quantum import StatevectorQNN, classifier_circuit, make_estimator
from sandbox_quantum.statevector import PARAMETRIC_GATES

QISKIT_GATES = {
    "rx": RXGate,
    "ry": RYGate,
    "rz": RZGate,
    "p": PhaseGate,
    "rzz": RZZGate,
    "cp": CPhaseGate,
}


@pytest.mark.parametrize("name", sorted(PARAMETRIC_GATES))
def test_gate_matrices_match_qiskit(name: str) -> None:
    angles = torch.tensor([-2.1, 0.0, 0.4, 3.0], dtype=torch.double)
    ours = PARAMETRIC_GATES[name](angles).numpy()
    for angle, matrix in zip(angles.tolist(), ours, strict=True):
        np.testing.assert_allclose(matrix, QISKIT_GATES[name](angle).to_matrix(), atol=1e-12)


def _mixed_circuit() -> tuple[QuantumCircuit, ParameterVector, ParameterVector]:
    """Every supported gate kind, nonlinear angle expressions, and a gate Qiskit must unroll."""
    x, w = ParameterVector("x", 2), ParameterVector("w", 4)
    qc = QuantumCircuit(3)
    qc.h(range(3))
    qc.p(2 * x[0], 0)
    qc.rzz(2 * (np.pi - x[0]) * (np.pi - x[1]), 0, 2)
    qc.rx(w[0], 1)
    qc.cp(w[1] + x[1], 1, 2)
    qc.ry(w[2], 2)
    qc.rz(w[3] * x[0], 0)
    qc.cx(2, 0)
    qc.rxx(w[0] - w[1], 0, 1)  # not native: decomposed by the compiler
    qc.s(1)
    qc.swap(0, 2)
    return qc, x, w


def _binding(x: ParameterVector, w: ParameterVector, xs: list, ws: list) -> dict:
    # A dict, because a list would bind in the circuit's alphabetical order (w before x).
    return {**dict(zip(x, xs, strict=True)), **dict(zip(w, ws, strict=True))}


def test_statevector_matches_qiskit() -> None:
    qc, x, w = _mixed_circuit()
    layer = StatevectorQNN(qc, x, w, [SparsePauliOp("ZZZ")])
    inputs = torch.tensor([[0.3, 1.1], [1.5, 0.2]], dtype=torch.double)
    states = layer.statevector(inputs).detach().numpy()
    for row, state in zip(inputs.tolist(), states, strict=True):
        bound = qc.assign_parameters(_binding(x, w, row, layer.weight.tolist()))
        np.testing.assert_allclose(state, Statevector(bound).data, atol=1e-12)


def test_general_pauli_observables_match_qiskit() -> None:
    qc, x, w = _mixed_circuit()
    observables = [
        SparsePauliOp.from_list([("XYZ", 0.3), ("YYI", -0.7), ("XIX", 1.1), ("ZZI", 0.2)]),
        SparsePauliOp.from_list([("IIY", 1.0), ("III", -0.5)]),
    ]
    layer = StatevectorQNN(qc, x, w, observables)
    inputs = torch.tensor([[0.3, 1.1], [0.9, 0.4]], dtype=torch.double)
    values = layer(inputs).detach().numpy()
    for row, value in zip(inputs.tolist(), values, strict=True):
        state = Statevector(qc.assign_parameters(_binding(x, w, row, layer.weight.tolist())))
        expected = [state.expectation_value(o).real for o in observables]
        np.testing.assert_allclose(value, expected, atol=1e-12)


@pytest.mark.parametrize("feature_map_name", ["z", "zz"])
def test_outputs_and_gradients_match_estimator_qnn(feature_map_name: str) -> None:
    """The fast path computes EstimatorQNN's function and its parameter-shift gradients."""
    spec = classifier_circuit(4, reps=2, feature_map_name=feature_map_name)
    observables = [SparsePauliOp("ZIIZ"), SparsePauliOp.from_list([("XXII", 0.5), ("IYZI", 1)])]
    reference = EstimatorQNN(
        circuit=spec.circuit,
        estimator=make_estimator("reference"),
        observables=observables,
        input_params=list(spec.input_params),
        weight_params=list(spec.weight_params),
        input_gradients=True,
        default_precision=0.0,
    )
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, np.pi / 2, (5, 4))
    weights = rng.uniform(-1, 1, len(spec.weight_params))

    fast = StatevectorQNN(spec.circuit, spec.input_params, spec.weight_params, observables)
    fast.weight.data = torch.tensor(weights)
    x = torch.tensor(inputs, requires_grad=True)
    out = fast(x)
    input_grads, weight_grads = [], []
    for j in range(len(observables)):
        gx, gw = torch.autograd.grad(out[:, j].sum(), (x, fast.weight), retain_graph=True)
        input_grads.append(gx.numpy())
        weight_grads.append(gw.numpy())

    np.testing.assert_allclose(out.detach().numpy(), reference.forward(inputs, weights), atol=1e-6)
    ref_input_grad, ref_weight_grad = reference.backward(inputs, weights)
    # (batch, outputs, inputs): sum over the batch to match the autograd of out[:, j].sum().
    np.testing.assert_allclose(np.stack(input_grads), ref_input_grad.transpose(1, 0, 2), atol=1e-6)
    np.testing.assert_allclose(np.stack(weight_grads), ref_weight_grad.sum(axis=0), atol=1e-6)


def test_undeclared_parameter_is_rejected() -> None:
    qc = QuantumCircuit(1)
    qc.rx(Parameter("a"), 0)
    with pytest.raises(ValueError, match="not declared"):
        StatevectorQNN(qc, [], [], [SparsePauliOp("Z")])


def test_pickle_round_trip_recompiles() -> None:
    spec = classifier_circuit(2)
    layer = StatevectorQNN(
        spec.circuit, spec.input_params, spec.weight_params, [SparsePauliOp("ZZ")]
    )
    copy = pickle.loads(pickle.dumps(layer))
    inputs = torch.rand(3, 2)
    torch.testing.assert_close(copy(inputs), layer(inputs))


def test_rewritten_program_matches_qiskit_on_entangled_circuits() -> None:
    """The product-state prefix, fused permutation gathers and view-based single-qubit updates
    (StatevectorQNN's rewrite) against Qiskit's Statevector, with gates after entanglers,
    CX/SWAP/CCX runs and a parametric two-qubit gate in between."""
    import numpy as np
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter
    from qiskit.quantum_info import SparsePauliOp, Statevector

    from sandbox_quantum.statevector import StatevectorQNN

    x, w = Parameter("x"), Parameter("w")
    qc = QuantumCircuit(4)
    qc.h(0)
    qc.ry(x, 1)
    qc.cx(0, 2)
    qc.swap(1, 3)
    qc.ccx(0, 1, 3)
    qc.rx(w, 2)
    qc.rzz(x * w, 1, 2)
    qc.cx(3, 0)
    qc.x(2)
    qc.ry(2 * w, 0)
    qc.h(3)
    obs = [SparsePauliOp.from_list([("ZIXY", 0.5), ("IIZZ", -1.0)])]
    layer = StatevectorQNN(qc, [x], [w], obs)
    assert any(isinstance(step, torch.Tensor) for step in layer._program)  # a fused gather
    inputs = torch.tensor([[0.3], [1.1]], dtype=torch.double)
    states = layer.statevector(inputs).detach().numpy()
    for row, value in zip(states, inputs[:, 0].tolist(), strict=True):
        bound = qc.assign_parameters({x: value, w: float(layer.weight.detach()[0])})
        expected = Statevector(bound).data
        phase = np.vdot(row, expected)  # equal up to the circuit's global phase
        assert abs(abs(phase) - 1) < 1e-12
        assert np.allclose(row * phase, expected, atol=1e-12)
