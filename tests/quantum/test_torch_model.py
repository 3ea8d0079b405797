"""HybridQNN as a fedlab model: construction contract, engine equivalence, central and FedAvg
training on iris setosa vs versicolor."""

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from sandbox_quantum import HybridQNN, accuracy, fit_classifier, torch_threads


@pytest.fixture(scope="module")
def iris_standardized() -> tuple[torch.Tensor, ...]:
    """Setosa vs versicolor, z-scored with training statistics (what fedlab feeds a model)."""
    x, y = load_iris(return_X_y=True)
    keep = y < 2
    x_train, x_test, y_train, y_test = train_test_split(
        x[keep], y[keep], test_size=0.3, random_state=1, stratify=y[keep]
    )
    scaler = StandardScaler().fit(x_train)
    return (
        torch.tensor(scaler.transform(x_train), dtype=torch.float32),
        torch.tensor(y_train),
        torch.tensor(scaler.transform(x_test), dtype=torch.float32),
        torch.tensor(y_test),
    )


def test_hydra_instantiation_and_plain_state_dict(tmp_path) -> None:
    cfg = OmegaConf.create({"_target_": "sandbox_quantum.torch_model.HybridQNN", "reps": 2})
    torch.manual_seed(0)
    model = instantiate(cfg, input_shape=(1, 2, 3), num_classes=3)
    logits = model(torch.randn(5, 1, 2, 3))
    assert logits.shape == (5, 3)
    state = model.state_dict()
    # Linear 6->4 encoder, 4*(2+1) ansatz angles, Linear 4->3 head.
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "encoder.weight": (4, 6),
        "encoder.bias": (4,),
        "quantum.weight": (12,),
        "head.weight": (3, 4),
        "head.bias": (3,),
    }
    assert all(type(v) is torch.Tensor for v in state.values())
    save_file(state, tmp_path / "model.safetensors")
    torch.manual_seed(1)
    restored = HybridQNN((1, 2, 3), 3, reps=2)
    restored.load_state_dict(load_file(tmp_path / "model.safetensors"))
    x = torch.randn(4, 1, 2, 3)
    torch.testing.assert_close(restored(x), model(x))


def test_same_seed_same_model() -> None:
    models = []
    for _ in range(2):
        torch.manual_seed(42)
        models.append(HybridQNN((4,), 2))
    for (k, a), (_, b) in zip(
        models[0].state_dict().items(), models[1].state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


def test_torch_engine_trains_like_estimator_qnn() -> None:
    """Same seed, same data: identical logits, gradients and two Adam steps on both engines."""
    x = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    models = {}
    for engine in ("torch", "reference"):
        torch.manual_seed(7)
        models[engine] = HybridQNN((5,), 3, num_qubits=3, reps=1, engine=engine)
    fast, reference = models["torch"], models["reference"]
    torch.testing.assert_close(fast(x), reference(x), atol=1e-6, rtol=0)
    for model in (fast, reference):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for (name, p_fast), (_, p_ref) in zip(
        fast.named_parameters(), reference.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, atol=1e-6, rtol=0, msg=name)
    losses = [fit_classifier(m, x, y, epochs=2, lr=0.05) for m in (fast, reference)]
    np.testing.assert_allclose(losses[0], losses[1], atol=1e-6)


def test_central_training_reaches_95_percent(iris_standardized) -> None:
    x_train, y_train, x_test, y_test = iris_standardized
    torch.manual_seed(0)
    model = HybridQNN((4,), 2, num_qubits=4, reps=1)
    losses = fit_classifier(model, x_train, y_train, epochs=60, lr=0.1)
    assert losses[-1] < losses[0]
    assert accuracy(model, x_test, y_test) >= 0.95


def test_fedavg_of_three_clients_improves_on_round_zero(iris_standardized) -> None:
    x_train, y_train, x_test, y_test = iris_standardized
    clients = [(x_train[k::3], y_train[k::3]) for k in range(3)]
    torch.manual_seed(0)
    global_model = HybridQNN((4,), 2)

    def test_loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(global_model(x_test), y_test))

    history = [(test_loss(), accuracy(global_model, x_test, y_test))]
    for round_ in range(2):
        states = []
        for k, (x, y) in enumerate(clients):
            torch.manual_seed(100 * round_ + k)  # each client builds its own model, as a Ray actor
            local = HybridQNN((4,), 2)
            local.load_state_dict(global_model.state_dict())
            fit_classifier(local, x, y, epochs=10, lr=0.1)
            states.append(local.state_dict())
        global_model.load_state_dict(
            {key: torch.stack([s[key] for s in states]).mean(dim=0) for key in states[0]}
        )
        history.append((test_loss(), accuracy(global_model, x_test, y_test)))

    (loss_0, acc_0), (loss_2, acc_2) = history[0], history[-1]
    assert loss_2 < loss_0
    assert acc_2 >= acc_0
    assert acc_2 >= 0.9


def test_torch_threads_is_scoped() -> None:
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
