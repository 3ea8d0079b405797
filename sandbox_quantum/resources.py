"""What a sandbox circuit costs on hardware-like connectivity, and what noise does to its answer.

Simulators accept any two-qubit gate between any qubits; devices do not. Transpiling onto
``GenericBackendV2`` with a line, heavy-hex or all-to-all coupling map shows how much routing
(SWAPs, each three CX) a circuit needs. The noise helpers build a depolarizing model for Aer and
measure how far a figure of merit (Grover success, VQE energy, ...) moves under it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from qiskit import QuantumCircuit
from qiskit.providers.fake_provider import GenericBackendV2
from qiskit.transpiler import CouplingMap
from qiskit.transpiler.preset_passmanagers import generate_preset_pass_manager
from qiskit_aer.noise import NoiseModel, depolarizing_error

Coupling = Literal["line", "heavy_hex", "all_to_all"]

_HEAVY_HEX_DISTANCES = (3, 5, 7)
"""Code distances giving 19, 65 and 133 physical qubits (the smallest that fits is used)."""

NOISY_BASIS = ("cx", "rz", "sx", "x")


@dataclass(frozen=True)
class ResourceReport:
    """Cost of one circuit after transpiling onto one coupling map."""

    circuit: str
    coupling: Coupling
    backend_qubits: int
    active_qubits: int
    depth: int
    two_qubit_gates: int
    swaps_inserted: int
    gate_counts: dict[str, int]


def coupling_map(kind: Coupling, num_qubits: int) -> CouplingMap | None:
    """Coupling map with at least ``num_qubits`` qubits; ``None`` means all-to-all."""
    if kind == "line":
        return CouplingMap.from_line(num_qubits)
    if kind == "all_to_all":
        return None
    if kind == "heavy_hex":
        for distance in _HEAVY_HEX_DISTANCES:
            heavy_hex = CouplingMap.from_heavy_hex(distance)
            if heavy_hex.size() >= num_qubits:
                return heavy_hex
        raise ValueError(f"no heavy-hex map in this sandbox holds {num_qubits} qubits")
    raise ValueError(f"unknown coupling {kind!r}")


def generic_backend(kind: Coupling, num_qubits: int, seed: int = 0) -> GenericBackendV2:
    """A fake device (cx/id/rz/sx/x basis, random but seeded error rates) with that coupling."""
    cmap = coupling_map(kind, num_qubits)
    size = num_qubits if cmap is None else cmap.size()
    return GenericBackendV2(size, coupling_map=cmap, seed=seed)


def resource_report(
    circuit: QuantumCircuit,
    kind: Coupling,
    *,
    optimization_level: int = 1,
    seed: int = 0,
) -> ResourceReport:
    """Transpile ``circuit`` for a generic backend with coupling ``kind`` and count its cost.

    Routing SWAPs are counted while the circuit still contains them (a pass-manager callback),
    because the final basis translation turns each into three CX and hides them.
    """
    backend = generic_backend(kind, circuit.num_qubits, seed)
    manager = generate_preset_pass_manager(
        optimization_level=optimization_level, backend=backend, seed_transpiler=seed
    )
    swaps_seen = [0]

    def count_swaps(**kwargs: object) -> None:
        swaps_seen.append(kwargs["dag"].count_ops().get("swap", 0))

    compiled = manager.run(circuit, callback=count_swaps)
    ops = {name: int(count) for name, count in compiled.count_ops().items()}
    two_qubit = sum(
        1 for inst in compiled.data if inst.operation.num_qubits == 2 and inst.name != "barrier"
    )
    active = {
        compiled.find_bit(qubit).index
        for inst in compiled.data
        if inst.name != "barrier"
        for qubit in inst.qubits
    }
    return ResourceReport(
        circuit=circuit.name,
        coupling=kind,
        backend_qubits=backend.num_qubits,
        active_qubits=len(active),
        depth=compiled.depth(lambda inst: inst.name != "barrier"),
        two_qubit_gates=two_qubit,
        swaps_inserted=max(swaps_seen) - circuit.count_ops().get("swap", 0),
        gate_counts=ops,
    )


def format_reports(reports: Sequence[ResourceReport]) -> str:
    """Plain-text table of reports, one row each, for notebooks and logs."""
    header = f"{'circuit':<24}{'coupling':<12}{'qubits':>7}{'depth':>7}{'2q':>6}{'swaps':>7}"
    rows = [
        f"{r.circuit:<24}{r.coupling:<12}{r.active_qubits:>7}{r.depth:>7}"
        f"{r.two_qubit_gates:>6}{r.swaps_inserted:>7}"
        for r in reports
    ]
    return "\n".join([header, *rows])


def depolarizing_noise_model(p1: float = 1e-3, p2: float = 1e-2) -> NoiseModel:
    """Depolarizing errors: ``p1`` on sx/x, ``p2`` on cx (rz is virtual and stays exact).

    The defaults are typical superconducting-device magnitudes: two-qubit gates are about ten
    times worse than single-qubit ones.
    """
    model = NoiseModel(basis_gates=list(NOISY_BASIS))
    model.add_all_qubit_quantum_error(depolarizing_error(p1, 1), ["sx", "x"])
    model.add_all_qubit_quantum_error(depolarizing_error(p2, 2), ["cx"])
    return model


@dataclass(frozen=True)
class NoiseImpact:
    """A figure of merit without and with noise."""

    ideal: float
    noisy: float

    @property
    def degradation(self) -> float:
        """``ideal - noisy``: positive when noise lowers the figure (e.g. success probability)."""
        return self.ideal - self.noisy


def noise_impact(
    figure_of_merit: Callable[[NoiseModel | None], float], noise_model: NoiseModel
) -> NoiseImpact:
    """Evaluate ``figure_of_merit(None)`` and ``figure_of_merit(noise_model)``.

    The callable runs the experiment on Aer in both cases so that only the noise differs, e.g.
    ``lambda nm: run_grover("101", primitive="aer", noise_model=nm).success_probability``.
    """
    return NoiseImpact(ideal=figure_of_merit(None), noisy=figure_of_merit(noise_model))
