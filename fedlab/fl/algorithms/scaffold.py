"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020), with the paper's option II for the client control variate.

Client i, given the global model x and server control c, starts from y = x and takes K local
steps y <- y - lr * (g_i(y) - c_i + c) (the correction enters as the linear loss term
<c - c_i, y>, whose gradient it is); then c_i+ = c_i - c + (x - y) / (K lr), and it sends
dy = y - x (as the model y) and dc = c_i+ - c_i, keeping c_i+. The server, over the sampled S
of N clients: x <- x + lr_g * mean(dy), c <- c + |S|/N * mean(dc) (uniform means, as in the
paper's Algorithm 1).

With momentum rho in the local SGD, K is replaced by ||a||_1 (the steps' total weight on the
gradients, FedNova's Eq. 9), which is K for plain SGD: (x - y) / (K lr) estimates the mean
corrected gradient only without momentum, and overshoots by up to 1/(1 - rho) with it.

Costs: the control variate doubles the bytes each way (c starts at 0 and is sent as zeros in
round 1, as the paper initialises it); fedlab's Grid meters both records. It covers the model's
floating-point entries; clients correct, and send changes for, their trainable parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedlab.fl.algorithms.aggregate import RememberingFedAvg, as_numpy, as_record, mean
from fedlab.fl.algorithms.base import ClientUpdate, LocalJob, LocalUpdate, a_norm, detached

CONTROL = "control"  # the message's array record holding c (down) or dc (up)


class ScaffoldClient(ClientUpdate):
    stateful = True
    privacy_modes = ("none",)
    privacy_reason = (
        "central DP's noise covers the model, not the control variates, and fedlab's DP-SGD "
        "path does not carry SCAFFOLD's correction"
    )

    @classmethod
    def check(cls, model: Any, cfg: Any) -> tuple[str, str] | None:
        if cfg.client.optimizer != "sgd":
            return "client.optimizer", (
                f"SCAFFOLD's control variates are defined for SGD; got '{cfg.client.optimizer}'"
            )
        return None

    def train(self, job: LocalJob) -> LocalUpdate:
        x = detached(job.model)
        c = job.received.get(CONTROL, {})
        zero = {k: torch.zeros_like(v) for k, v in x.items()}
        c = {k: c.get(k, zero[k]) for k in x}
        c_i = {k: job.state.get(k, zero[k]) for k in x}
        correction = {k: c[k] - c_i[k] for k in x}
        params = dict(job.model.named_parameters())

        def extra(_x: torch.Tensor, _logits: torch.Tensor) -> torch.Tensor:
            return sum((params[k] * correction[k]).sum() for k in params)  # type: ignore[return-value]

        result = job.fit(job.model, extra_loss=extra)
        steps = a_norm(result.steps, float(job.config["momentum"]))
        scale = 1.0 / (steps * float(job.config["lr"]))
        y = detached(job.model)
        c_plus = {k: c_i[k] - c[k] + (x[k] - y[k]) * scale for k in x}
        delta = {k: c_plus[k] - c_i[k] for k in x}
        return LocalUpdate(job.model.state_dict(), result, extra={CONTROL: delta}, state=c_plus)


class Scaffold(RememberingFedAvg):
    """SCAFFOLD's server: the global step on the mean model change, and the control variate
    ``control`` (public, so the checkpoint keeps it)."""

    def __init__(self, total_clients: int, server_learning_rate: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if total_clients < 1:
            raise ValueError(f"total_clients must be >= 1, got {total_clients}")
        self.total_clients = total_clients
        self.server_learning_rate = server_learning_rate
        self.control: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.control is None:
            self.control = as_record(
                {k: np.zeros_like(v) for k, v in as_numpy(arrays).items()
                 if np.issubdtype(v.dtype, np.floating)}
            )
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for msg in messages:
            msg.content[CONTROL] = self.control
        return messages

    def step(self, sent: dict[str, np.ndarray], replies: list[Message]) -> dict:
        dy = mean([{k: v - sent[k] for k, v in as_numpy(r.content["arrays"]).items()}
                   for r in replies])
        dc = mean([as_numpy(r.content[CONTROL]) for r in replies])
        assert self.control is not None
        c = as_numpy(self.control)
        share = len(replies) / self.total_clients
        c.update({k: c[k] + share * v for k, v in dc.items()})
        self.control = as_record(c, self.control)
        return {k: sent[k] + self.server_learning_rate * dy[k] for k in sent}
