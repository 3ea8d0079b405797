"""The routing study: one sandbox circuit transpiled onto each coupling map, costs compared."""

from __future__ import annotations

from dataclasses import dataclass, field

from matplotlib.figure import Figure
from qiskit import QuantumCircuit

from fedlab.config.schema import require, require_choice

from ..grover import grover_circuit
from ..qaoa import qaoa_circuit
from ..qnn import classifier_circuit
from ..resources import ResourceReport, resource_report
from .base import COUPLINGS, Outcome, QuantumExperiment, require_positive


@dataclass(frozen=True)
class RoutingStudy:
    """One circuit's transpiled cost per coupling map; all-to-all is the routing-free yardstick."""

    circuit: str
    num_qubits: int
    reports: tuple[ResourceReport, ...]

    @property
    def extra_two_qubit_gates(self) -> dict[str, int]:
        """Two-qubit gates each coupling needs beyond all-to-all: the price of routing."""
        base = next(r.two_qubit_gates for r in self.reports if r.coupling == "all_to_all")
        return {r.coupling: r.two_qubit_gates - base for r in self.reports}


@dataclass
class Resources(QuantumExperiment):
    """Transpile one sandbox circuit onto each coupling map and compare the costs."""

    circuit: str = "qaoa_maxcut"
    num_qubits: int = 6
    reps: int = 2
    optimization_level: int = 1
    couplings: list[str] = field(default_factory=lambda: list(COUPLINGS))

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self.circuit, "experiment.circuit", ("qaoa_maxcut", "grover", "classifier"))
        require(
            2 <= self.num_qubits <= 10,
            "experiment.num_qubits",
            f"must be in [2, 10], got {self.num_qubits}",
        )
        require_positive(self.reps, "reps")
        require(
            self.optimization_level in (0, 1, 2, 3),
            "experiment.optimization_level",
            f"must be 0, 1, 2 or 3, got {self.optimization_level}",
        )
        require(
            "all_to_all" in self.couplings,
            "experiment.couplings",
            "must include all_to_all, the yardstick the others are compared with",
        )

    def build_circuit(self) -> QuantumCircuit:
        """The chosen circuit at width ``num_qubits``.

        QAOA runs on the circulant graph C_n(1, 2) (a ring plus next-nearest chords): its
        triangles cannot be laid on a line, so routing shows. Grover marks the all-ones state.
        """
        n = self.num_qubits
        if self.circuit == "qaoa_maxcut":
            edges = sorted({tuple(sorted((i, (i + d) % n))) for i in range(n) for d in (1, 2)})
            return qaoa_circuit(edges, n, self.reps)
        if self.circuit == "grover":
            return grover_circuit("1" * n)
        return classifier_circuit(n, reps=self.reps, feature_map_name="zz").circuit

    def run(self) -> Outcome:
        circuit = self.build_circuit()
        reports = tuple(
            resource_report(
                circuit, kind, optimization_level=self.optimization_level, seed=self.seed
            )
            for kind in self.couplings
        )
        study = RoutingStudy(circuit.name, circuit.num_qubits, reports)

        def bars(fig: Figure) -> None:
            axes = fig.subplots(1, 3)
            labels = [r.coupling for r in reports]
            for ax, key in zip(axes, ("two_qubit_gates", "depth", "swaps_inserted"), strict=True):
                ax.bar(labels, [getattr(r, key) for r in reports], color="tab:purple")
                ax.set_title(key.replace("_", " "))
                ax.tick_params(axis="x", rotation=30)
            fig.suptitle(
                f"{circuit.name} transpiled (optimization level {self.optimization_level})"
            )

        return Outcome(study, circuit, reports, {"resources.png": bars})
