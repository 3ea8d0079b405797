"""Personalized FL that keeps part of the model at home: FedBN, FedPer and FedRep.

* FedBN (Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch
  Normalization", ICLR 2021): the BatchNorm layers (weights and running statistics) stay
  local; everything else is averaged. Needs a model with BatchNorm (``model.norm=batch``).
* FedPer (Arivazhagan et al., "Federated Learning with Personalization Layers", 2019): the
  last ``personal_layers`` layers (the classifier head) stay local; base and head are trained
  together; the base is averaged.
* FedRep (Collins et al., "Exploiting Shared Representations for Personalized Federated
  Learning", ICML 2021): the same split, but each round the client first trains its head for
  ``head_epochs`` with the representation frozen, then the representation for the round's
  local epochs with the head frozen.

Clients send only the shared entries (their upload bytes shrink accordingly); the server
(:class:`fedlab.fl.algorithms.aggregate.RememberingFedAvg`) averages those and keeps the
global model's own copy of the personal layers as it was, so the central accuracy of the
global model is not meaningful for these methods: the personalized accuracy is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import nn

from fedlab.fl.algorithms.base import (
    ClientUpdate,
    LocalJob,
    LocalUpdate,
    frozen_except,
    head_modules,
    keys_under,
    unfreeze,
    with_state,
)

_REASON = (
    "central DP's noise covers a weighted mean of whole models, and the personal layers "
    "trained on local data are never released, so its guarantee would not describe them"
)


class PersonalLayers(ClientUpdate, ABC):
    """Keep :meth:`personal_keys` local: train with them, send the rest, evaluate with them."""

    stateful = True
    privacy_modes = ("none", "local")
    privacy_reason = _REASON

    @abstractmethod
    def personal_keys(self, model: nn.Module) -> list[str]:
        """The state-dict entries that stay on the client."""

    def local_train(self, job: LocalJob, model: nn.Module) -> Any:
        return job.fit(model)

    def train(self, job: LocalJob) -> LocalUpdate:
        model = with_state(job.model, job.state)
        result = self.local_train(job, model)
        keep = set(self.personal_keys(model))
        weights = model.state_dict()
        shared = {k: v for k, v in weights.items() if k not in keep}
        state = {k: v.detach().clone() for k, v in weights.items() if k in keep}
        return LocalUpdate(shared, result, state=state)

    def personalize(self, job: LocalJob) -> nn.Module | None:
        return with_state(job.model, job.state) if job.state else None


class FedBNClient(PersonalLayers):
    privacy_modes = ("none",)
    privacy_reason = "Opacus computes no per-example gradients through BatchNorm"

    @classmethod
    def check(cls, model: nn.Module, cfg: Any) -> tuple[str, str] | None:
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return "model.norm", (
                "FedBN keeps BatchNorm layers local; this model has none (use model.norm=batch)"
            )
        return None

    def personal_keys(self, model: nn.Module) -> list[str]:
        norms = [
            name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        return keys_under(model, norms)


class FedPerClient(PersonalLayers):
    def __init__(self, personal_layers: int = 1) -> None:
        self.personal_layers = personal_layers

    @classmethod
    def check(cls, model: nn.Module, cfg: Any) -> tuple[str, str] | None:
        layers = int(cfg.strategy.client_update.get("personal_layers", 1))
        try:
            head_modules(model, layers)
        except ValueError as err:
            return "strategy.client_update.personal_layers", str(err)
        return None

    def personal_keys(self, model: nn.Module) -> list[str]:
        return keys_under(model, head_modules(model, self.personal_layers))


class FedRepClient(FedPerClient):
    privacy_modes = ("none",)
    privacy_reason = (
        "FedRep trains the head and the representation in two passes over the data; fedlab's "
        "DP-SGD accounting counts one pass per round"
    )

    def __init__(self, personal_layers: int = 1, head_epochs: float = 10.0) -> None:
        super().__init__(personal_layers)
        if head_epochs <= 0:
            raise ValueError(f"head_epochs must be > 0, got {head_epochs}")
        self.head_epochs = head_epochs

    def local_train(self, job: LocalJob, model: nn.Module) -> Any:
        head = set(self.personal_keys(model)) & dict(model.named_parameters()).keys()
        body = set(dict(model.named_parameters())) - head
        try:
            first = job.fit(
                model, epochs=self.head_epochs, params=list(frozen_except(model, head)), stream=3
            )
            second = job.fit(model, params=list(frozen_except(model, body)))
        finally:
            unfreeze(model)
        return type(second)(
            loss=second.loss, steps=first.steps + second.steps, examples=second.examples
        )
