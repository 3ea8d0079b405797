"""Grover search with a closed-form answer to compare against.

With M marked items among N = 2**n, one Grover iteration rotates the state by 2*theta where
sin(theta) = sqrt(M/N), so after k iterations the success probability is exactly
sin^2((2k+1)*theta). Every result carries that theoretical value and the sampled gap to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from qiskit import QuantumCircuit
from qiskit.circuit.library import grover_operator
from qiskit_aer.noise import NoiseModel

from .primitives import DEFAULT_SHOTS, PrimitiveName, sample_counts


@dataclass(frozen=True)
class GroverResult:
    """Outcome of one Grover run; bitstrings use Qiskit's order (qubit 0 rightmost)."""

    num_qubits: int
    marked: tuple[str, ...]
    iterations: int
    shots: int
    success_probability: float
    theoretical_probability: float
    most_likely: str

    @property
    def gap(self) -> float:
        """Measured minus theoretical success probability (negative under noise)."""
        return self.success_probability - self.theoretical_probability


def _rotation_angle(num_qubits: int, num_marked: int) -> float:
    return math.asin(math.sqrt(num_marked / 2**num_qubits))


def optimal_iterations(num_qubits: int, num_marked: int = 1) -> int:
    """Iteration count that brings (2k+1)*theta closest to pi/2."""
    return max(0, round(math.pi / (4 * _rotation_angle(num_qubits, num_marked)) - 0.5))


def theoretical_success(num_qubits: int, iterations: int, num_marked: int = 1) -> float:
    """Exact success probability sin^2((2k+1)*theta) of noiseless Grover search."""
    theta = _rotation_angle(num_qubits, num_marked)
    return math.sin((2 * iterations + 1) * theta) ** 2


def _marked_states(marked: Sequence[str] | str) -> tuple[str, ...]:
    """Validated, de-duplicated marked bitstrings (a duplicate would flip a sign back)."""
    states = (marked,) if isinstance(marked, str) else tuple(dict.fromkeys(marked))
    num_qubits = len(states[0]) if states else 0
    if num_qubits < 2 or any(len(b) != num_qubits or set(b) - {"0", "1"} for b in states):
        raise ValueError(f"need bitstrings of one length >= 2, got {marked!r}")
    return states


def phase_oracle_for(marked: Sequence[str] | str) -> QuantumCircuit:
    """Oracle that flips the sign of each marked basis state.

    Each state is mapped to |1...1> by X gates on its zero bits, hit with a multi-controlled Z
    (H-MCX-H on the top qubit), and mapped back.
    """
    marked = _marked_states(marked)
    num_qubits = len(marked[0])
    oracle = QuantumCircuit(num_qubits, name="oracle")
    top = num_qubits - 1
    for bits in marked:
        zeros = [q for q in range(num_qubits) if bits[num_qubits - 1 - q] == "0"]
        if zeros:
            oracle.x(zeros)
        oracle.h(top)
        oracle.mcx(list(range(top)), top)
        oracle.h(top)
        if zeros:
            oracle.x(zeros)
    return oracle


def grover_circuit(marked: Sequence[str] | str, iterations: int | None = None) -> QuantumCircuit:
    """Uniform superposition, ``iterations`` Grover steps (optimal if None), then measurement."""
    marked = _marked_states(marked)
    oracle = phase_oracle_for(marked)
    num_qubits = oracle.num_qubits
    if iterations is None:
        iterations = optimal_iterations(num_qubits, len(marked))
    step = grover_operator(oracle)
    circuit = QuantumCircuit(num_qubits, name=f"grover_{num_qubits}q_{iterations}it")
    circuit.h(range(num_qubits))
    for _ in range(iterations):
        circuit.compose(step, inplace=True)
    circuit.measure_all()
    return circuit


def run_grover(
    marked: Sequence[str] | str,
    *,
    iterations: int | None = None,
    primitive: PrimitiveName = "reference",
    shots: int = DEFAULT_SHOTS,
    seed: int | None = 0,
    noise_model: NoiseModel | None = None,
) -> GroverResult:
    """Sample Grover search for the ``marked`` bitstring(s) and compare with theory."""
    marked = _marked_states(marked)
    num_qubits = len(marked[0])
    if iterations is None:
        iterations = optimal_iterations(num_qubits, len(marked))
    circuit = grover_circuit(marked, iterations)
    counts = sample_counts(
        circuit, primitive=primitive, shots=shots, seed=seed, noise_model=noise_model
    )
    hits = sum(counts.get(bits, 0) for bits in marked)
    return GroverResult(
        num_qubits=num_qubits,
        marked=marked,
        iterations=iterations,
        shots=shots,
        success_probability=hits / shots,
        theoretical_probability=theoretical_success(num_qubits, iterations, len(marked)),
        most_likely=max(counts, key=counts.__getitem__),
    )
