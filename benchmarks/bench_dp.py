"""Benchmark: DP-SGD (Opacus, via fedlab.trackers.privacy.dpsgd) against non-private training.

One epoch of sklearn's load_digits (1797 images, 1x8x8, 10 classes), batch 32, SGD, on CPU,
for the two model families fedlab ships: an MLP (64-128-10) and a small CNN (conv-GroupNorm
blocks). For each Opacus grad_sample_mode it reports

* the fastest of N epochs (after a warm-up epoch), split into data loading,
  forward, backward and optimizer step, and its ratio to non-private (settings are run
  round-robin, so a busy shared machine slows all of them alike),
* whether the mode is *correct*: the noise-free DP update on a fixed batch equals an
  independent per-sample-gradient loop, clipped by hand (max abs difference).

Besides Opacus' modes (``ghost`` is its fast gradient clipping) it times one hand-written
attempt at the 2x goal, ``torch.func`` (per-sample gradients by ``vmap(grad(loss))`` over a
``functional_call``, clipping, noise and the SGD step written out, Poisson sampling as in
Opacus), eagerly and under ``torch.compile``; it is checked against the same hand-clipped loop.

Run: ``PYTHONPATH=. python benchmarks/bench_dp.py [--repeats 7] [--threads N]``.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedlab.config.privacy_rules import GRAD_SAMPLE_MODES
from fedlab.fl.model import CNN, MLP
from fedlab.trackers.privacy.dpsgd import PrivateTraining, make_private_training, private_training
from fedlab.trackers.privacy.per_sample import GRAPHS, pad_batch

BATCH = 32
LR = 0.05
NOISE = 1.0
CLIP = 1.0

warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Optimal order is the")


def digits() -> TensorDataset:
    """load_digits as float images in [0, 1], shape (1797, 1, 8, 8)."""
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    return TensorDataset(x, y)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "MLP 64-128-10": lambda: MLP((1, 8, 8), 10, hidden=(128,)),
    "CNN (16, 32) + GroupNorm": lambda: CNN((1, 8, 8), 10, channels=(16, 32)),
}


Phases = dict[str, float]


def _timed_epoch(loader, model, criterion, optimizer, dp=None) -> Phases:
    """One epoch, timing data loading, forward (incl. loss), backward and optimizer step
    (``compiled``: its per-sample pass, forward and backward in one call, under backward)."""
    t = {"load": 0.0, "forward": 0.0, "backward": 0.0, "step": 0.0}
    compiled = dp is not None and dp.grad_sample_mode == "compiled"
    step = optimizer.step
    if compiled:  # fit_batch calls Opacus' step itself: time it there

        def timed_step() -> None:
            started = time.perf_counter()
            step()
            t["step"] += time.perf_counter() - started

        optimizer.step = timed_step
    it = iter(loader)
    while True:
        a = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        b = time.perf_counter()
        t["load"] += b - a
        if dp is not None and len(y) == 0:  # empty Poisson batch: noise-only release
            dp.noise_only_step()
            if not compiled:  # (timed_step times it otherwise)
                t["step"] += time.perf_counter() - b
            continue
        if compiled:
            stepped = t["step"]
            dp.fit_batch(x, y)
            t["backward"] += time.perf_counter() - b - (t["step"] - stepped)
            continue
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), y)
        c = time.perf_counter()
        loss.backward()
        d = time.perf_counter()
        optimizer.step()
        e = time.perf_counter()
        t["forward"] += c - b
        t["backward"] += d - c
        t["step"] += e - d
    if compiled:
        optimizer.step = step
    return t


def non_private_runner(make_model: Callable[[], nn.Module],
                       dataset: TensorDataset) -> Callable[[], Phases]:
    """A plain PyTorch loop (shuffled loader, same batch size); returns a run-one-epoch fn."""
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    loss_fn = nn.CrossEntropyLoss()
    return lambda: _timed_epoch(loader, model, loss_fn, opt)


def private_runner(make_model: Callable[[], nn.Module], dataset: TensorDataset,
                   mode: str) -> tuple[Callable[[], Phases], PrivateTraining]:
    """DP-SGD via fedlab.trackers.privacy.dpsgd (Poisson sampling, same expected batch size)."""
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    dp = make_private_training(model, opt, DataLoader(dataset, batch_size=BATCH),
                               noise_multiplier=NOISE, max_grad_norm=CLIP,
                               grad_sample_mode=mode, seed=0)
    return (lambda: _timed_epoch(dp.data_loader, dp.model, dp.criterion, dp.optimizer, dp)), dp


def correctness_error(make_model: Callable[[], nn.Module], dataset: TensorDataset,
                      mode: str) -> float:
    """Max |DP update - hand-computed clipped per-sample update| on a fixed batch, no noise."""
    torch.manual_seed(0)
    model = make_model()
    reference = copy.deepcopy(model)
    x, y = dataset.tensors[0][:BATCH], dataset.tensors[1][:BATCH]
    clip = 0.1  # small, so most per-sample gradients are actually clipped
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    with private_training(model, opt, DataLoader(dataset, batch_size=BATCH), noise_multiplier=0.0,
                          max_grad_norm=clip, grad_sample_mode=mode, seed=0) as dp:
        dp.fit_batch(x, y)
        expected = dp.expected_batch_size
    total = [torch.zeros_like(p) for p in reference.parameters()]
    for i in range(len(y)):
        loss = nn.functional.cross_entropy(reference(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
        for t, g in zip(total, grads, strict=True):
            t += g * min(1.0, clip / (norm + 1e-6))
    return max(
        float(((p0 - p.detach()) - t / expected).abs().max())
        for p0, p, t in zip(before, model.parameters(), total, strict=True)
    )


class FuncDPSGD:
    """DP-SGD with ``torch.func`` per-sample gradients (the attempt, not fedlab's path).

    Per Poisson batch: per-sample gradients of the summed loss by ``vmap(grad)``, each scaled
    to norm <= clip, summed, Gaussian noise of std ``noise * clip`` added, divided by the
    expected batch size (Opacus' convention), one SGD step. ``compiled`` wraps the
    per-sample-gradient-and-clip function in ``torch.compile(dynamic=True)`` (Poisson batch
    sizes vary, so static shapes would recompile per size). ``bucket`` > 0 instead pads each
    Poisson batch with zero-weight rows up to the next multiple of ``bucket`` and compiles
    static shapes: one graph per bucket (about six for batches of 32 +- 3 sigma) instead of a
    recompile for every new size up to the limit of 8 and eager after it. A padded row's
    clipped gradient is multiplied by 0, so the sum, and the privacy of the step, are those
    of the real batch.
    """

    def __init__(self, model: nn.Module, dataset: TensorDataset, noise: float, clip: float,
                 compiled: bool = False, lr: float = LR, bucket: int = 0) -> None:
        from torch.func import functional_call, grad, vmap

        self.model, self.noise, self.clip, self.lr = model, noise, clip, lr
        self.x, self.y = dataset.tensors
        self.rate = BATCH / len(self.y)
        self.generator = torch.Generator().manual_seed(0)
        self.names = [n for n, _ in model.named_parameters()]
        self.bucket = bucket

        def loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(model, params, (x.unsqueeze(0),))
            return nn.functional.cross_entropy(out, y.unsqueeze(0))

        def clipped_sum(params: dict, x: torch.Tensor, y: torch.Tensor,
                        weight: torch.Tensor) -> list[torch.Tensor]:
            grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
            flat = [grads[n].reshape(len(y), -1) for n in self.names]
            norms = torch.cat(flat, dim=1).norm(dim=1)
            scale = (self.clip / (norms + 1e-6)).clamp(max=1.0) * weight
            return [torch.einsum("b,b...->...", scale, grads[n]) for n in self.names]

        if bucket:
            from torch._dynamo import config as dynamo_config

            dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, GRAPHS)
        self.clipped_sum = (
            torch.compile(clipped_sum, dynamic=not bucket) if compiled else clipped_sum
        )

    def fit_batch(self, x: torch.Tensor, y: torch.Tensor, noise: bool = True) -> None:
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        if self.bucket and len(y):
            x, y, weight = pad_batch(x, y, self.bucket)  # fedlab's own padding
        else:
            weight = torch.ones(len(y))
        summed = self.clipped_sum(params, x, y, weight) if len(y) else [torch.zeros_like(p)
                                                                        for p in params.values()]
        expected = self.rate * len(self.y)
        with torch.no_grad():
            for p, g in zip(self.model.parameters(), summed, strict=True):
                if noise:
                    g = g + torch.normal(0.0, self.noise * self.clip, p.shape,
                                         generator=self.generator)
                p -= self.lr * g / expected

    def epoch(self) -> Phases:
        """One epoch of Poisson batches (as many as Opacus' DPDataLoader draws)."""
        t = {"load": 0.0, "forward": 0.0, "backward": 0.0, "step": 0.0}
        for _ in range(-(-len(self.y) // BATCH)):
            a = time.perf_counter()
            mask = torch.rand(len(self.y), generator=self.generator) < self.rate
            x, y = self.x[mask], self.y[mask]
            b = time.perf_counter()
            self.fit_batch(x, y)
            t["load"] += b - a
            t["backward"] += time.perf_counter() - b  # forward, backward and step together
        return t


def func_correctness_error(make_model: Callable[[], nn.Module], dataset: TensorDataset,
                           compiled: bool, bucket: int = 0) -> float:
    """As :func:`correctness_error`, for :class:`FuncDPSGD` (noise off, clip 0.1, lr 1)."""
    torch.manual_seed(0)
    model = make_model()
    reference = copy.deepcopy(model)
    x, y = dataset.tensors[0][: BATCH - 3], dataset.tensors[1][: BATCH - 3]  # padded if bucketed
    clip = 0.1
    dp = FuncDPSGD(model, dataset, 0.0, clip, compiled, lr=1.0, bucket=bucket)
    before = [p.detach().clone() for p in model.parameters()]
    dp.fit_batch(x, y, noise=False)
    expected = dp.rate * len(dataset)
    total = [torch.zeros_like(p) for p in reference.parameters()]
    for i in range(len(y)):
        loss = nn.functional.cross_entropy(reference(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(reference.parameters()))
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
        for t, g in zip(total, grads, strict=True):
            t += g * min(1.0, clip / (norm + 1e-6))
    return max(
        float(((p0 - p.detach()) - t / expected).abs().max())
        for p0, p, t in zip(before, model.parameters(), total, strict=True)
    )


#: attempt -> (compiled, bucket)
FUNC_ATTEMPTS = {"torch.func": (False, 0), "torch.func + compile": (True, 0),
                 "torch.func + compile, batches padded to 8s": (True, 8)}


def main(quick: bool = False, repeats: int | None = None, threads: int = 1,
         modes: list[str] | None = None, models: list[str] | None = None) -> dict:
    """Every mode and attempt per model: rows of the table (JSON-able) and the table."""
    repeats = repeats or (2 if quick else 9)
    modes = list(GRAD_SAMPLE_MODES) if modes is None else modes
    torch.set_num_threads(threads)
    args = argparse.Namespace(repeats=repeats, modes=modes)
    rows: list[dict] = []
    dataset = digits()
    table = ["| model | mode | epoch (ms) | x non-private | load | forward | backward | step "
             "| DP steps/epoch | max abs err vs loop |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, make_model in MODELS.items():
        if models and not any(m in name for m in models):
            continue
        runners: dict[str, Callable[[], Phases]] = {"non-private": non_private_runner(make_model,
                                                                                    dataset)}
        sessions: dict[str, PrivateTraining] = {}
        errors: dict[str, str] = {}
        for mode in args.modes:
            try:
                runners[mode], sessions[mode] = private_runner(make_model, dataset, mode)
            except Exception as exc:  # report unsupported combinations instead of dying
                errors[mode] = f"{type(exc).__name__}: {exc}"
        funcs: dict[str, FuncDPSGD] = {}
        for attempt, (compiled, bucket) in FUNC_ATTEMPTS.items():
            torch.manual_seed(0)
            funcs[attempt] = FuncDPSGD(make_model(), dataset, NOISE, CLIP, compiled,
                                       bucket=bucket)
            runners[attempt] = funcs[attempt].epoch
        results: dict[str, list[Phases]] = {k: [] for k in runners}
        for r in range(args.repeats + 1):
            for key, run in runners.items():
                phases = run()
                if r > 0:
                    results[key].append(phases)
        base = min(sum(p.values()) for p in results["non-private"])
        for key, runs in results.items():
            fastest = min(runs, key=lambda p: sum(p.values()))
            total = sum(fastest.values())
            ratio = total / base
            phase = {k: v * 1e3 for k, v in fastest.items()}
            if key == "non-private":
                steps, err = f"{-(-len(dataset) // BATCH)}", "-"
            elif key in funcs:
                steps = f"{-(-len(dataset) // BATCH)}"
                err = f"{func_correctness_error(make_model, dataset, *FUNC_ATTEMPTS[key]):.1e}"
            else:
                steps = f"{sessions[key].steps // (args.repeats + 1)}"
                sessions[key].close()
                err = f"{correctness_error(make_model, dataset, key):.1e}"
            table.append(
                f"| {name} | {key} | {total * 1e3:.1f} | {ratio:.2f} | "
                f"{phase['load']:.1f} | {phase['forward']:.1f} | {phase['backward']:.1f} | "
                f"{phase['step']:.1f} | {steps} | {err} |"
            )
            rows.append({"model": name, "mode": key, "epoch_ms": total * 1e3, "ratio": ratio,
                         "phases_ms": phase, "max_abs_error": None if err == "-" else float(err)})
        for mode, msg in errors.items():
            table.append(f"| {name} | {mode} | failed: {msg} | | | | | | | |")
    return {"rows": rows, "table": "\n".join(table), "repeats": repeats, "threads": threads,
            "statistic": "fastest epoch of the repeats, settings interleaved round-robin"}


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed epochs per setting")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steadier on a shared box)")
    parser.add_argument("--modes", nargs="*", default=list(GRAD_SAMPLE_MODES))
    parser.add_argument("--models", nargs="*", help="substrings of model names (default all)")
    args = parser.parse_args()
    dataset = digits()
    print(f"load_digits: {len(dataset)} samples, batch {BATCH}, one epoch per measurement; "
          f"torch {torch.__version__}, {args.threads} thread(s); {args.repeats} "
          f"timed epochs after 1 warm-up, settings interleaved round-robin; times are the fastest "
          f"epoch (least disturbed by other load), ratio = fastest DP / fastest non-private; "
          f"noise {NOISE}, clip {CLIP}\n")
    print(main(repeats=args.repeats, threads=args.threads, modes=args.modes,
               models=args.models)["table"])


if __name__ == "__main__":
    cli()
