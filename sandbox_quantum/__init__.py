"""Qiskit 2.x sandbox: small quantum algorithms and quantum ML, each checked against exact answers.

Every experiment follows one pattern: build a circuit, run it on a V2 primitive chosen by name
("reference" or "aer", optionally with an Aer noise model), and get a frozen dataclass whose
numbers include the gap to theory, brute force or exact diagonalization.

Modules: ``primitives`` (pick a sampler/estimator), ``grover``, ``qaoa``, ``vqe``, ``qml``
(datasets, QSVC, VQC, hybrid QNN training), ``qnn`` (classifier circuit and its engines),
``statevector`` (exact torch simulation with autograd), ``torch_model`` (``HybridQNN`` for
fedlab) and ``resources`` (transpile costs on generic backends, noise models).
"""

from .grover import (
    GroverResult,
    grover_circuit,
    optimal_iterations,
    phase_oracle_for,
    run_grover,
    theoretical_success,
)
from .primitives import (
    DEFAULT_SHOTS,
    PrimitiveName,
    for_noise_model,
    make_estimator,
    make_sampler,
    sample_counts,
)
from .qaoa import (
    QAOAResult,
    brute_force_maxcut,
    cut_value,
    linear_ramp_point,
    maxcut_hamiltonian,
    qaoa_circuit,
    run_qaoa,
)
from .qml import (
    ClassifierResult,
    Dataset,
    accuracy,
    fit_classifier,
    load_ad_hoc,
    load_digits_pca,
    load_iris_binary,
    scale_to_angles,
    train_qnn,
    train_qsvc,
    train_vqc,
)
from .qnn import QNNCircuit, classifier_circuit, feature_map, per_qubit_z, quantum_layer
from .resources import (
    NoiseImpact,
    ResourceReport,
    coupling_map,
    depolarizing_noise_model,
    format_reports,
    generic_backend,
    noise_impact,
    resource_report,
)
from .statevector import StatevectorQNN
from .torch_model import HybridQNN, torch_threads
from .vqe import (
    H2_PAULI_TERMS,
    EnergyMinimum,
    VQEResult,
    exact_ground_energy,
    h2_hamiltonian,
    h2_nuclear_repulsion,
    ising_hamiltonian,
    minimize_energy,
    run_vqe,
)

__all__ = [
    "DEFAULT_SHOTS",
    "H2_PAULI_TERMS",
    "ClassifierResult",
    "Dataset",
    "EnergyMinimum",
    "GroverResult",
    "HybridQNN",
    "NoiseImpact",
    "PrimitiveName",
    "QAOAResult",
    "QNNCircuit",
    "ResourceReport",
    "StatevectorQNN",
    "VQEResult",
    "accuracy",
    "brute_force_maxcut",
    "classifier_circuit",
    "coupling_map",
    "cut_value",
    "depolarizing_noise_model",
    "exact_ground_energy",
    "feature_map",
    "fit_classifier",
    "for_noise_model",
    "format_reports",
    "generic_backend",
    "grover_circuit",
    "h2_hamiltonian",
    "h2_nuclear_repulsion",
    "ising_hamiltonian",
    "linear_ramp_point",
    "load_ad_hoc",
    "load_digits_pca",
    "load_iris_binary",
    "make_estimator",
    "make_sampler",
    "maxcut_hamiltonian",
    "minimize_energy",
    "noise_impact",
    "optimal_iterations",
    "per_qubit_z",
    "phase_oracle_for",
    "qaoa_circuit",
    "quantum_layer",
    "resource_report",
    "run_grover",
    "run_qaoa",
    "run_vqe",
    "sample_counts",
    "scale_to_angles",
    "theoretical_success",
    "torch_threads",
    "train_qnn",
    "train_qsvc",
    "train_vqc",
]
