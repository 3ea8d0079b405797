"""Quantum classifiers on two iris species, each next to a classical model on the same split."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure
from qiskit import QuantumCircuit

from fedlab.config.schema import require, require_choice

from ..qml import ClassifierResult, Dataset, load_iris_binary, train_qnn, train_qsvc
from ..qnn import classifier_circuit, feature_map
from .base import PRIMITIVES, Outcome, Plot, QuantumExperiment, require_positive


@dataclass(frozen=True)
class ClassifierComparison:
    """A quantum classifier next to a classical one trained on the same split."""

    quantum: ClassifierResult
    classical: ClassifierResult

    @property
    def gap(self) -> float:
        """Quantum minus classical test accuracy."""
        return self.quantum.test_accuracy - self.classical.test_accuracy

    def accuracy_bars(self) -> Plot:
        """Train and test accuracy of both models, side by side."""

        def draw(fig: Figure) -> None:
            ax = fig.subplots()
            results = (self.quantum, self.classical)
            for offset, split in ((-0.2, "train"), (0.2, "test")):
                values = [getattr(r, f"{split}_accuracy") for r in results]
                ax.bar([i + offset for i in range(2)], values, width=0.4, label=split)
            ax.set_xticks(range(2), [r.model for r in results])
            ax.set(ylim=(0, 1.05), ylabel="accuracy", title=self.quantum.dataset)
            ax.legend(loc="lower right")

        return draw


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
        require_positive(self.reps, "reps")
        require(
            0 < self.test_size < 1,
            "experiment.test_size",
            f"must be in (0, 1), got {self.test_size}",
        )

    def data(self) -> Dataset:
        """The split every model of this experiment trains and tests on."""
        classes = (self.classes[0], self.classes[1])
        return load_iris_binary(classes, test_size=self.test_size, seed=self.seed)

    def compare(
        self, data: Dataset, quantum: ClassifierResult, classical: Any, name: str
    ) -> Outcome:
        """``quantum`` (trained on ``data``) next to the scikit-learn model ``classical``
        fitted on the same split, costed on :meth:`circuit`."""
        comparison = ClassifierComparison(quantum, _classical(classical, name, data))
        circuit = self.circuit(data.num_features)
        return self.outcome(comparison, circuit, {"accuracy.png": comparison.accuracy_bars()})

    def circuit(self, num_features: int) -> QuantumCircuit:
        """The circuit whose transpiled cost the record reports: the feature map."""
        return feature_map(self.feature_map, num_features, self.reps)


@dataclass
class QSVCIris(_IrisClassifier):
    """QSVC on the exact fidelity kernel against an RBF SVM."""

    c: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self.c, "c", strict=True)

    def run(self) -> Outcome:
        from sklearn.svm import SVC

        data = self.data()
        quantum = train_qsvc(data, feature_map_name=self.feature_map, reps=self.reps, c=self.c)
        return self.compare(data, quantum, SVC(C=self.c), "svc[rbf]")


@dataclass
class QNNIris(_IrisClassifier):
    """HybridQNN trained with Adam against a logistic regression."""

    engine: str = "torch"
    epochs: int = 60
    lr: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self.engine, "experiment.engine", ("torch", *PRIMITIVES))
        require_positive(self.epochs, "epochs")
        require_positive(self.lr, "lr", strict=True)

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
        return self.compare(data, quantum, LogisticRegression(), "logistic_regression")

    def circuit(self, num_features: int) -> QuantumCircuit:
        return classifier_circuit(
            num_features, reps=self.reps, feature_map_name=self.feature_map
        ).circuit
