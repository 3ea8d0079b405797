"""Per-sample gradients for DP-SGD by ``torch.func`` under ``torch.compile``, in batches padded
to fixed shapes (``privacy.grad_sample_mode=compiled``).

Why fedlab computes these itself: Opacus' own engines (hooks, expanded weights, functorch,
ghost clipping) run eagerly, and on the small models of FL research their cost is Python
dispatch rather than arithmetic: DP-SGD took 2.1-2.5x the non-private epoch on the CNN with
the best of them (``ew``; ``benchmarks/bench_dp.py``). Compiled, the whole per-sample pass
becomes one fused kernel graph. Compiling for Poisson batches, whose size changes every step,
either recompiles per new size (up to torch's limit of 8, then eager) or compiles dynamic
shapes that were slower; so each batch is padded with zero-weight rows to the next multiple of
:data:`BUCKET` and compiled once per padded size (about six sizes for batches of 32).

Only the per-sample gradients are computed here: they go into ``p.grad_sample``, where
Opacus' ``DPOptimizer`` clips them per sample, adds the noise, scales by the expected batch
size and tells its accountant, exactly as for its own engines. A padded row's gradient is
multiplied by 0: its norm is 0, it is clipped to 0 and adds nothing, so the clipped sum, the
noise and the privacy of the step are those of the real batch.

The price is compilation: about 4 s for the first padded size and 1-1.5 s for each further one
in a process (the CNN, this repository's 2-core machine, with Inductor's cache on disk warm),
paid once per process and model architecture. It pays for long or many-client runs, not for a
smoke test, which is why it is not the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: Poisson batches are padded up to a multiple of this many rows.
BUCKET = 8

#: (module copy, compiled function), one per (architecture, loss) in this process.
_COMPILED: dict[tuple[str, ...], tuple[nn.Module, Callable[..., Any]]] = {}

#: Graphs one compiled function may keep (one per padded size and train/eval mode): torch's
#: default of 8 would send batches of a ninth size back to eager execution.
GRAPHS = 64


def per_sample_gradients(
    module: nn.Module,
    criterion: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], float]:
    """Each trainable parameter's per-sample gradients of ``criterion`` at ``module``'s
    current weights, for a batch padded to a multiple of :data:`BUCKET` (the padded rows
    zero), and the batch's mean loss."""
    n = len(targets)
    inputs, targets, weight = pad_batch(inputs, targets)
    params = {k: p.detach() for k, p in module.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in module.named_parameters() if not p.requires_grad}
    buffers = {k: b for k, b in module.named_buffers()}
    template, compiled = compiled_for(module, criterion)
    template.train(module.training)  # dropout and the like, as the caller set them
    grads, loss_sum = compiled(params, {**frozen, **buffers}, inputs, targets, weight)
    return grads, float(loss_sum) / n


def pad_batch(
    inputs: torch.Tensor, targets: torch.Tensor, bucket: int = BUCKET
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch with zero rows appended up to a multiple of ``bucket``, and each row's weight
    (1 for a real row, 0 for padding)."""
    n = len(targets)
    pad = -n % bucket
    weight = torch.ones(n + pad)
    if pad:
        inputs = torch.cat([inputs, inputs.new_zeros((pad, *inputs.shape[1:]))])
        targets = torch.cat([targets, targets.new_zeros(pad)])
        weight[n:] = 0.0
    return inputs, targets, weight


def compiled_for(
    module: nn.Module, criterion: Callable[..., torch.Tensor]
) -> tuple[nn.Module, Callable[..., Any]]:
    """The compiled function for ``module``'s architecture and ``criterion``, built once: it
    runs a copy of the first such module (``functional_call`` swaps every client's weights
    in), so that torch's guards, which watch the module object, hold for every client. Call
    it before Opacus hooks ``module``, so that the copy is a plain module (compilation itself
    waits for the first batch)."""
    key = (type(module).__qualname__, repr(module), _criterion_key(criterion))
    if key not in _COMPILED:
        import copy

        from torch._dynamo import config as dynamo_config
        from torch.func import functional_call, grad_and_value, vmap

        dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, GRAPHS)
        template = copy.deepcopy(module)

        def loss(params: dict, rest: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(template, (params, rest), (x.unsqueeze(0),))
            return criterion(out, y.unsqueeze(0))

        def run(params: dict, rest: dict, x: torch.Tensor, y: torch.Tensor,
                weight: torch.Tensor) -> tuple[dict, torch.Tensor]:  # fmt: skip
            grads, losses = vmap(grad_and_value(loss), in_dims=(None, None, 0, 0))(
                params, rest, x, y
            )
            shaped = {k: g * weight.view(-1, *[1] * (g.dim() - 1)) for k, g in grads.items()}
            return shaped, (losses * weight).sum()

        _COMPILED[key] = (template, torch.compile(run, dynamic=False))
    return _COMPILED[key]


def _criterion_key(criterion: Callable[..., torch.Tensor]) -> str:
    """Which loss: a stock ``nn`` loss module by its class, settings and buffers (class
    weights); anything else by identity (the cache holds it, so the id is not reused)."""
    if isinstance(criterion, nn.Module) and type(criterion).__module__.startswith("torch.nn"):
        settings = {k: v for k, v in vars(criterion).items() if not k.startswith("_")}
        buffers = [(k, b.flatten().tolist()) for k, b in criterion.named_buffers()]
        return f"{type(criterion).__name__}{sorted(settings.items())!r}{buffers!r}"
    return f"id{id(criterion)}"
