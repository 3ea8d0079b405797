"""MOON (Li, He and Song, "Model-Contrastive Federated Learning", CVPR 2021).

Each client keeps its previous local model. Its local loss adds mu * l_con, where for a
batch's representation z (the input of the model's last layer), z_glob from the received
global model and z_prev from its previous local model:

    l_con = -log( e^{sim(z, z_glob)/tau} / (e^{sim(z, z_glob)/tau} + e^{sim(z, z_prev)/tau}) )

with cosine similarity. A client's first round uses the global model as its previous one (as
the paper's code does). The server is Flower's FedAvg. mu = 1 (the paper's value for
CIFAR-100 and Tiny-ImageNet; 5 for CIFAR-10), tau = 0.5.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedlab.fl.algorithms.base import ClientUpdate, LocalJob, LocalUpdate, Representation


class MoonClient(ClientUpdate):
    stateful = True
    privacy_modes = ("none", "central")
    privacy_reason = (
        "the contrastive term needs per-example gradients through three models, which "
        "fedlab's DP-SGD path does not compute"
    )

    def __init__(self, mu: float = 1.0, temperature: float = 0.5) -> None:
        if mu < 0 or temperature <= 0:
            raise ValueError(f"MOON needs mu >= 0 and temperature > 0, got {mu}, {temperature}")
        self.mu, self.temperature = mu, temperature

    def train(self, job: LocalJob) -> LocalUpdate:
        global_model = copy.deepcopy(job.model).eval()
        previous = copy.deepcopy(job.model).eval()
        if job.state:
            previous.load_state_dict(job.state)
        mine, theirs, old = (Representation(m) for m in (job.model, global_model, previous))
        cos = nn.CosineSimilarity(dim=-1)

        def extra(x: torch.Tensor, _logits: torch.Tensor) -> torch.Tensor:
            z = mine.value
            assert z is not None
            with torch.no_grad():
                z_glob, z_prev = theirs.of(global_model, x), old.of(previous, x)
            logits = torch.stack([cos(z, z_glob), cos(z, z_prev)], dim=1) / self.temperature
            target = torch.zeros(len(x), dtype=torch.long)  # the global model is the positive
            return self.mu * nn.functional.cross_entropy(logits, target)

        try:
            result = job.fit(job.model, extra_loss=extra)
        finally:
            for hook in (mine, theirs, old):
                hook.remove()
        state = {k: v.detach().clone() for k, v in job.model.state_dict().items()}
        return LocalUpdate(job.model.state_dict(), result, state=state)
