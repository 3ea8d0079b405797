"""VQE with a ``real_amplitudes`` ansatz, scored against exact diagonalization: H2 and an
Ising chain."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from matplotlib.figure import Figure
from qiskit.circuit.library import real_amplitudes
from qiskit.quantum_info import SparsePauliOp

from fedlab.config.schema import require, require_choice

from ..vqe import h2_hamiltonian, ising_hamiltonian, run_vqe
from .base import Outcome, SimulatedExperiment, require_positive

# SciPy methods that need nothing but the objective (gradients by finite differences).
MINIMIZERS = (
    "Nelder-Mead", "Powell", "CG", "BFGS", "L-BFGS-B", "TNC", "COBYLA", "COBYQA", "SLSQP",
    "trust-constr",
)  # fmt: skip


@dataclass
class _VQE(SimulatedExperiment):
    """VQE with a ``real_amplitudes`` ansatz against exact diagonalization."""

    reps: int = 1
    method: str = "COBYLA"
    maxiter: int = 500
    #: Which energy the Hamiltonian's eigenvalues are, and their unit ("" for none).
    quantity: ClassVar[str] = "energy"
    unit: ClassVar[str] = ""
    axis: ClassVar[str] = "energy"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self.reps, "reps")
        require_choice(self.method, "experiment.method", MINIMIZERS)
        require_positive(self.maxiter, "maxiter")

    @abstractmethod
    def hamiltonian(self) -> SparsePauliOp:
        """The operator whose ground energy VQE looks for."""

    def run(self) -> Outcome:
        hamiltonian = self.hamiltonian()
        ansatz = real_amplitudes(hamiltonian.num_qubits, reps=self.reps)
        result = run_vqe(
            hamiltonian,
            ansatz,
            primitive=self.primitive,
            seed=self.seed,
            maxiter=self.maxiter,
            method=self.method,
            noise_model=self.noise_model(),
        )
        levels = np.linalg.eigvalsh(hamiltonian.to_matrix())

        unit = f" {self.unit}" if self.unit else ""

        def spectrum(fig: Figure) -> None:
            ax = fig.subplots()
            ax.hlines(levels, 0, 1, color="tab:gray", lw=1, label="exact eigenvalues")
            ax.hlines(levels[0], 0, 1, color="k", lw=2, label=f"ground {levels[0]:.6f}{unit}")
            ax.hlines(
                result.energy, 0.25, 0.75, color="tab:red", ls="--", lw=2,
                label=f"VQE {result.energy:.6f}{unit} (error {result.error:.2e}{unit})",
            )  # fmt: skip
            ax.set(
                xticks=[],
                ylabel=self.axis,
                title=f"VQE, real_amplitudes reps={self.reps}, {self.method}",
            )
            ax.legend(fontsize=8, loc="upper right")

        quantities = {
            "energy": (f"VQE {self.quantity}", self.unit),
            "exact_energy": (f"exact {self.quantity}", self.unit),
            "error": ("error", self.unit),
        }
        return self.outcome(result, ansatz, {"spectrum.png": spectrum}, quantities)


@dataclass
class VQEH2(_VQE):
    """H2 at 0.735 A, 2 qubits; exact electronic ground energy -1.857275 Ha.

    Electronic: the nuclear repulsion (+0.7199 Ha at this distance) is not in the
    Hamiltonian, so the total energy is not what is printed; Hartree is its unit.
    """

    quantity: ClassVar[str] = "electronic energy"
    unit: ClassVar[str] = "Ha"
    axis: ClassVar[str] = "electronic energy (Ha, Hartree)"

    def hamiltonian(self) -> SparsePauliOp:
        return h2_hamiltonian()


@dataclass
class VQEIsing(_VQE):
    """Transverse-field Ising chain -J sum ZZ - h sum X of ``num_spins`` spins."""

    axis: ClassVar[str] = "energy (in the units of coupling J and field h)"

    num_spins: int = 4
    coupling: float = 1.0
    field: float = 1.0
    periodic: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            2 <= self.num_spins <= 10,
            "experiment.num_spins",
            f"must be in [2, 10] (exact diagonalization is dense), got {self.num_spins}",
        )

    def hamiltonian(self) -> SparsePauliOp:
        return ising_hamiltonian(self.num_spins, self.coupling, self.field, self.periodic)
