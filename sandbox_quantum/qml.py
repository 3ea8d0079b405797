"""Quantum machine learning on small real and synthetic datasets.

Three model families on the same data: a quantum-kernel SVM (``QSVC`` with the exact
``FidelityStatevectorKernel``), a variational classifier (``VQC``, sampler-based, COBYLA) and a
hybrid torch model (``HybridQNN``: EstimatorQNN or its exact torch twin, plus a linear head,
trained with Adam). Datasets come scaled to [0, pi/2] because the feature maps encode x as the
phase 2x: a wider range would wrap around and map distant points to the same state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from qiskit.circuit.library import real_amplitudes
from qiskit_machine_learning.algorithms import QSVC, VQC
from qiskit_machine_learning.datasets import ad_hoc_data
from qiskit_machine_learning.kernels import FidelityStatevectorKernel
from qiskit_machine_learning.optimizers import COBYLA
from qiskit_machine_learning.utils import algorithm_globals
from sklearn.datasets import load_digits, load_iris
from sklearn.decomposition import PCA
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import nn

from .qnn import Engine, FeatureMapName, feature_map
from .torch_model import HybridQNN, torch_threads

ANGLE_RANGE = (0.0, math.pi / 2)


@dataclass(frozen=True)
class Dataset:
    """Train/test split with integer labels; features already in feature-map units."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]


def scale_to_angles(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-max scale to [0, pi/2] with training statistics, clipped (test data may overshoot)."""
    scaler = MinMaxScaler(feature_range=ANGLE_RANGE).fit(x_train)
    train, test = (np.clip(scaler.transform(x), *ANGLE_RANGE) for x in (x_train, x_test))
    return train, test


def _split_and_scale(
    name: str, x: np.ndarray, y: np.ndarray, test_size: float, seed: int
) -> Dataset:
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    x_train, x_test = scale_to_angles(x_train, x_test)
    return Dataset(name, x_train, y_train, x_test, y_test)


def _binary(x: np.ndarray, y: np.ndarray, classes: tuple[int, int]) -> tuple[np.ndarray, ...]:
    keep = np.isin(y, classes)
    return x[keep], (y[keep] == classes[1]).astype(np.int64)


def load_iris_binary(
    classes: tuple[int, int] = (0, 1), *, test_size: float = 0.3, seed: int = 0
) -> Dataset:
    """Two iris species (default setosa vs versicolor), 4 features; labels 0/1."""
    x, y = _binary(*load_iris(return_X_y=True), classes)
    return _split_and_scale(f"iris{classes}", x, y, test_size, seed)


def load_digits_pca(
    digits: tuple[int, int] = (0, 1),
    *,
    num_features: int = 4,
    test_size: float = 0.3,
    seed: int = 0,
) -> Dataset:
    """Two sklearn digits reduced from 64 pixels to ``num_features`` principal components.

    Standardizing and PCA are fit on the training split only, so no test information leaks.
    """
    x, y = _binary(*load_digits(return_X_y=True), digits)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    standardizer = StandardScaler().fit(x_train)
    reducer = PCA(num_features, random_state=seed).fit(standardizer.transform(x_train))
    x_train = reducer.transform(standardizer.transform(x_train))
    x_test = reducer.transform(standardizer.transform(x_test))
    x_train, x_test = scale_to_angles(x_train, x_test)
    return Dataset(f"digits{digits}-pca{num_features}", x_train, y_train, x_test, y_test)


def load_ad_hoc(
    *,
    num_qubits: int = 2,
    train_per_class: int = 20,
    test_per_class: int = 10,
    gap: float = 0.3,
    seed: int = 0,
) -> Dataset:
    """Havlicek et al.'s ad hoc data, separable by construction with ``zz_feature_map``.

    Its features are NOT rescaled: the labels are defined through the ZZ map applied to the raw
    values in [0, 2pi), so they already are feature-map angles. Use feature map "zz" with 2 reps.
    The generator draws from ``algorithm_globals``, which is reseeded here (a global side effect).
    """
    algorithm_globals.random_seed = seed
    x_train, y_train, x_test, y_test = ad_hoc_data(
        train_per_class, test_per_class, num_qubits, gap, one_hot=False
    )
    return Dataset(
        f"ad_hoc{num_qubits}",
        np.asarray(x_train),
        np.asarray(y_train, dtype=np.int64),
        np.asarray(x_test),
        np.asarray(y_test, dtype=np.int64),
    )


@dataclass(frozen=True)
class ClassifierResult:
    """Accuracies of one trained model on one dataset."""

    model: str
    dataset: str
    train_accuracy: float
    test_accuracy: float
    fit_seconds: float


def train_qsvc(
    data: Dataset, *, feature_map_name: FeatureMapName = "z", reps: int = 1, c: float = 1.0
) -> ClassifierResult:
    """SVM on the exact fidelity kernel |<phi(x)|phi(y)>|^2 of the chosen feature map."""
    kernel = FidelityStatevectorKernel(
        feature_map=feature_map(feature_map_name, data.num_features, reps)
    )
    return _fit_and_score(
        QSVC(quantum_kernel=kernel, C=c), data, f"qsvc[{feature_map_name}x{reps}]"
    )


def _fit_and_score(model: Any, data: Dataset, name: str) -> ClassifierResult:
    """Fit a scikit-learn-style classifier and score it on both splits."""
    start = time.perf_counter()
    model.fit(data.x_train, data.y_train)
    seconds = time.perf_counter() - start
    return ClassifierResult(
        model=name,
        dataset=data.name,
        train_accuracy=float(model.score(data.x_train, data.y_train)),
        test_accuracy=float(model.score(data.x_test, data.y_test)),
        fit_seconds=seconds,
    )


def train_vqc(
    data: Dataset,
    *,
    feature_map_name: FeatureMapName = "z",
    reps: int = 1,
    maxiter: int = 60,
    seed: int = 0,
) -> ClassifierResult:
    """Variational classifier: parity of the measured bitstring as the class, COBYLA training.

    VQC's default sampler is exact (no shots), and the start point is drawn from ``seed``, so
    a run is reproducible.
    """
    ansatz = real_amplitudes(data.num_features, reps=reps)
    initial_point = np.random.default_rng(seed).uniform(-np.pi, np.pi, ansatz.num_parameters)
    model = VQC(
        feature_map=feature_map(feature_map_name, data.num_features),
        ansatz=ansatz,
        optimizer=COBYLA(maxiter=maxiter),
        initial_point=initial_point,
    )
    return _fit_and_score(model, data, f"vqc[{feature_map_name},r{reps}]")


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples whose arg-max logit is the label."""
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).double().mean())


def fit_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    threads: int = 1,
) -> list[float]:
    """Full-batch Adam on cross-entropy with ``threads`` torch threads; returns each step's loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    with torch_threads(threads):
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


def train_qnn(
    data: Dataset,
    *,
    reps: int = 1,
    feature_map_name: FeatureMapName = "z",
    engine: Engine = "torch",
    epochs: int = 60,
    lr: float = 0.1,
    seed: int = 0,
) -> ClassifierResult:
    """Train ``HybridQNN`` (one qubit per feature, angle inputs) on ``data``."""
    torch.manual_seed(seed)
    num_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    model = HybridQNN(
        (data.num_features,),
        num_classes,
        num_qubits=data.num_features,
        reps=reps,
        feature_map_name=feature_map_name,
        engine=engine,
        input_encoding="angles",
    )
    x_train = torch.tensor(data.x_train, dtype=torch.float32)
    y_train = torch.tensor(data.y_train)
    start = time.perf_counter()
    fit_classifier(model, x_train, y_train, epochs=epochs, lr=lr)
    seconds = time.perf_counter() - start
    return ClassifierResult(
        model=f"hybrid_qnn[{engine},{feature_map_name},r{reps}]",
        dataset=data.name,
        train_accuracy=accuracy(model, x_train, y_train),
        test_accuracy=accuracy(
            model, torch.tensor(data.x_test, dtype=torch.float32), torch.tensor(data.y_test)
        ),
        fit_seconds=seconds,
    )
