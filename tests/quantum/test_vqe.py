"""VQE against exact energies: the literature H2 value and numpy diagonalization of a TFIM chain."""

from functools import reduce

import numpy as np
import pytest
from qiskit.circuit.library import real_amplitudes

from sandbox_quantum import (
    depolarizing_noise_model,
    exact_ground_energy,
    h2_hamiltonian,
    h2_nuclear_repulsion,
    ising_hamiltonian,
    run_vqe,
)

H2_EXACT = -1.857275  # Ha, electronic, 0.735 A (Qiskit algorithms tutorial)
ISING_TOLERANCE = 1e-3  # Ha-like units; about 2e-4 of |E0| for 4 spins at the critical field


def _ising_matrix(num_spins: int, coupling: float, field: float) -> np.ndarray:
    """Open-chain TFIM built from Kronecker products, independently of Qiskit."""
    eye, x, z = np.eye(2), np.array([[0, 1], [1, 0]]), np.diag([1, -1])

    def site(op: np.ndarray, i: int) -> np.ndarray:
        return reduce(np.kron, [op if k == i else eye for k in range(num_spins)])

    h = sum(-coupling * site(z, i) @ site(z, i + 1) for i in range(num_spins - 1))
    return h + sum(-field * site(x, i) for i in range(num_spins))


def test_h2_hamiltonian_and_repulsion() -> None:
    assert exact_ground_energy(h2_hamiltonian()) == pytest.approx(H2_EXACT, abs=1e-6)
    # Tutorials quote a total energy of -1.137306 Ha = electronic + 0.719969 Ha repulsion.
    assert h2_nuclear_repulsion() == pytest.approx(0.719969, abs=1e-6)


def test_h2_vqe_within_one_millihartree() -> None:
    result = run_vqe(h2_hamiltonian(), real_amplitudes(2, reps=1), seed=0)
    assert abs(result.energy - H2_EXACT) < 1e-3
    assert result.error >= -1e-9  # variational: never below the exact ground energy


def test_ising_hamiltonian_matches_kronecker_construction() -> None:
    op = ising_hamiltonian(4, coupling=1.0, field=0.7)
    # Same spectrum as the independent matrix (Qiskit's qubit order is reversed, eigvals are not).
    np.testing.assert_allclose(
        np.linalg.eigvalsh(op.to_matrix()), np.linalg.eigvalsh(_ising_matrix(4, 1.0, 0.7))
    )


def test_ising_vqe_matches_exact_diagonalization() -> None:
    exact = np.linalg.eigvalsh(_ising_matrix(4, 1.0, 1.0))[0]
    result = run_vqe(
        ising_hamiltonian(4), real_amplitudes(4, reps=3), method="SLSQP", maxiter=300, seed=0
    )
    assert result.exact_energy == pytest.approx(exact)
    assert abs(result.energy - exact) < ISING_TOLERANCE


def test_noisy_h2_energy_rises() -> None:
    ansatz = real_amplitudes(2, reps=1)
    noisy = run_vqe(
        h2_hamiltonian(),
        ansatz,
        primitive="aer",
        noise_model=depolarizing_noise_model(p1=1e-3, p2=5e-2),
        maxiter=150,
    )
    # Depolarizing noise mixes in higher states: the best reachable energy rises above exact.
    assert noisy.error > 5e-3
