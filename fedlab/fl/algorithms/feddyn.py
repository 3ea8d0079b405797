"""FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021),
Algorithm 1.

Client i keeps g_i (the gradient of its loss at its last local model; 0 at first). Given the
server model theta, it minimises L_i(w) - <g_i, w> + alpha/2 ||w - theta||^2 by local SGD,
then sets g_i <- g_i - alpha (w_i - theta) (the first-order condition of that minimum) and
sends w_i. The server, over the sampled P of m clients: h <- h - alpha/m * sum(w_i - theta),
theta <- mean(w_i) - h / alpha (``h`` public, so the checkpoint keeps it).

alpha: 0.01 (the paper searches {0.1, 0.01, 0.001}; 0.01 is its most used value).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Message

from fedlab.fl.algorithms.aggregate import RememberingFedAvg, as_numpy, mean
from fedlab.fl.algorithms.base import ClientUpdate, LocalJob, LocalUpdate, detached

ALPHA = "feddyn-alpha"  # sent in the round's config, so both sides use the server's value


class FedDynClient(ClientUpdate):
    stateful = True
    privacy_modes = ("none",)
    privacy_reason = (
        "FedDyn's server step divides by alpha and accumulates h over rounds; neither fedlab's "
        "central-DP wrapper nor its DP-SGD path accounts for that"
    )

    def train(self, job: LocalJob) -> LocalUpdate:
        alpha = float(job.config[ALPHA])
        theta = detached(job.model)
        g = {k: job.state.get(k, torch.zeros_like(v)) for k, v in theta.items()}
        params = dict(job.model.named_parameters())

        def extra(_x: torch.Tensor, _logits: torch.Tensor) -> torch.Tensor:
            linear = sum((params[k] * g[k]).sum() for k in params)
            quadratic = sum((params[k] - theta[k]).pow(2).sum() for k in params)
            return -linear + 0.5 * alpha * quadratic  # type: ignore[operator]

        result = job.fit(job.model, extra_loss=extra)
        w = detached(job.model)
        state = {k: g[k] - alpha * (w[k] - theta[k]) for k in theta}
        return LocalUpdate(job.model.state_dict(), result, state=state)


class FedDyn(RememberingFedAvg):
    def __init__(self, total_clients: int, alpha: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if total_clients < 1:
            raise ValueError(f"total_clients must be >= 1, got {total_clients}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.total_clients = total_clients
        self.alpha = alpha
        self.h: dict[str, np.ndarray] = {}

    def round_config(self) -> dict[str, Any]:
        return {ALPHA: self.alpha}

    def step(self, sent: dict[str, np.ndarray], replies: list[Message]) -> dict:
        ws = [as_numpy(r.content["arrays"]) for r in replies]
        total = {k: sum(w[k].astype(np.float64) - sent[k] for w in ws) for k in sent}
        self.h = {
            k: self.h.get(k, np.zeros_like(v)) - self.alpha / self.total_clients * v
            for k, v in total.items()
        }
        avg = mean(ws)
        return {k: avg[k] - self.h[k] / self.alpha for k in sent}
