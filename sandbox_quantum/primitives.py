"""Choose a Qiskit V2 primitive by name, so every experiment can switch simulators with a string.

The reference primitives (``StatevectorSampler``/``StatevectorEstimator``) are exact and need
nothing beyond Qiskit; Aer's ``SamplerV2``/``EstimatorV2`` are faster from about 12 qubits and are
the only ones that accept a noise model. Keeping the choice in one place means the algorithm
modules never import a simulator directly and a noisy run is the same call with one more argument.
"""

from __future__ import annotations

from typing import Literal

from qiskit import QuantumCircuit, transpile
from qiskit.primitives import (
    BaseEstimatorV2,
    BaseSamplerV2,
    StatevectorEstimator,
    StatevectorSampler,
)
from qiskit_aer.noise import NoiseModel
from qiskit_aer.primitives import EstimatorV2 as AerEstimator
from qiskit_aer.primitives import SamplerV2 as AerSampler

PrimitiveName = Literal["reference", "aer"]

DEFAULT_SHOTS = 10_000
"""Enough shots that a probability near 0.95 has a standard error of about 0.002."""


def _check_noise(name: PrimitiveName, noise_model: NoiseModel | None) -> None:
    if name not in ("reference", "aer"):
        raise ValueError(f"unknown primitive {name!r}: use 'reference' or 'aer'")
    if noise_model is not None and name != "aer":
        raise ValueError("a noise model needs the 'aer' primitive")


def make_sampler(
    name: PrimitiveName = "reference",
    *,
    shots: int = DEFAULT_SHOTS,
    seed: int | None = None,
    noise_model: NoiseModel | None = None,
) -> BaseSamplerV2:
    """Return a seeded V2 sampler; with a noise model, Aer samples the noisy circuit."""
    _check_noise(name, noise_model)
    if name == "reference":
        return StatevectorSampler(default_shots=shots, seed=seed)
    backend_options = {} if noise_model is None else {"noise_model": noise_model}
    return AerSampler(default_shots=shots, seed=seed, options={"backend_options": backend_options})


def make_estimator(
    name: PrimitiveName = "reference",
    *,
    precision: float = 0.0,
    seed: int | None = None,
    noise_model: NoiseModel | None = None,
) -> BaseEstimatorV2:
    """Return a V2 estimator; ``precision=0`` gives exact expectation values.

    A noisy Aer estimator simulates the density matrix: the statevector method would follow a
    single noise trajectory and return a random expectation value instead of the noisy mean.
    """
    _check_noise(name, noise_model)
    if name == "reference":
        return StatevectorEstimator(default_precision=precision, seed=seed)
    backend_options = (
        {} if noise_model is None else {"noise_model": noise_model, "method": "density_matrix"}
    )
    return AerEstimator(
        options={
            "default_precision": precision,
            "backend_options": backend_options,
            "run_options": {"seed_simulator": seed},
        }
    )


def for_noise_model(circuit: QuantumCircuit, noise_model: NoiseModel | None) -> QuantumCircuit:
    """Rewrite ``circuit`` into the noise model's basis gates (qubit order unchanged).

    Aer attaches errors by gate name, so a circuit still written in ``mcx`` or ``ry`` would run
    noiselessly under a model that only defines errors on ``cx``, ``sx`` and ``x``.
    """
    if noise_model is None:
        return circuit
    return transpile(circuit, basis_gates=noise_model.basis_gates, optimization_level=1)


def sample_counts(
    circuit: QuantumCircuit,
    *,
    primitive: PrimitiveName = "reference",
    shots: int = DEFAULT_SHOTS,
    seed: int | None = None,
    noise_model: NoiseModel | None = None,
) -> dict[str, int]:
    """Measure a circuit that ends in ``measure_all`` and return its counts (qubit 0 rightmost)."""
    sampler = make_sampler(primitive, shots=shots, seed=seed, noise_model=noise_model)
    result = sampler.run([for_noise_model(circuit, noise_model)]).result()[0]
    return result.join_data().get_counts()
