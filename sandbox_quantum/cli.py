"""``fedlab-quantum``: sandbox experiments run from Hydra configs and recorded like fedlab runs.

``sandbox_quantum/conf/experiment/<name>.yaml`` names one of the experiment dataclasses below with
``_target_`` and sets its parameters; the dataclass checks them (so a bad value is refused
before anything is written) and its :meth:`~QuantumExperiment.run` calls the public
``sandbox_quantum`` API. :func:`run_quantum` wraps the run in CodeCarbon (``fedlab.trackers.carbon``)
and writes the record into Hydra's run directory:

    config.yaml   the resolved configuration
    results.json  schema ``fedlab.quantum/1``: status, timing, the typed result with its exact
                  answer and gap, transpiled resources per coupling map, energy and emissions
    <figure>.png  a histogram, spectrum or bar chart, depending on the experiment
    run.log, emissions.csv, emissions_rounds_*.csv, codecarbon.log

Exit codes follow ``fedlab-run``: 2 and one line for invalid input, 1 for a run that failed
(its record says why), 130 for Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from matplotlib.figure import Figure
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from qiskit import QuantumCircuit
from qiskit.circuit.library import real_amplitudes
from qiskit.quantum_info import SparsePauliOp
from qiskit_aer.noise import NoiseModel

from fedlab.trackers.carbon import HostTracker, carbon_intensity
from fedlab.cli import fail, release_stderr, run_hydra_app
from fedlab.config.schema import ConfigError, require, require_choice
from fedlab.config.experiment import build_spec
from fedlab.record.run_dir import RESULTS, existing_status, now, save_figure, write_json, write_text
from fedlab.run import RunFailed, error_line

from .grover import grover_circuit, phase_oracle_for, run_grover
from .primitives import DEFAULT_SHOTS, sample_counts
from .qaoa import qaoa_circuit, run_qaoa
from .qml import ClassifierResult, Dataset, load_iris_binary, train_qnn, train_qsvc
from .qnn import classifier_circuit, feature_map
from .resources import ResourceReport, depolarizing_noise_model, resource_report
from .vqe import h2_hamiltonian, ising_hamiltonian, run_vqe

PROG = "fedlab-quantum"
SCHEMA = "fedlab.quantum/1"
COUPLINGS = ("line", "heavy_hex", "all_to_all")
PRIMITIVES = ("reference", "aer")
# SciPy methods that need nothing but the objective (gradients by finite differences).
MINIMIZERS = (
    "Nelder-Mead", "Powell", "CG", "BFGS", "L-BFGS-B", "TNC", "COBYLA", "COBYQA", "SLSQP",
    "trust-constr",
)  # fmt: skip

log = logging.getLogger("fedlab.quantum")


# -- configuration ------------------------------------------------------------------------


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
class CarbonSettings:
    """The ``carbon`` section: CodeCarbon's country and power model for the host."""

    enabled: bool = True
    country: str = "FRA"
    force_cpu_power: float | None = None
    force_ram_power: float | None = None
    pue: float = 1.0

    def __post_init__(self) -> None:
        try:
            carbon_intensity(self.country)  # CodeCarbon would silently use the world average
        except ValueError as err:
            raise ConfigError("carbon.country", str(err)) from None
        for key in ("force_cpu_power", "force_ram_power"):
            value = getattr(self, key)
            require(value is None or value > 0, f"carbon.{key}", "must be > 0 watts or null")
        require(self.pue >= 1, "carbon.pue", f"must be >= 1, got {self.pue}")


@dataclass
class QuantumConfig:
    """The whole config; ``experiment`` is checked by the dataclass its ``_target_`` names."""

    experiment: Any = MISSING
    carbon: CarbonSettings = field(default_factory=CarbonSettings)


def register_configs() -> None:
    """Register the schema ``sandbox_quantum/conf/config.yaml`` extends (``quantum_schema``)."""
    ConfigStore.instance().store(name="quantum_schema", node=QuantumConfig)


# -- experiments ---------------------------------------------------------------------------


Plot = Callable[[Figure], None]


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

    def outcome(self, result: Any, circuit: QuantumCircuit, plots: Mapping[str, Plot]) -> Outcome:
        """Bundle a result with ``circuit``'s transpiled cost on every configured coupling."""
        reports = tuple(resource_report(circuit, kind, seed=self.seed) for kind in self.couplings)
        return Outcome(result, circuit, reports, plots)


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
        require(self.shots >= 1, "experiment.shots", f"must be >= 1, got {self.shots}")

    def counts(self, circuit: QuantumCircuit) -> dict[str, int]:
        """Counts of ``circuit`` with this experiment's primitive, shots, seed and noise."""
        return sample_counts(
            circuit,
            primitive=self.primitive,
            shots=self.shots,
            seed=self.seed,
            noise_model=self.noise_model(),
        )


def _bar_chart(
    fig: Figure, counts: Mapping[str, int], highlight: set[str], title: str, limit: int = 32
) -> None:
    """Measured probabilities of the ``limit`` most frequent bitstrings; ``highlight`` in red."""
    total = sum(counts.values())
    top = sorted(counts, key=lambda b: (-counts[b], b))[:limit]
    ax = fig.subplots()
    colors = ["tab:red" if b in highlight else "tab:blue" for b in top]
    ax.bar(range(len(top)), [counts[b] / total for b in top], color=colors)
    ax.set_xticks(range(len(top)), top, rotation=90, fontsize=7, family="monospace")
    ax.set(ylabel="probability", title=title)
    ax.grid(axis="y", alpha=0.3)


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
        counts = self.counts(circuit)

        def histogram(fig: Figure) -> None:
            _bar_chart(
                fig,
                counts,
                set(result.marked),
                f"Grover, {result.num_qubits} qubits, {result.iterations} iterations: success "
                f"{result.success_probability:.4f} (theory {result.theoretical_probability:.4f})",
            )
            fig.axes[0].axhline(
                result.theoretical_probability / len(result.marked),
                color="k",
                ls="--",
                lw=1,
                label="theory per marked state",
            )
            fig.axes[0].legend()

        return self.outcome(result, circuit, {"histogram.png": histogram})


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
        require(self.reps >= 1, "experiment.reps", f"must be >= 1, got {self.reps}")
        require(self.maxiter >= 1, "experiment.maxiter", f"must be >= 1, got {self.maxiter}")

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
        counts = self.counts(measured)

        def histogram(fig: Figure) -> None:
            _bar_chart(
                fig,
                counts,
                set(result.optimal_bitstrings),
                f"QAOA p={result.reps}: expected cut {result.expected_cut:.3f} of "
                f"{result.optimum_cut:g} (red: optimal cuts, P = {result.optimal_probability:.3f})",
            )

        return self.outcome(result, ansatz, {"histogram.png": histogram})


@dataclass
class _VQE(SimulatedExperiment):
    """VQE with a ``real_amplitudes`` ansatz against exact diagonalization."""

    reps: int = 1
    method: str = "COBYLA"
    maxiter: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.reps >= 1, "experiment.reps", f"must be >= 1, got {self.reps}")
        require_choice(self.method, "experiment.method", MINIMIZERS)
        require(self.maxiter >= 1, "experiment.maxiter", f"must be >= 1, got {self.maxiter}")

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

        def spectrum(fig: Figure) -> None:
            ax = fig.subplots()
            ax.hlines(levels, 0, 1, color="tab:gray", lw=1, label="exact eigenvalues")
            ax.hlines(levels[0], 0, 1, color="k", lw=2, label=f"ground {levels[0]:.6f}")
            ax.hlines(
                result.energy, 0.25, 0.75, color="tab:red", ls="--", lw=2,
                label=f"VQE {result.energy:.6f} (error {result.error:.2e})",
            )  # fmt: skip
            ax.set(
                xticks=[],
                ylabel="energy",
                title=f"VQE, real_amplitudes reps={self.reps}, {self.method}",
            )
            ax.legend(fontsize=8, loc="upper right")

        return self.outcome(result, ansatz, {"spectrum.png": spectrum})


@dataclass
class VQEH2(_VQE):
    """H2 at 0.735 A, 2 qubits; exact electronic ground energy -1.857275 Ha."""

    def hamiltonian(self) -> SparsePauliOp:
        return h2_hamiltonian()


@dataclass
class VQEIsing(_VQE):
    """Transverse-field Ising chain -J sum ZZ - h sum X of ``num_spins`` spins."""

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


@dataclass(frozen=True)
class ClassifierComparison:
    """A quantum classifier next to a classical one trained on the same split."""

    quantum: ClassifierResult
    classical: ClassifierResult

    @property
    def gap(self) -> float:
        """Quantum minus classical test accuracy."""
        return self.quantum.test_accuracy - self.classical.test_accuracy


def _classical(model: Any, name: str, data: Dataset) -> ClassifierResult:
    """Fit a scikit-learn classifier on ``data`` and score it like the quantum models."""
    start = time.perf_counter()
    model.fit(data.x_train, data.y_train)
    return ClassifierResult(
        model=name,
        dataset=data.name,
        train_accuracy=float(model.score(data.x_train, data.y_train)),
        test_accuracy=float(model.score(data.x_test, data.y_test)),
        fit_seconds=time.perf_counter() - start,
    )


def _accuracy_bars(comparison: ClassifierComparison) -> Plot:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        results = (comparison.quantum, comparison.classical)
        for offset, split in ((-0.2, "train"), (0.2, "test")):
            values = [getattr(r, f"{split}_accuracy") for r in results]
            ax.bar([i + offset for i in range(2)], values, width=0.4, label=split)
        ax.set_xticks(range(2), [r.model for r in results])
        ax.set(ylim=(0, 1.05), ylabel="accuracy", title=comparison.quantum.dataset)
        ax.legend(loc="lower right")

    return draw


@dataclass
class _IrisClassifier(QuantumExperiment):
    """Two iris species, features scaled to [0, pi/2]."""

    classes: list[int] = field(default_factory=lambda: [0, 1])
    feature_map: str = "z"
    reps: int = 1
    test_size: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            len(self.classes) == 2
            and len(set(self.classes)) == 2
            and set(self.classes) <= {0, 1, 2},
            "experiment.classes",
            f"two distinct iris classes from 0, 1, 2; got {list(self.classes)}",
        )
        require_choice(self.feature_map, "experiment.feature_map", ("z", "zz"))
        require(self.reps >= 1, "experiment.reps", f"must be >= 1, got {self.reps}")
        require(
            0 < self.test_size < 1,
            "experiment.test_size",
            f"must be in (0, 1), got {self.test_size}",
        )

    def data(self) -> Dataset:
        """The split every model of this experiment trains and tests on."""
        classes = (self.classes[0], self.classes[1])
        return load_iris_binary(classes, test_size=self.test_size, seed=self.seed)


@dataclass
class QSVCIris(_IrisClassifier):
    """QSVC on the exact fidelity kernel against an RBF SVM."""

    c: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.c > 0, "experiment.c", f"must be > 0, got {self.c}")

    def run(self) -> Outcome:
        from sklearn.svm import SVC

        data = self.data()
        comparison = ClassifierComparison(
            train_qsvc(data, feature_map_name=self.feature_map, reps=self.reps, c=self.c),
            _classical(SVC(C=self.c), "svc[rbf]", data),
        )
        circuit = feature_map(self.feature_map, data.num_features, self.reps)
        return self.outcome(comparison, circuit, {"accuracy.png": _accuracy_bars(comparison)})


@dataclass
class QNNIris(_IrisClassifier):
    """HybridQNN trained with Adam against a logistic regression."""

    engine: str = "torch"
    epochs: int = 60
    lr: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self.engine, "experiment.engine", ("torch", *PRIMITIVES))
        require(self.epochs >= 1, "experiment.epochs", f"must be >= 1, got {self.epochs}")
        require(self.lr > 0, "experiment.lr", f"must be > 0, got {self.lr}")

    def run(self) -> Outcome:
        from sklearn.linear_model import LogisticRegression

        data = self.data()
        quantum = train_qnn(
            data,
            reps=self.reps,
            feature_map_name=self.feature_map,
            engine=self.engine,
            epochs=self.epochs,
            lr=self.lr,
            seed=self.seed,
        )
        comparison = ClassifierComparison(
            quantum, _classical(LogisticRegression(), "logistic_regression", data)
        )
        circuit = classifier_circuit(
            data.num_features,
            reps=self.reps,
            feature_map_name=self.feature_map,
        ).circuit
        return self.outcome(comparison, circuit, {"accuracy.png": _accuracy_bars(comparison)})


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
        require(self.reps >= 1, "experiment.reps", f"must be >= 1, got {self.reps}")
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


# -- the record ----------------------------------------------------------------------------


def as_record(result: Any) -> dict[str, Any]:
    """A result dataclass as JSON-able data, its derived properties (gap, error, ...) included."""
    data = dataclasses.asdict(result)
    for name in dir(type(result)):
        if isinstance(getattr(type(result), name), property):
            data[name] = getattr(result, name)
    return data


def resources_section(circuit: QuantumCircuit, reports: tuple[ResourceReport, ...]) -> dict:
    """``results.json["resources"]``: the logical circuit and its cost per coupling map."""
    return {
        "circuit": circuit.name,
        "qubits": circuit.num_qubits,
        "couplings": {
            r.coupling: {
                "qubits": r.active_qubits,
                "depth": r.depth,
                "two_qubit_gates": r.two_qubit_gates,
                "swaps_inserted": r.swaps_inserted,
            }
            for r in reports
        },
    }


def carbon_section(tracker: HostTracker | None) -> dict[str, Any]:
    """``results.json["carbon"]``: stops the tracker and reads the whole run's energy."""
    if tracker is None:
        return {"enabled": False, "energy_kwh": None, "emissions_kg": None,
                "country": None, "intensity_g_per_kwh": None}  # fmt: skip
    total = tracker.stop().total
    return {
        "enabled": True,
        "energy_kwh": total.energy_kwh,
        "emissions_kg": total.emissions_kg,
        "country": tracker.country_iso_code,
        "intensity_g_per_kwh": tracker.intensity_g_per_kwh,
        "power_model": tracker.power_model.to_dict(),
    }


def save_plots(run_dir: Path, plots: Mapping[str, Plot]) -> None:
    """Draw each figure and write it atomically as a PNG into ``run_dir``."""
    for name, draw in plots.items():
        fig = Figure(figsize=(8, 4.2))
        draw(fig)
        save_figure(fig, run_dir / name)


def load_experiment(raw: DictConfig) -> tuple[QuantumExperiment, CarbonSettings]:
    """Check the composed config; raises :class:`ConfigError` naming the first bad key."""
    try:
        cfg = OmegaConf.to_object(raw)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(key, str(err).splitlines()[0]) from None
    assert isinstance(cfg, QuantumConfig)
    return build_spec(cfg.experiment, "experiment", QuantumExperiment), cfg.carbon


def run_quantum(raw: DictConfig, run_dir: Path, name: str) -> dict[str, Any]:
    """Run the experiment ``raw`` describes and write its record into ``run_dir``.

    Raises :class:`ConfigError` before writing anything if the config or the directory is
    unusable, :class:`RunFailed` (record status ``failed``) if the experiment raises, and lets
    ``KeyboardInterrupt`` through after marking the record ``interrupted``.
    """
    experiment, carbon = load_experiment(raw)
    if (run_dir / RESULTS).exists():
        status = existing_status(run_dir) or "unreadable"
        raise ConfigError(
            "hydra.run.dir",
            f"{run_dir} already holds a run record (status: {status}); choose a new directory",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(raw, resolve=True))
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "status": "running",
        "error": None,
        "started_at": now(),
        "finished_at": None,
        "duration_s": None,
        "experiment": name,
        "result": None,
        "resources": None,
        "carbon": None,
    }
    write_json(run_dir / RESULTS, results)
    log.info("%s: %s -> %s", PROG, name, run_dir)
    started = time.perf_counter()

    def finish(status: str, error: str | None = None, **fields: Any) -> None:
        results.update(
            status=status,
            error=error,
            finished_at=now(),
            duration_s=round(time.perf_counter() - started, 3),
            **fields,
        )
        write_json(run_dir / RESULTS, results)

    tracker = None
    try:
        if carbon.enabled:
            tracker = HostTracker(
                run_dir,
                carbon.country,
                force_cpu_power=carbon.force_cpu_power,
                force_ram_power=carbon.force_ram_power,
                pue=carbon.pue,
                project_name=PROG,
            )
        with tracker.round(name) if tracker else nullcontext():
            outcome = experiment.run()
        carbon_record = carbon_section(tracker)
        save_plots(run_dir, outcome.plots)
    except KeyboardInterrupt:
        finish("interrupted", carbon=carbon_section(tracker))
        raise
    except Exception as err:
        finish("failed", error=error_line(err), carbon=carbon_section(tracker))
        raise RunFailed(error_line(err)) from err
    finish(
        "completed",
        result=as_record(outcome.result),
        resources=resources_section(outcome.circuit, outcome.reports),
        carbon=carbon_record,
    )
    couplings = results["resources"]["couplings"]
    summary = [
        *_headline(results["result"]),
        "two-qubit gates " + ", ".join(f"{k} {v['two_qubit_gates']}" for k, v in couplings.items()),
        "carbon off" if tracker is None else f"{carbon_record['energy_kwh']:.3g} kWh",
    ]
    log.info(
        "%s: completed in %.1f s | %s | record: %s",
        PROG,
        results["duration_s"],
        " | ".join(summary),
        run_dir,
    )
    return results


def _headline(data: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """The float entries of a result record (nested ones as ``outer.inner``), for the log."""
    for key, value in data.items():
        if isinstance(value, float):
            yield f"{prefix}{key} {value:.6g}"
        elif isinstance(value, Mapping):
            yield from _headline(value, f"{prefix}{key}.")


# -- the console script --------------------------------------------------------------------


@hydra.main(version_base="1.3", config_path="pkg://sandbox_quantum.conf", config_name="config")
def _run(cfg: DictConfig) -> None:
    release_stderr()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        run_quantum(cfg, run_dir, hydra_cfg.runtime.choices.get("experiment", "experiment"))
    except ConfigError as err:
        fail(str(err), 2, PROG)
    except RunFailed as err:
        fail(f"run failed: {err} (record: {run_dir})", 1, PROG)
    except KeyboardInterrupt:
        fail(f"interrupted; the record in {run_dir} says how far it got", 130, PROG)


def main() -> None:
    """Console-script entry point (``fedlab-quantum``)."""
    register_configs()
    run_hydra_app(_run, PROG)


if __name__ == "__main__":
    # ``python -m sandbox_quantum.cli`` runs this file as __main__, a second copy of the module:
    # call the imported one so the classes ``_target_`` names are the ones build_spec expects.
    from sandbox_quantum.cli import main as package_main

    package_main()
