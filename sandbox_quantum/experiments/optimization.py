"""QAOA for MaxCut, scored against the brute-force optimum."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedlab.config.schema import require

from ..qaoa import qaoa_circuit, run_qaoa
from .base import Outcome, SampledExperiment, require_positive


@dataclass
class QAOAMaxCut(SampledExperiment):
    """QAOA for MaxCut on ``edges`` ([i, j] or [i, j, weight]) against brute force."""

    edges: list[Any] = field(default_factory=lambda: [[0, 1], [1, 2], [2, 0]])
    reps: int = 2
    maxiter: int = 300

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            len(self.edges) > 0
            and all(
                isinstance(e, list)
                and len(e) in (2, 3)
                and all(isinstance(v, int | float) for v in e)
                and all(isinstance(v, int) and v >= 0 for v in e[:2])
                and e[0] != e[1]
                for e in self.edges
            ),
            "experiment.edges",
            "a non-empty list of [i, j] or [i, j, weight] with node indices i != j, >= 0",
        )
        require(2 <= self.num_nodes <= 16, "experiment.edges", "need 2 to 16 nodes")
        require_positive(self.reps, "reps")
        require_positive(self.maxiter, "maxiter")

    @property
    def num_nodes(self) -> int:
        """Nodes are numbered from 0 to the largest index an edge mentions."""
        return int(max(max(e[0], e[1]) for e in self.edges)) + 1

    def graph(self) -> list[tuple[int, int, float]]:
        """The edges as sandbox_quantum takes them."""
        return [(int(e[0]), int(e[1]), float(e[2]) if len(e) == 3 else 1.0) for e in self.edges]

    def run(self) -> Outcome:
        edges = self.graph()
        result = run_qaoa(
            edges,
            self.num_nodes,
            reps=self.reps,
            primitive=self.primitive,
            shots=self.shots,
            seed=self.seed,
            maxiter=self.maxiter,
            noise_model=self.noise_model(),
        )
        ansatz = qaoa_circuit(edges, self.num_nodes, self.reps)
        measured = ansatz.assign_parameters(result.parameters)
        measured.measure_all()
        histogram = self.histogram(
            self.counts(measured),
            set(result.optimal_bitstrings),
            f"QAOA p={result.reps}: expected cut {result.expected_cut:.3f} of "
            f"{result.optimum_cut:g} (red: optimal cuts, P = {result.optimal_probability:.3f})",
        )
        return self.outcome(result, ansatz, {"histogram.png": histogram})
