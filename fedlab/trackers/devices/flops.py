"""Work in a hardware-neutral unit: FLOPs per example, and the examples a client processed.

Counting FLOPs (not timing the host) is what makes a client's work comparable across the
simulated devices: the device model divides it by each device's sustained throughput.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def flops_per_example(
    model: nn.Module,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    train: bool,
    batch: int = 8,
) -> float:
    """FLOPs one example costs: forward (+ loss and backward when ``train``), per example.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` over a batch of ``batch`` random
    inputs, divided by ``batch``: it counts the matrix products and convolutions (2 FLOPs per
    multiply-add) that dominate training, not element-wise ops or the optimizer step, the
    convention of published per-model FLOP counts. DP-SGD costs the same count: its
    per-example gradients are the terms of the batch gradient before the sum, and clipping and
    noise are element-wise (its measured slowdown on real hardware is memory traffic and
    overhead, which a FLOP model does not see; benchmarks/README.md has the host figures).
    The model is used on a deep copy, so the caller's is untouched.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model)
    model.train(train)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=generator)
    y = torch.randint(0, num_classes, (batch,), generator=generator)
    with FlopCounterMode(display=False) as counter:
        if train:
            nn.functional.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / batch


def examples_processed(n: int, batch_size: int, steps: int, *, poisson: bool) -> float:
    """Examples a client's ``steps`` local steps went through on ``n`` examples.

    Mirrors :func:`fedlab.fl.training.batches`: an epoch is ceil(n / batch_size) batches, all
    full but the last. DP-SGD's Poisson batches (sampling rate 1 / batches per epoch) hold
    n / batches examples on average, the expected count.
    """
    if n == 0 or steps == 0:
        return 0.0
    per_epoch = math.ceil(n / batch_size)
    if poisson:
        return steps * n / per_epoch
    return (steps // per_epoch) * n + (steps % per_epoch) * batch_size


def steps_for(epochs: float, n: int, batch_size: int) -> int:
    """Local steps of ``epochs`` (a float) on ``n`` examples, as the clients count them."""
    return max(1, math.ceil(epochs * math.ceil(n / batch_size)))


def epochs_for_steps(steps: int, n: int, batch_size: int) -> float:
    """The largest ``epochs`` value whose :func:`steps_for` is ``steps`` (step-aligned)."""
    per_epoch = math.ceil(n / batch_size)
    epochs = steps / per_epoch
    while steps_for(epochs, n, batch_size) > steps:  # float rounding of steps / per_epoch
        epochs = math.nextafter(epochs, 0.0)
    return epochs
