"""What a client does with the global model in a round, and the model it would actually use.

Flower's strategies live on the server; an algorithm such as SCAFFOLD or Ditto also changes the
client's local update and keeps per-client state. A strategy option in ``conf/strategy/`` names
its client side as ``strategy.client_update._target_`` (a :class:`ClientUpdate` subclass) beside
its Flower server class (``strategy.flower._target_``), so adding an algorithm is one YAML file
and one module. The ClientApp (:mod:`fedlab.fl.client_app`) loads the client's saved state
(:mod:`fedlab.fl.client_state`), hands the update a :class:`LocalJob`, sends what it returns and
saves the state it returns.

A client update declares what it can do rather than being recognised by name:

* ``stateful``: whether it keeps per-client state (the ClientApp loads and saves it);
* ``privacy_modes`` and ``privacy_reason``: which ``privacy.mode`` values it is defined for,
  and why not the others (checked at start-up, one line naming the keys);
* :meth:`check`: whether the configured model suits it (FedBN needs normalization layers).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from fedlab.data.datasets import ArraySplit
from fedlab.fl.training import TrainResult

#: ``extra_loss(x_batch, logits) -> tensor`` added to a batch's cross-entropy (FedProx's,
#: SCAFFOLD's correction, FedDyn's regulariser, MOON's contrastive term, Ditto's proximal term).
ExtraLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Fit(Protocol):
    """Local training as the round's instructions configure it (optimizer, lr, batch size,
    epochs, DP-SGD), which an update may call several times with its own additions: other
    ``data``, ``epochs``, an ``extra_loss``, only some ``params`` trainable, and a seed
    ``stream`` of its own for a second pass (the main pass is stream 2)."""

    def __call__(
        self,
        model: nn.Module,
        data: ArraySplit | None = None,
        *,
        epochs: float | None = None,
        extra_loss: ExtraLoss | None = None,
        params: list[nn.Parameter] | None = None,
        stream: int = 2,
    ) -> TrainResult: ...


@dataclass
class LocalJob:
    """One client's round: the global model (a private copy, free to train in place), its
    data, the round's instructions, what else the server sent, its saved state."""

    model: nn.Module
    train: ArraySplit
    config: Any  # the message's ConfigRecord (lr, local-epochs, the algorithm's own keys)
    received: dict[str, dict[str, torch.Tensor]]  # every ArrayRecord sent besides "arrays"
    state: dict[str, torch.Tensor]  # {} when the client has none yet
    fit: Fit
    server_round: int
    client: int


@dataclass
class LocalUpdate:
    """What the client sends back (``arrays``: the model entries it shares; ``extra``: other
    array records, e.g. SCAFFOLD's control-variate change), its extra metrics, and its new
    state (None: unchanged / stateless)."""

    arrays: dict[str, torch.Tensor]
    result: TrainResult
    extra: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    metrics: dict[str, float | int] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None


class ClientUpdate:
    """FedAvg's local update (and FedProx's, Flower sending ``proximal-mu``): train the global
    model on the local data and send all of it back; evaluate the global model as it is."""

    stateful: ClassVar[bool] = False
    privacy_modes: ClassVar[tuple[str, ...]] = ("none", "local", "central")
    privacy_reason: ClassVar[str] = ""

    @classmethod
    def check(cls, model: nn.Module, cfg: Any) -> tuple[str, str] | None:
        """Why this update cannot work with the experiment (``cfg``, its built ``model``):
        (config key, message) for a one-line config error, or None."""
        return None

    def train(self, job: LocalJob) -> LocalUpdate:
        result = job.fit(job.model)
        return LocalUpdate(job.model.state_dict(), result)

    def personalize(self, job: LocalJob) -> nn.Module | None:
        """The model this client would use, to evaluate on its own test split; None when
        that is the global model itself (the ClientApp then reuses the global figures)."""
        return None


# -- helpers shared by the algorithms -----------------------------------------------------


def a_norm(steps: int, momentum: float) -> float:
    """||a||_1 of local SGD over ``steps`` steps with heavy-ball ``momentum`` rho: the total
    weight the steps put on the gradients, x - y = lr * sum_k a_k g_k (FedNova, Wang et al.
    2020, Eq. 9): ``steps`` for plain SGD, [steps - rho (1 - rho^steps) / (1 - rho)] / (1 - rho)
    with momentum."""
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


def parameters_of(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's trainable parameters by state-dict name."""
    return dict(model.named_parameters())


def detached(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's parameters (the global weights a regulariser anchors to)."""
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def head_modules(model: nn.Module, layers: int) -> list[str]:
    """The names of the last ``layers`` modules that hold parameters themselves (the
    classifier head FedPer, FedRep and MOON's representation split the model at)."""
    owners = [
        name for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    if layers < 1 or layers >= len(owners):
        raise ValueError(
            f"personal_layers must be in 1..{len(owners) - 1} for this model "
            f"({len(owners)} layers with parameters), got {layers}"
        )
    return owners[-layers:]


def keys_under(model: nn.Module, modules: list[str]) -> list[str]:
    """The state-dict keys (parameters and buffers) that belong to ``modules``."""
    return [k for k in model.state_dict() if any(k.startswith(m + ".") for m in modules)]


class Representation:
    """The input of a model's final layer, captured by a forward hook on every forward pass:
    the representation MOON contrasts (the paper's projection output; fedlab's models have no
    separate projection head, so the penultimate features serve, as in FL-bench)."""

    def __init__(self, model: nn.Module) -> None:
        last = head_modules(model, 1)[0]
        self.value: torch.Tensor | None = None
        self._handle = model.get_submodule(last).register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
        self.value = inputs[0].flatten(1)

    def of(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        model(x)
        assert self.value is not None
        return self.value

    def remove(self) -> None:
        self._handle.remove()


def frozen_except(model: nn.Module, keys: set[str]) -> Iterator[nn.Parameter]:
    """Make only the parameters named in ``keys`` trainable; yield them."""
    for name, param in model.named_parameters():
        param.requires_grad_(name in keys)
        if name in keys:
            yield param


def unfreeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(True)


def with_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with the entries of ``state`` put in (personal layers over the
    global ones); the model itself when there is no state."""
    if not state:
        return model
    personal = copy.deepcopy(model)
    personal.load_state_dict({**personal.state_dict(), **state})
    return personal
