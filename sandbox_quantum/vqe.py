"""Variational quantum eigensolver, with exact diagonalization as the yardstick.

``minimize_energy`` is the shared engine (QAOA reuses it): it minimizes <psi(theta)|H|psi(theta)>
with SciPy, evaluating each energy with one V2 estimator call. ``run_vqe`` wraps it and reports
the gap to the lowest eigenvalue of H from numpy, which is exact for the small systems here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qiskit import QuantumCircuit
from qiskit.primitives import BaseEstimatorV2
from qiskit.quantum_info import SparsePauliOp
from qiskit_aer.noise import NoiseModel
from scipy.optimize import minimize

from .primitives import PrimitiveName, for_noise_model, make_estimator

BOHR_IN_ANGSTROM = 0.529177210903
"""CODATA 2018 Bohr radius, used to turn the H-H distance into atomic units."""

H2_BOND_LENGTH_ANGSTROM = 0.735

H2_PAULI_TERMS: tuple[tuple[str, float], ...] = (
    ("II", -1.052373245772859),
    ("IZ", 0.39793742484318045),
    ("ZI", -0.39793742484318045),
    ("ZZ", -0.01128010425623538),
    ("XX", 0.18093119978423156),
)
"""Electronic Hamiltonian of H2 at 0.735 A (STO-3G, parity mapping, two-qubit reduction).

Source: qiskit-community/qiskit-algorithms, docs/tutorials/01_algorithms_introduction.ipynb
("created by the Nature application module as the Hamiltonian for an H2 molecule at 0.735A").
Its lowest eigenvalue is -1.857275 Ha; nuclear repulsion is not included.
"""


def h2_hamiltonian() -> SparsePauliOp:
    """The 2-qubit H2 electronic Hamiltonian of ``H2_PAULI_TERMS``."""
    return SparsePauliOp.from_list(H2_PAULI_TERMS)


def h2_nuclear_repulsion(bond_length_angstrom: float = H2_BOND_LENGTH_ANGSTROM) -> float:
    """Proton-proton repulsion 1/R in Hartree (R in Bohr): add it for the total energy."""
    return BOHR_IN_ANGSTROM / bond_length_angstrom


def ising_hamiltonian(
    num_spins: int, coupling: float = 1.0, field: float = 1.0, periodic: bool = False
) -> SparsePauliOp:
    """Transverse-field Ising chain H = -J sum Z_i Z_{i+1} - h sum X_i.

    ``coupling == field`` is the critical point, where the gap closes and VQE is hardest.
    """
    bonds = [(i, i + 1) for i in range(num_spins - 1)]
    if periodic and num_spins > 2:
        bonds.append((num_spins - 1, 0))
    terms = [("ZZ", list(bond), -coupling) for bond in bonds]
    terms += [("X", [i], -field) for i in range(num_spins)]
    return SparsePauliOp.from_sparse_list(terms, num_qubits=num_spins).simplify()


def exact_ground_energy(hamiltonian: SparsePauliOp) -> float:
    """Lowest eigenvalue by dense numpy diagonalization (fine up to ~12 qubits)."""
    return float(np.linalg.eigvalsh(hamiltonian.to_matrix())[0])


@dataclass(frozen=True)
class EnergyMinimum:
    """Best point found by ``minimize_energy``."""

    energy: float
    parameters: tuple[float, ...]
    evaluations: int


def minimize_energy(
    ansatz: QuantumCircuit,
    hamiltonian: SparsePauliOp,
    estimator: BaseEstimatorV2,
    initial_point: np.ndarray,
    *,
    maxiter: int = 500,
    method: str = "COBYLA",
) -> EnergyMinimum:
    """Minimize the estimator's <H> over the ansatz parameters with ``scipy.optimize.minimize``.

    COBYLA is the default because it needs no gradient and tolerates the shot noise of a
    sampling estimator; with an exact estimator any SciPy method works.
    """
    evaluations = 0

    def energy(theta: np.ndarray) -> float:
        nonlocal evaluations
        evaluations += 1
        return float(estimator.run([(ansatz, hamiltonian, theta)]).result()[0].data.evs)

    result = minimize(energy, initial_point, method=method, options={"maxiter": maxiter})
    return EnergyMinimum(
        energy=float(result.fun),
        parameters=tuple(float(v) for v in result.x),
        evaluations=evaluations,
    )


@dataclass(frozen=True)
class VQEResult:
    """VQE energy next to the exact ground energy of the same Hamiltonian."""

    energy: float
    exact_energy: float
    parameters: tuple[float, ...]
    evaluations: int

    @property
    def error(self) -> float:
        """``energy - exact_energy``; never negative for an exact estimator (variational)."""
        return self.energy - self.exact_energy


def run_vqe(
    hamiltonian: SparsePauliOp,
    ansatz: QuantumCircuit,
    *,
    primitive: PrimitiveName = "reference",
    seed: int = 0,
    maxiter: int = 500,
    method: str = "COBYLA",
    noise_model: NoiseModel | None = None,
) -> VQEResult:
    """Run VQE from a seeded random start in [-pi, pi] and compare with exact diagonalization."""
    initial_point = np.random.default_rng(seed).uniform(-np.pi, np.pi, ansatz.num_parameters)
    estimator = make_estimator(primitive, seed=seed, noise_model=noise_model)
    best = minimize_energy(
        for_noise_model(ansatz, noise_model),
        hamiltonian,
        estimator,
        initial_point,
        maxiter=maxiter,
        method=method,
    )
    return VQEResult(
        energy=best.energy,
        exact_energy=exact_ground_energy(hamiltonian),
        parameters=best.parameters,
        evaluations=best.evaluations,
    )
