"""Models accept every dataset shape, suit Opacus, and train as their maths says."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from fedlab.data.datasets import ArraySplit
from fedlab.fl.model import CNN, MLP, LogisticRegression, build_model
from fedlab.fl.training import batches, evaluate, seed_for, train, warm_up


@pytest.mark.parametrize("cls", [LogisticRegression, MLP, CNN])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_models_fit_shapes_and_opacus(cls, shape) -> None:
    model = cls(shape, 10)
    assert model(torch.zeros(4, *shape)).shape == (4, 10)
    assert ModuleValidator.validate(model, strict=False) == []


def test_build_model_from_config_dict() -> None:
    model = build_model({"_target_": "fedlab.fl.model.MLP", "hidden": [32, 16]}, (60,), 10)
    assert [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [
        32,
        16,
        10,
    ]


def test_cnn_rejects_flat_input() -> None:
    with pytest.raises(ValueError, match="image input"):
        CNN((64,), 10)


def _toy(n: int = 40, d: int = 5, seed: int = 0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return ArraySplit(x, (x[:, 0] > 0).astype(np.int64))


def _numpy_step(w, b, w0, b0, x, y, lr, mu):
    """One full-batch SGD step of softmax regression with the FedProx term, by hand."""
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    grad_w = p.T @ x / len(y) + mu * (w - w0)
    grad_b = p.mean(0) + mu * (b - b0)
    return w - lr * grad_w, b - lr * grad_b


def test_fedprox_term_matches_a_hand_computation() -> None:
    data = _toy()
    model = LogisticRegression((5,), 2)
    w0 = model.linear.weight.detach().numpy().astype(np.float64).copy()
    b0 = model.linear.bias.detach().numpy().astype(np.float64).copy()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    result = train(
        model,
        data,
        epochs=3,
        batch_size=len(data),
        optimizer=opt,
        generator=torch.Generator().manual_seed(0),
        proximal_mu=2.0,
    )
    w, b = w0, b0
    for _ in range(3):
        w, b = _numpy_step(w, b, w0, b0, data.x.astype(np.float64), data.y, 0.5, 2.0)
    assert result.steps == 3 and result.examples == 3 * len(data)
    assert np.allclose(model.linear.weight.detach().numpy(), w, atol=1e-5)
    assert np.allclose(model.linear.bias.detach().numpy(), b, atol=1e-5)


def test_partial_epochs_take_proportional_steps() -> None:
    data = _toy(n=100)
    model = MLP((5,), 2, hidden=[8])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = train(
        model,
        data,
        epochs=0.5,
        batch_size=10,
        optimizer=opt,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.steps == 5


def test_batches_cover_each_epoch_once() -> None:
    seen = torch.cat(list(batches(23, 5, 5, torch.Generator().manual_seed(1))))
    assert sorted(seen.tolist()) == list(range(23))


def test_evaluate_matches_numpy() -> None:
    data = _toy(n=64)
    model = MLP((5,), 2, hidden=[4])
    loss, accuracy = evaluate(model, data, batch_size=10)
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x)).numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert loss == pytest.approx(-logp[np.arange(64), data.y].mean(), rel=1e-5)
    assert accuracy == pytest.approx((logits.argmax(1) == data.y).mean())


def test_seed_for_is_stable_and_distinct() -> None:
    assert seed_for(0, 1, 2) == seed_for(0, 1, 2)
    assert len({seed_for(0, r, c) for r in range(20) for c in range(20)}) == 400


def test_warm_up_runs_once_per_key_and_times_its_work() -> None:
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        deadline = time.process_time() + 0.02
        while time.process_time() < deadline:  # burn 20 ms of CPU
            pass

    key = ("test", time.time_ns())  # a key no other test warmed up
    assert warm_up(key, work) >= 0.02
    assert warm_up(key, work) == 0.0  # this process is warm: nothing run, nothing charged
    assert warm_up((*key, "other"), work) >= 0.02
    assert len(calls) == 2


def test_state_dict_of_reads_every_array_as_flower_does(monkeypatch) -> None:
    """fedlab's reader of a message's arrays gives Flower's tensors, reading the arrays
    ``np.save`` wrote in C order from their bytes and handing any other to ``np.load``."""
    from flwr.app import Array, ArrayRecord

    from fedlab.fl.model import ndarray_of, state_dict_of

    rng = np.random.default_rng(0)
    fast = {
        "w": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(7),
        "scalar": np.array(3.5), "mask": np.array([True, False]),
        "empty": np.zeros((0, 4), np.float16),
    }  # fmt: skip
    # Fortran order: np.save writes its header with fortran_order True
    slow = {"fortran": np.asfortranarray(rng.standard_normal((3, 5)))}
    record = ArrayRecord({k: Array(v) for k, v in {**fast, **slow}.items()})
    loaded: list[tuple[int, ...]] = []
    numpy = Array.numpy
    monkeypatch.setattr(Array, "numpy", lambda self: loaded.append(self.shape) or numpy(self))
    ours = state_dict_of(record)
    assert sorted(loaded) == sorted(tuple(v.shape) for v in slow.values())  # only those
    monkeypatch.setattr(Array, "numpy", numpy)
    theirs = record.to_torch_state_dict()
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.dtype and ours[key].shape == tensor.shape, key
        assert torch.equal(ours[key], tensor), key
    ours["w"] += 1  # writable, and not a view of the message's bytes
    assert torch.equal(state_dict_of(record)["w"], torch.from_numpy(fast["w"]))
    # a reader that only looks gets the same values as a read-only view, not a copy
    for key, array in record.items():
        view = ndarray_of(array, writable=False)
        assert view.dtype == array.numpy().dtype and np.array_equal(view, array.numpy()), key
        if key in fast:
            assert not view.flags.writeable and view.base is not None, key
