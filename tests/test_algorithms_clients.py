"""The personalized algorithms' client updates on their own (no simulation): what stays on
the client, what is sent, and the loss terms they add, each against a direct calculation."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fedlab.data.datasets import ArraySplit
from fedlab.fl.algorithms.base import ClientUpdate, LocalJob
from fedlab.fl.algorithms.ditto import DittoClient
from fedlab.fl.algorithms.moon import MoonClient
from fedlab.fl.algorithms.personal import FedBNClient, FedPerClient, FedRepClient
from fedlab.fl.model import MLP
from fedlab.fl.training import make_optimizer, train


class RecordingFit:
    """Local SGD as the ClientApp runs it, recording each call's trainable parameters and the
    first extra-loss value."""

    def __init__(self, data: ArraySplit) -> None:
        self.data, self.calls, self.first_extra = data, [], None

    def __call__(self, model, data=None, *, epochs=None, extra_loss=None, params=None, stream=2):
        self.calls.append({n for n, p in model.named_parameters() if p.requires_grad})

        def extra(x, logits):
            value = extra_loss(x, logits)
            if self.first_extra is None:
                self.first_extra = float(value.detach())
            return value

        opt = make_optimizer(iter(params) if params is not None else model.parameters(),
                             "sgd", 0.1, 0.0, 0.0)
        return train(model, data or self.data, epochs=epochs or 1.0, batch_size=16,
                     optimizer=opt, generator=torch.Generator().manual_seed(stream),
                     extra_loss=extra if extra_loss else None)


def job(model, state=None, seed=0) -> LocalJob:
    rng = np.random.default_rng(seed)
    data = ArraySplit(rng.normal(size=(48, 6)).astype(np.float32), rng.integers(0, 3, 48))
    return LocalJob(model, data, {"lr": 0.1, "momentum": 0.0}, {}, state or {},
                    RecordingFit(data), 1, 0)


def mlp(norm: str = "none") -> torch.nn.Module:
    torch.manual_seed(0)
    return MLP((6,), 3, hidden=[8], norm=norm)


def test_fedper_keeps_the_head_and_evaluates_with_it() -> None:
    model = mlp()
    out = FedPerClient(personal_layers=1).train(job(model))
    head = {"net.3.weight", "net.3.bias"}
    assert set(out.arrays) == set(model.state_dict()) - head
    assert set(out.state) == head
    fresh = mlp()  # next round: a new global model arrives; the head is the client's own
    personal = FedPerClient(1).personalize(job(fresh, out.state))
    assert torch.equal(personal.state_dict()["net.3.weight"], out.state["net.3.weight"])
    assert torch.equal(personal.state_dict()["net.1.weight"], fresh.state_dict()["net.1.weight"])


def test_fedbn_keeps_batchnorm_weights_and_statistics_local() -> None:
    model = mlp("batch")
    out = FedBNClient().train(job(model))
    bn = {k for k in model.state_dict() if k.startswith("net.2.")}  # Linear, BatchNorm, ReLU
    assert bn == {"net.2.weight", "net.2.bias", "net.2.running_mean", "net.2.running_var",
                  "net.2.num_batches_tracked"}
    assert set(out.state) == bn and not bn & set(out.arrays)
    assert float(out.state["net.2.running_mean"].abs().sum()) > 0  # trained statistics


def test_fedrep_trains_the_head_then_the_representation() -> None:
    model = mlp()
    j = job(model)
    FedRepClient(personal_layers=1, head_epochs=2).train(j)
    head = {"net.3.weight", "net.3.bias"}
    assert j.fit.calls == [head, {"net.1.weight", "net.1.bias"}]
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_moon_contrastive_term_starts_at_mu_log_2() -> None:
    """Before any step, the model, the global model and the previous model (the global one,
    on a first round) give the same representation: both similarities are 1, so
    l_con = -log(e^{1/t} / (2 e^{1/t})) = log 2."""
    j = job(mlp())
    out = MoonClient(mu=2.0, temperature=0.5).train(j)
    assert j.fit.first_extra == pytest.approx(2.0 * math.log(2), abs=1e-6)
    assert set(out.state) == set(out.arrays)  # the whole local model, for the next round


def test_ditto_sends_fedavgs_update_and_keeps_a_personal_model() -> None:
    global_model = mlp()
    ditto = job(copy.deepcopy(global_model))
    out = DittoClient(lam=0.1, personal_epochs=1).train(ditto)
    plain = job(copy.deepcopy(global_model))
    reference = ClientUpdate().train(plain)
    assert all(torch.equal(out.arrays[k], reference.arrays[k]) for k in reference.arrays)
    assert any(not torch.equal(out.state[k], out.arrays[k]) for k in out.state)
    # the proximal term holds the personal model near the global one: with lr * lam = 1 each
    # step lands at w - lr * grad, much closer than without the term
    g = global_model.state_dict()

    def drift(lam: float) -> float:
        update = DittoClient(lam=lam, personal_epochs=3).train(job(copy.deepcopy(global_model)))
        return max(float((update.state[k] - g[k]).abs().max()) for k in g)

    assert drift(10.0) < drift(0.0) / 2
    assert DittoClient().personalize(job(copy.deepcopy(global_model), out.state)) is not None
