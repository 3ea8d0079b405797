"""The ``fedlab-quantum`` experiments, one module per family, and their registry.

``sandbox_quantum/conf/experiment/<name>.yaml`` names its class with ``_target_`` (the module
that defines it, e.g. ``sandbox_quantum.experiments.search.Grover``); :data:`EXPERIMENTS`
maps each config option to that class, and :func:`experiment_name` names a built experiment
in its record.

    base          QuantumExperiment, SimulatedExperiment, SampledExperiment, Outcome, Plot
    search        Grover
    optimization  QAOAMaxCut
    vqe           VQEH2, VQEIsing
    classifiers   QSVCIris, QNNIris
    resources     Resources (the routing study)
"""

from __future__ import annotations

from .base import Outcome, QuantumExperiment
from .classifiers import QNNIris, QSVCIris
from .optimization import QAOAMaxCut
from .resources import Resources
from .search import Grover
from .vqe import VQEH2, VQEIsing

EXPERIMENTS: dict[str, type[QuantumExperiment]] = {
    "grover": Grover,
    "qaoa_maxcut": QAOAMaxCut,
    "vqe_h2": VQEH2,
    "vqe_ising": VQEIsing,
    "qsvc_iris": QSVCIris,
    "qnn_iris": QNNIris,
    "resources": Resources,
}
"""Config option (``experiment=<name>``) -> the experiment class its ``_target_`` names."""


def experiment_name(experiment: QuantumExperiment) -> str:
    """The option ``experiment``'s class is registered under (its class name if none)."""
    cls = type(experiment)
    return next((name for name, known in EXPERIMENTS.items() if known is cls), cls.__name__)


__all__ = [
    "EXPERIMENTS",
    "VQEH2",
    "Grover",
    "Outcome",
    "QAOAMaxCut",
    "QNNIris",
    "QSVCIris",
    "QuantumExperiment",
    "Resources",
    "VQEIsing",
    "experiment_name",
]
