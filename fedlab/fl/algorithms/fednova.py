"""FedNova (Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020).

Clients that take different numbers of local steps tau_i (unequal data with equal epochs,
stragglers doing part of an epoch) pull FedAvg towards the objective of the busiest ones.
FedNova normalises each client's change by ||a_i||_1, the total weight its local solver put on
its gradients: tau_i for plain SGD, [tau_i - rho (1 - rho^tau_i) / (1 - rho)] / (1 - rho) with
momentum rho (the paper's Eq. 9). The server, with p_i = n_i / sum_S n_j:

    x <- x - lr_g * tau_eff * sum_i p_i (x - y_i) / ||a_i||_1,   tau_eff = sum_i p_i ||a_i||_1

The client side is FedAvg's plus ||a_i||_1 as a reply metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Message

from fedlab.fl.algorithms.aggregate import RememberingFedAvg, as_numpy
from fedlab.fl.algorithms.base import ClientUpdate, LocalJob, LocalUpdate, a_norm

A_NORM = "fednova-a-norm"


class FedNovaClient(ClientUpdate):
    privacy_modes = ("none", "local")
    privacy_reason = (
        "FedNova's normalised aggregation is not the weighted mean that central DP's noise covers"
    )

    @classmethod
    def check(cls, model: Any, cfg: Any) -> tuple[str, str] | None:
        if cfg.client.optimizer != "sgd":
            return "client.optimizer", (
                f"FedNova normalises SGD's local steps; got '{cfg.client.optimizer}' (use sgd)"
            )
        return None

    def train(self, job: LocalJob) -> LocalUpdate:
        update = super().train(job)
        update.metrics[A_NORM] = a_norm(update.result.steps, float(job.config["momentum"]))
        return update


class FedNova(RememberingFedAvg):
    def __init__(self, server_learning_rate: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_learning_rate = server_learning_rate

    def step(self, sent: dict[str, np.ndarray], replies: list[Message]) -> dict:
        metrics = [next(iter(r.content.metric_records.values())) for r in replies]
        n = [float(m[self.weighted_by_key]) for m in metrics]
        p = [ni / sum(n) for ni in n]
        norms = [float(m[A_NORM]) for m in metrics]
        tau_eff = sum(pi * a for pi, a in zip(p, norms, strict=True))
        ys = [as_numpy(r.content["arrays"]) for r in replies]
        change = {
            k: sum(pi * (sent[k] - y[k]) / a for pi, y, a in zip(p, ys, norms, strict=True))
            for k in sent
        }
        return {k: sent[k] - self.server_learning_rate * tau_eff * change[k] for k in sent}
