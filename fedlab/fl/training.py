"""Local training and evaluation loops, shared by clients (train, federated evaluation) and the
server (centralized evaluation)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedlab.data.datasets import ArraySplit


@dataclass(frozen=True)
class TrainResult:
    """What one client's local training did."""

    loss: float  # mean training loss over the steps taken (without the proximal term)
    steps: int
    examples: int


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from integers (run seed, round, client, stream).

    Every random choice in a run is drawn from such a seed rather than from a process-global
    generator, so results do not depend on which Ray actor ran which client, or in what order.
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> 1)


def seed_torch(seed: int) -> None:
    """Seed torch's global generators, as :func:`torch.manual_seed` does, at a hundredth of
    its cost where no accelerator is present.

    Why: ``torch.manual_seed`` also queues the seed for CUDA's lazy initialization, and that
    queueing formats the caller's whole stack (``traceback.format_stack``, reading every
    frame's source line): ~2.5 ms under ``fedlab-run``'s 40 frames of Hydra and Flower,
    against the ~1 ms a small client's round takes (issue #22). Without an accelerator only
    the CPU generator exists, and seeding it is what ``torch.manual_seed`` does there.
    """
    if torch.accelerator.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


#: What this process has already warmed up (see :func:`warm_up`).
_WARM: set[Hashable] = set()


def warm_up(key: Hashable, work: Callable[[], object]) -> float:
    """Run ``work`` once per process and ``key``; return the CPU seconds it took (0.0 when
    this process has already done it).

    Why: a process's first training step pays one-time costs that are nobody's compute:
    PyTorch's lazy start of autograd and its kernels (about 1.5-3 s of CPU here, against
    ~0.01 s for a warm client's whole round), Opacus's import and first hooks. Measured
    around the client's work they would be charged to whichever client a Ray actor (or the
    in-process engine) happened to serve first. The ClientApp runs a throwaway step through
    the same code path before it starts its clocks and reports these seconds apart
    (``warmup-cpu-s``), so the carbon attribution counts them as overhead.
    """
    if key in _WARM:
        return 0.0
    started = time.process_time()
    work()
    _WARM.add(key)
    return time.process_time() - started


def make_optimizer(
    params: Iterator[nn.Parameter], name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The client's local optimizer (``client.optimizer``)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def batches(
    n: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """``steps`` index batches, reshuffling at every epoch boundary."""
    taken = 0
    while taken < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            if taken == steps:
                return
            yield order[start : start + batch_size]
            taken += 1


def train(
    model: nn.Module,
    data: ArraySplit,
    *,
    epochs: float,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    proximal_mu: float = 0.0,
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` (a float: stragglers do part of an epoch).

    With ``proximal_mu > 0`` the FedProx proximal term mu/2 * ||w - w_global||^2 is added to
    the loss, w_global being the weights the model had on entry (Flower's FedProx only sends
    mu; the client must add the term itself). ``extra_loss(x, logits)`` is an algorithm's own
    term (SCAFFOLD, FedDyn, MOON, Ditto: :mod:`fedlab.fl.algorithms`). The reported loss is the
    cross-entropy alone, so algorithms compare on the same scale.
    """
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    steps = max(1, math.ceil(epochs * steps_per_epoch))
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    criterion = nn.CrossEntropyLoss()
    model.train()
    total, seen = 0.0, 0
    for index in batches(len(y), batch_size, steps, generator):
        optimizer.zero_grad(set_to_none=True)
        logits = model(x[index])
        loss = criterion(logits, y[index])
        total += loss.item() * len(index)
        seen += len(index)
        if extra_loss is not None:
            loss = loss + extra_loss(x[index], logits)
        if anchor:
            prox = sum(
                (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
            )
            loss = loss + 0.5 * proximal_mu * prox
        loss.backward()
        optimizer.step()
    return TrainResult(loss=total / seen, steps=steps, examples=seen)


@torch.no_grad()
def evaluate(model: nn.Module, data: ArraySplit, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``data``."""
    model.eval()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == target).sum())
    return loss_sum / len(y), correct / len(y)


def train_private(
    model: nn.Module,
    data: ArraySplit,
    *,
    epochs: float,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    seed: int,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str,
    proximal_mu: float = 0.0,
) -> tuple[TrainResult, Any]:
    """Local DP-SGD (Opacus, Poisson batches) for ``epochs``; also returns the DP report.

    Every Poisson batch, empty ones included, is one noisy step: that is what the accountant
    counts. FedProx's proximal gradient is added after the noise (see
    :func:`fedlab.trackers.privacy.dpsgd.make_private_training`).
    """
    from torch.utils.data import DataLoader, TensorDataset

    from fedlab.trackers.privacy.dpsgd import private_training

    loader = DataLoader(
        TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y)), batch_size=batch_size
    )
    steps = max(1, math.ceil(epochs * len(loader)))
    total, seen, taken = 0.0, 0, 0
    with private_training(
        model,
        optimizer,
        loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        grad_sample_mode=grad_sample_mode,
        seed=seed,
        proximal_mu=proximal_mu,
    ) as dp:
        model.train()
        while taken < steps:
            for x, y in dp.data_loader:
                loss = dp.fit_batch(x, y)
                if loss is not None:
                    total += loss * len(y)
                    seen += len(y)
                taken += 1
                if taken == steps:
                    break
    return TrainResult(
        loss=total / seen if seen else math.nan, steps=taken, examples=seen
    ), dp.report()
