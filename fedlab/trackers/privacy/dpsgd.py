"""DP-SGD in a client: Opacus' PrivacyEngine around one local-training session.

:func:`private_training` (used by :func:`fedlab.fl.training.train_private`) wraps a plain
model, optimizer and loader for record-level DP-SGD with Poisson sampling, takes a noisy step
for every sampled batch (empty ones included, as the accountant assumes), and leaves the
module clean afterwards so the next round can wrap it again. The client only *counts* here:
its :class:`DPTrainingReport` goes to the server, which composes the budget
(:class:`fedlab.trackers.privacy.accounting.ClientAccountants`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants.accountant import IAccountant
from torch import nn
from torch.utils.data import DataLoader

from fedlab.config.privacy_rules import (
    validate_grad_sample_mode,
    validate_max_grad_norm,
    validate_noise_multiplier,
)
from fedlab.trackers.privacy.accounting import HistoryEntry
from fedlab.trackers.privacy.per_sample import compiled_for, per_sample_gradients


@dataclass(frozen=True)
class DPTrainingReport:
    """What a client's DP-SGD actually did; the server composes it into its accountant.

    ``history`` is the exact list of noisy steps Opacus' step hook saw (normally one entry
    ``(noise_multiplier, sample_rate, steps)``).
    """

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    expected_batch_size: int
    empty_batches: int
    history: tuple[HistoryEntry, ...]

    def as_metrics(self) -> dict[str, float | int]:
        """Flat scalars for a Flower MetricRecord (keys ``dp-...``)."""
        return {
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-max-grad-norm": self.max_grad_norm,
            "dp-sample-rate": self.sample_rate,
            "dp-steps": self.steps,
        }


@dataclass
class PrivateTraining:
    """The private training objects of one local-training session.

    Use ``model`` for forward passes, ``optimizer`` for steps, ``data_loader`` for batches
    and ``criterion`` for the loss (in ghost mode it is Opacus' two-pass loss and *must* be
    used). ``module`` is the caller's original ``nn.Module``: its parameters are the ones
    being trained, so after :meth:`close` it holds the result with unchanged state_dict keys.

    Every batch of the Poisson loader must lead to exactly one optimizer step, *including
    empty batches* (use :meth:`noise_only_step` or :meth:`fit_batch`): the accountant assumes
    one noisy release per sampled batch, and skipping empty ones would reveal that no
    record was sampled.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader
    criterion: Callable[..., Any]
    module: nn.Module
    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str
    sample_rate: float
    expected_batch_size: int
    _accountant: IAccountant = field(repr=False)
    _closed: bool = field(default=False, repr=False)
    empty_batches: int = 0

    @property
    def history(self) -> list[HistoryEntry]:
        """Noisy steps taken so far, as recorded by Opacus' step hook."""
        return [(float(z), float(q), int(s)) for z, q, s in self._accountant.history]

    @property
    def steps(self) -> int:
        """Number of noisy optimizer steps taken so far."""
        return sum(s for _, _, s in self.history)

    def noise_only_step(self) -> None:
        """Take the noisy step of an empty Poisson batch: zero clipped sum plus noise.

        Needed because "ew" cannot run a forward pass on 0 samples and the loss of an empty
        batch is NaN; the release must still happen for the accounting to hold.
        """
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.module.parameters():
            if not p.requires_grad:
                continue
            if self.grad_sample_mode == "ghost":
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = p.new_zeros((0, *p.shape))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.empty_batches += 1

    def fit_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> float | None:
        """One DP-SGD step on a batch; returns the mean loss (None for an empty batch)."""
        if len(targets) == 0:
            self.noise_only_step()
            return None
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_sample_mode == "compiled":
            grads, mean_loss = per_sample_gradients(self.module, self.criterion, inputs, targets)
            for name, p in self.module.named_parameters():
                if p.requires_grad:
                    p.grad_sample = grads[name]
            self.optimizer.step()
            return mean_loss
        loss = self.criterion(self.model(inputs), targets)
        with warnings.catch_warnings():
            # Opacus' per-sample hooks are full backward hooks; torch warns on every model
            # whose input does not require grad (i.e. always). The warning is benign.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def report(self) -> DPTrainingReport:
        """Summary to send to the server (see :meth:`ClientAccountants.record`)."""
        return DPTrainingReport(
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            sample_rate=self.sample_rate,
            steps=self.steps,
            expected_batch_size=self.expected_batch_size,
            empty_batches=self.empty_batches,
            history=tuple(self.history),
        )

    def close(self) -> None:
        """Remove Opacus' hooks and per-parameter attributes from ``module`` (idempotent).

        Afterwards ``module`` is a plain nn.Module again: make_private can be applied to it
        another time without "Trying to add hooks twice", and it pickles/serialises cleanly.
        """
        if self._closed:
            return
        self.optimizer.zero_grad(set_to_none=True)
        cleanup = getattr(self.model, "_close", None) or getattr(self.model, "cleanup", None)
        if cleanup is not None:
            cleanup()
        for p in self.module.parameters():
            for attr in ("grad_sample", "summed_grad", "_forward_counter", "_processed"):
                if hasattr(p, attr):
                    delattr(p, attr)
        self._closed = True


def _seeded_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Two independent generators (batch sampling, noise) derived from one seed."""
    sample_seed, noise_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return (
        torch.Generator().manual_seed(int(sample_seed) & 0x7FFF_FFFF_FFFF_FFFF),
        torch.Generator().manual_seed(int(noise_seed) & 0x7FFF_FFFF_FFFF_FFFF),
    )


def make_private_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
    criterion: Callable[..., Any] | None = None,
    seed: int | None = None,
    proximal_mu: float = 0.0,
) -> PrivateTraining:
    """Wrap (model, optimizer, loader) for record-level DP-SGD with Poisson sampling.

    Each call uses a fresh ``PrivacyEngine`` with a fresh local RDP accountant, used only to
    *count* what happens (its history is what :meth:`PrivateTraining.report` returns); the
    privacy budget itself is composed on the server.

    Args:
        model: a plain nn.Module (not yet wrapped); BatchNorm is rejected by Opacus.
        optimizer: an optimizer over ``model``'s parameters.
        data_loader: loader whose ``batch_size`` sets the expected batch size; it is replaced
            by a Poisson-sampling loader with ``sample_rate = 1 / len(data_loader)``.
        noise_multiplier, max_grad_norm: DP-SGD noise (std = z * C on the clipped sum) and C.
        grad_sample_mode: "hooks" (default, works everywhere), "ew" (expanded weights),
            "functorch", "ghost" (ghost clipping; ``criterion`` becomes a two-pass loss), or
            "compiled" (fedlab's: per-sample gradients by torch.func under torch.compile,
            :mod:`fedlab.trackers.privacy.per_sample`; Opacus' optimizer, loader and
            accountant as for the others).
        criterion: loss with reduction "mean" (default ``nn.CrossEntropyLoss()``).
        seed: makes batch sampling and noise deterministic (secure_mode is off: this is a
            research simulator; the PRNG is not cryptographically secure). Two independent
            generators are derived from it, so neither touches the global RNG.
        proximal_mu: FedProx's mu. The proximal term mu/2 ||w - w_global||^2 does not depend
            on data, so its gradient ``mu (w - w_global)`` is added *after* clipping and noise
            (via Opacus' step hook) -- with DP-SGD a proximal term in the loss would be
            silently dropped, because the optimizer rebuilds ``p.grad`` from per-sample grads.
    """
    noise_multiplier = validate_noise_multiplier(noise_multiplier)
    max_grad_norm = validate_max_grad_norm(max_grad_norm)
    grad_sample_mode = validate_grad_sample_mode(grad_sample_mode)
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    if criterion is None:
        criterion = nn.CrossEntropyLoss()
    sample_generator, noise_generator = (None, None) if seed is None else _seeded_generators(seed)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None

    if grad_sample_mode == "compiled":
        compiled_for(model, criterion)  # its copy of the model taken before Opacus hooks it
    with warnings.catch_warnings():
        # "Secure RNG turned off": intended, see the docstring.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    out = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_generator,
        # compiled: Opacus' optimizer reads the per-sample gradients fit_batch puts on the
        # parameters; its functorch wrapper (any layer) is there for close(), never called
        grad_sample_mode="functorch" if grad_sample_mode == "compiled" else grad_sample_mode,
    )
    if grad_sample_mode == "ghost":
        private_model, private_optimizer, private_criterion, private_loader = out
    else:
        private_model, private_optimizer, private_loader = out
        private_criterion = criterion
    if sample_generator is not None:
        # make_private takes the sampler's generator from the original loader; seed it here
        # so batch composition is reproducible without touching the global RNG.
        private_loader.batch_sampler.generator = sample_generator
        private_loader.generator = sample_generator

    if global_params is not None:
        account_hook = private_optimizer.step_hook
        trainable = [p for p in model.parameters()]

        def _hook(optim: Any) -> None:
            account_hook(optim)
            with torch.no_grad():
                for p, p0 in zip(trainable, global_params, strict=True):
                    if p.requires_grad and p.grad is not None:
                        p.grad.add_(p - p0, alpha=proximal_mu)

        private_optimizer.attach_step_hook(_hook)

    sample_rate = 1.0 / len(data_loader)
    return PrivateTraining(
        model=private_model,
        optimizer=private_optimizer,
        data_loader=private_loader,
        criterion=private_criterion,
        module=model,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        grad_sample_mode=grad_sample_mode,
        sample_rate=sample_rate,
        expected_batch_size=int(private_optimizer.expected_batch_size),
        _accountant=engine.accountant,
    )


@contextlib.contextmanager
def private_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    **kwargs: Any,
) -> Iterator[PrivateTraining]:
    """Context-manager form of :func:`make_private_training`; closes (unhooks) on exit.

    Example::

        with private_training(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                              seed=42) as dp:
            for _ in range(epochs):
                for x, y in dp.data_loader:
                    dp.fit_batch(x, y)
        report = dp.report()  # -> send report.history to the server
        model.state_dict()    # plain keys, no "_module." prefix
    """
    session = make_private_training(model, optimizer, data_loader, **kwargs)
    try:
        yield session
    finally:
        session.close()
