"""Ditto (Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021), Algorithm 1.

Each client trains the global model w as in FedAvg (what it sends) and, besides, its personal
model v (kept at home; the global model at first) for ``personal_epochs`` on
F_k(v) + lambda/2 ||v - w||^2, w being the global model it received. It evaluates v. The
server is Flower's FedAvg. lambda = 0.1 (the paper tunes it per dataset over
{0.05, 0.1, 0.2, 0.5, 1, 2}).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedlab.fl.algorithms.base import ClientUpdate, LocalJob, LocalUpdate, detached, with_state
from fedlab.fl.training import TrainResult


class DittoClient(ClientUpdate):
    stateful = True
    privacy_modes = ("none",)
    privacy_reason = (
        "Ditto trains a second, personal model on the same data each round; fedlab's DP "
        "accounting covers the released global update only"
    )

    def __init__(self, lam: float = 0.1, personal_epochs: float = 1.0) -> None:
        if lam < 0 or personal_epochs <= 0:
            raise ValueError(
                f"Ditto needs lam >= 0 and personal_epochs > 0, got {lam}, {personal_epochs}"
            )
        self.lam, self.personal_epochs = lam, personal_epochs

    def train(self, job: LocalJob) -> LocalUpdate:
        w = detached(job.model)
        personal = copy.deepcopy(with_state(job.model, job.state))
        params = dict(personal.named_parameters())

        def proximal(_x: torch.Tensor, _logits: torch.Tensor) -> torch.Tensor:
            return 0.5 * self.lam * sum((params[k] - w[k]).pow(2).sum() for k in params)  # type: ignore[return-value]

        own = job.fit(personal, epochs=self.personal_epochs, extra_loss=proximal, stream=3)
        result = job.fit(job.model)  # the global model's local update, FedAvg's
        state = {k: v.detach().clone() for k, v in personal.state_dict().items()}
        total = TrainResult(result.loss, result.steps + own.steps, result.examples)
        return LocalUpdate(
            job.model.state_dict(), total, metrics={"personal-train-loss": own.loss}, state=state
        )

    def personalize(self, job: LocalJob) -> nn.Module | None:
        return with_state(job.model, job.state) if job.state else None
