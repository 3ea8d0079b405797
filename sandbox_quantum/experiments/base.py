"""What every ``fedlab-quantum`` experiment shares: its settings, its outcome and its figures.

An experiment is a dataclass named by ``experiment._target_``: ``__post_init__`` checks its
values (raising :class:`~fedlab.config.schema.ConfigError` naming the key, so a bad value is
refused before anything is written) and :meth:`QuantumExperiment.run` calls the public
``sandbox_quantum`` API and returns an :class:`Outcome` for the record.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure
from qiskit import QuantumCircuit
from qiskit_aer.noise import NoiseModel

from fedlab.config.schema import require, require_choice

from ..primitives import DEFAULT_SHOTS, sample_counts
from ..resources import ResourceReport, depolarizing_noise_model, resource_report

COUPLINGS = ("line", "heavy_hex", "all_to_all")
PRIMITIVES = ("reference", "aer")

Plot = Callable[[Figure], None]
"""Draws one figure of the record on an empty ``Figure``."""


def require_positive(value: float, key: str, *, strict: bool = False) -> None:
    """Check ``experiment.<key> >= 1`` (a count) or, with ``strict``, ``> 0`` (a real)."""
    ok, bound = (value > 0, "> 0") if strict else (value >= 1, ">= 1")
    require(ok, f"experiment.{key}", f"must be {bound}, got {value}")


@dataclass(frozen=True)
class Outcome:
    """What an experiment hands to the record: its result, circuit, costs and figures."""

    result: Any
    """A dataclass: the measured numbers, the exact answer and the gap between them."""
    circuit: QuantumCircuit
    """The circuit whose transpiled cost goes into ``results.json["resources"]``."""
    reports: tuple[ResourceReport, ...]
    plots: Mapping[str, Plot] = field(default_factory=dict)
    """PNG file name -> function drawing it on an empty figure."""
    quantities: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Result key -> (what it is, its unit): how the console names a number, so that an
    energy says which one and in what unit ("electronic energy -1.85728 Ha")."""

    def units_record(self) -> dict[str, str]:
        """``results.json["units"]``: the unit of every result key that has one."""
        return {key: unit for key, (_, unit) in self.quantities.items() if unit}

    def result_record(self) -> dict[str, Any]:
        """``results.json["result"]``: the result as JSON-able data, with its derived
        properties (gap, error, ...)."""
        data = dataclasses.asdict(self.result)
        for name in dir(type(self.result)):
            if isinstance(getattr(type(self.result), name), property):
                data[name] = getattr(self.result, name)
        return data

    def resources_record(self) -> dict[str, Any]:
        """``results.json["resources"]``: the logical circuit and its cost per coupling map."""
        return {
            "circuit": self.circuit.name,
            "qubits": self.circuit.num_qubits,
            "couplings": {
                r.coupling: {
                    "qubits": r.active_qubits,
                    "depth": r.depth,
                    "two_qubit_gates": r.two_qubit_gates,
                    "swaps_inserted": r.swaps_inserted,
                }
                for r in self.reports
            },
        }


@dataclass
class NoiseSettings:
    """``experiment.noise``: a depolarizing model, ``p1`` on sx/x and ``p2`` on cx."""

    model: str = "depolarizing"
    p1: float = 1e-3
    p2: float = 1e-2

    def __post_init__(self) -> None:
        require_choice(self.model, "experiment.noise.model", ("depolarizing",))
        for key, value in (("p1", self.p1), ("p2", self.p2)):
            require(0 <= value <= 1, f"experiment.noise.{key}", f"must be in [0, 1], got {value}")

    def build(self) -> NoiseModel:
        """The Aer noise model these settings describe."""
        return depolarizing_noise_model(self.p1, self.p2)


@dataclass
class QuantumExperiment(ABC):
    """Base of every ``experiment`` option: a seed and the coupling maps to cost it on."""

    seed: int = 0
    couplings: list[str] = field(default_factory=lambda: ["all_to_all"])

    def __post_init__(self) -> None:
        require(self.seed >= 0, "experiment.seed", f"must be >= 0, got {self.seed}")
        require(
            set(self.couplings) <= set(COUPLINGS)
            and len(set(self.couplings)) == len(self.couplings),
            "experiment.couplings",
            f"a list of distinct values from {', '.join(COUPLINGS)}; got {list(self.couplings)}",
        )

    @abstractmethod
    def run(self) -> Outcome:
        """Run the experiment and compare it with its exact answer."""

    def outcome(
        self,
        result: Any,
        circuit: QuantumCircuit,
        plots: Mapping[str, Plot],
        quantities: Mapping[str, tuple[str, str]] | None = None,
    ) -> Outcome:
        """Bundle a result with ``circuit``'s transpiled cost on every configured coupling
        (``quantities``: see :attr:`Outcome.quantities`)."""
        reports = tuple(resource_report(circuit, kind, seed=self.seed) for kind in self.couplings)
        return Outcome(result, circuit, reports, plots, dict(quantities or {}))


@dataclass
class SimulatedExperiment(QuantumExperiment):
    """An experiment on a V2 primitive, optionally with Aer noise.

    ``primitive`` is a ``str`` rather than ``PrimitiveName`` because OmegaConf's structured
    configs have no ``Literal``; ``__post_init__`` checks the value instead.
    """

    primitive: str = "reference"
    noise: NoiseSettings | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self.primitive, "experiment.primitive", PRIMITIVES)
        require(
            self.noise is None or self.primitive == "aer",
            "experiment.noise",
            "a noise model needs experiment.primitive=aer",
        )

    def noise_model(self) -> NoiseModel | None:
        """The Aer noise model, or None for a noiseless run."""
        return None if self.noise is None else self.noise.build()


@dataclass
class SampledExperiment(SimulatedExperiment):
    """An experiment that reads its answer off measured bitstrings."""

    shots: int = DEFAULT_SHOTS

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self.shots, "shots")

    def counts(self, circuit: QuantumCircuit) -> dict[str, int]:
        """Counts of ``circuit`` with this experiment's primitive, shots, seed and noise."""
        return sample_counts(
            circuit,
            primitive=self.primitive,
            shots=self.shots,
            seed=self.seed,
            noise_model=self.noise_model(),
        )

    def histogram(self, counts: Mapping[str, int], highlight: set[str], title: str) -> Plot:
        """A bar chart of ``counts``' measured probabilities (the 32 most frequent
        bitstrings), ``highlight`` in red."""

        def draw(fig: Figure) -> None:
            total = sum(counts.values())
            top = sorted(counts, key=lambda b: (-counts[b], b))[:32]
            ax = fig.subplots()
            colors = ["tab:red" if b in highlight else "tab:blue" for b in top]
            ax.bar(range(len(top)), [counts[b] / total for b in top], color=colors)
            ax.set_xticks(range(len(top)), top, rotation=90, fontsize=7, family="monospace")
            ax.set(ylabel="probability", title=title)
            ax.grid(axis="y", alpha=0.3)

        return draw
