"""FedAvg + local fine-tuning, the personalization baseline most papers report (e.g. Wang et
al., "Federated Evaluation of On-device Personalization", 2019; FL-bench's and PFLlib's
"-FT" rows): training is FedAvg's; at evaluation each client fine-tunes a copy of the global
model on its own training split for ``finetune_epochs`` (seeded by round and client) and
evaluates that. Nothing is kept between rounds; the fine-tuning's compute is measured in the
evaluation phase (``cpu_s`` of the evaluate rows), so the carbon bill includes it.
"""

from __future__ import annotations

import copy

from torch import nn

from fedlab.fl.algorithms.base import ClientUpdate, LocalJob


class FinetuneClient(ClientUpdate):
    privacy_modes = ("none", "central")
    privacy_reason = (
        "the fine-tuning at evaluation is a second, non-private pass over the data that "
        "DP-SGD's accounting does not count"
    )

    def __init__(self, finetune_epochs: float = 1.0) -> None:
        if finetune_epochs <= 0:
            raise ValueError(f"finetune_epochs must be > 0, got {finetune_epochs}")
        self.finetune_epochs = finetune_epochs

    def personalize(self, job: LocalJob) -> nn.Module | None:
        tuned = copy.deepcopy(job.model)
        job.fit(tuned, epochs=self.finetune_epochs, stream=4)
        return tuned
