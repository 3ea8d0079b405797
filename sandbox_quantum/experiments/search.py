"""Grover search, scored against the exact success probability sin^2((2k+1) theta)."""

from __future__ import annotations

from dataclasses import dataclass, field

from matplotlib.figure import Figure

from fedlab.config.schema import ConfigError, require

from ..grover import grover_circuit, phase_oracle_for, run_grover
from .base import Outcome, SampledExperiment


@dataclass
class Grover(SampledExperiment):
    """Grover search for ``marked`` (bitstrings, qubit 0 rightmost) against sin^2((2k+1)theta)."""

    marked: list[str] = field(default_factory=lambda: ["101"])
    iterations: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            phase_oracle_for(list(self.marked))  # the oracle's own check of the bitstrings
        except ValueError as err:
            raise ConfigError("experiment.marked", str(err)) from None
        require(
            self.iterations is None or self.iterations >= 0,
            "experiment.iterations",
            f"must be >= 0 or null (optimal), got {self.iterations}",
        )

    def run(self) -> Outcome:
        result = run_grover(
            list(self.marked),
            iterations=self.iterations,
            primitive=self.primitive,
            shots=self.shots,
            seed=self.seed,
            noise_model=self.noise_model(),
        )
        circuit = grover_circuit(result.marked, result.iterations)
        # Same circuit, primitive and seed as run_grover: the very counts it scored.
        bars = self.histogram(
            self.counts(circuit),
            set(result.marked),
            f"Grover, {result.num_qubits} qubits, {result.iterations} iterations: success "
            f"{result.success_probability:.4f} (theory {result.theoretical_probability:.4f})",
        )

        def histogram(fig: Figure) -> None:
            bars(fig)
            fig.axes[0].axhline(
                result.theoretical_probability / len(result.marked),
                color="k",
                ls="--",
                lw=1,
                label="theory per marked state",
            )
            fig.axes[0].legend()

        return self.outcome(result, circuit, {"histogram.png": histogram})
