"""Explanations of the final global model: Captum's Integrated Gradients (Sundararajan et al.,
ICML 2017), on the server's test split and on each client's local test split.

* **What is attributed**: the logit of each example's *true* class, from a baseline input
  (``zeros``: a black image / all-zero features; ``mean``: the mean input of the server's test
  split) to the example, with ``ig_steps`` Gauss-Legendre steps. IG is complete: an example's
  attributions sum to ``f(x) - f(baseline)``; Captum's convergence delta is how far the
  numerical integral is from that, recorded as ``max_abs_delta``.
* **Per class**: the mean attribution of the server's examples of each class (at most
  ``max_examples``, a seeded sample), saved as ``attributions.safetensors`` and, for image
  data (an input of rank 2 or 3, or the 64 features of flattened digits), drawn per class as
  ``attributions.png``: red pixels raise the class's logit, blue ones lower it.
* **Across clients**: each client's attribution profile (mean absolute attribution per feature
  over at most ``client_examples`` of its local test examples) is compared with the server's by
  cosine distance, and the clients with each other (mean pairwise cosine distance): under label
  skew the model can rely on different features for different clients' data.

A model IG cannot explain is skipped with the reason recorded, never a failed run: the hybrid
quantum model (``model=qnn``: its quantum layer computes no gradient with respect to its
inputs when features feed the qubits directly, and simulating ``ig_steps`` circuits per example
would dwarf the run), non-finite weights, or anything Captum raises on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedlab.record.run_dir import atomic_path, save_figure

if TYPE_CHECKING:
    import torch

    from fedlab.data.partition import FederatedData

ATTRIBUTIONS = "attributions.safetensors"
PICTURE = "attributions.png"
BASELINES = ("zeros", "mean")
#: Model targets IG is not run on, and why (module docstring).
INTERNAL_BATCH = 1024  # rows of Captum's (examples x steps) batch per forward pass


def skip_reason(model: Any) -> str | None:
    """Why ``model`` (a module or its class) is not explained, or None: a model declares it
    itself with ``unexplained_reason`` (the hybrid quantum model does)."""
    return getattr(model, "unexplained_reason", None)


def image_shape(input_shape: tuple[int, ...], dataset: str) -> tuple[int, int] | None:
    """(height, width) of a per-class picture, or None for tabular data."""
    if len(input_shape) in (2, 3):
        return int(input_shape[-2]), int(input_shape[-1])
    if dataset == "digits" and math.prod(input_shape) == 64:  # digits with as_image=false
        return 8, 8
    return None


def sample(n: int, limit: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of at most ``limit`` of ``n`` indices (all if fewer)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def integrated_gradients(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    baseline: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's IG of ``model``'s logit ``target`` for each row of ``x`` from ``baseline``;
    the attributions (shape of ``x``) and the convergence delta per example
    (sum of attributions minus ``f(x) - f(baseline)``)."""
    from captum.attr import IntegratedGradients

    model.eval()
    attributions, delta = IntegratedGradients(model).attribute(
        x,
        baselines=baseline,
        target=target,
        n_steps=steps,
        internal_batch_size=INTERNAL_BATCH,
        return_convergence_delta=True,
    )
    return attributions.detach(), delta.detach()


def _baseline(kind: str, x: np.ndarray) -> np.ndarray:
    """The IG baseline for examples like ``x``: zeros, or the mean of ``x``."""
    return np.zeros_like(x[:1]) if kind == "zeros" else x.mean(axis=0, keepdims=True)


def _profile(attributions: np.ndarray) -> np.ndarray:
    """Mean absolute attribution per feature: what a model relies on, whatever the sign."""
    return np.abs(attributions.reshape(len(attributions), -1)).mean(axis=0)


def explain(
    model: torch.nn.Module,
    fed: FederatedData,
    *,
    steps: int,
    max_examples: int,
    client_examples: int,
    max_clients: int,
    baseline: str,
    seed: int,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """The audit section's ``explanations`` part; writes ``attributions.safetensors`` (and
    ``attributions.png`` for images) into ``run_dir`` when given."""
    import torch
    from scipy.spatial.distance import cdist, pdist

    if not all(torch.isfinite(p).all() for p in model.state_dict().values()):
        return {"skipped": "the final model has non-finite weights (the run diverged)"}
    for param in model.parameters():  # IG needs gradients with respect to inputs only
        param.requires_grad_(False)
    index = sample(len(fed.test.y), max_examples, seed)
    x_np, y_np = fed.test.x[index], fed.test.y[index]
    base_np = _baseline(baseline, fed.test.x)
    base = torch.from_numpy(base_np)
    try:
        attr_t, delta_t = integrated_gradients(
            model, torch.from_numpy(x_np), torch.from_numpy(y_np), base, steps
        )
    except Exception as err:  # Captum or the model cannot differentiate: recorded, not fatal
        lines = str(err).strip().splitlines() or [type(err).__name__]
        return {"skipped": f"Integrated Gradients failed on this model: {lines[0][:300]}"}
    attr, delta = attr_t.numpy().astype(np.float64), delta_t.numpy().astype(np.float64)
    if not np.isfinite(attr).all():
        return {"skipped": "Integrated Gradients gave non-finite attributions"}
    k = fed.num_classes
    shape = tuple(fed.input_shape)
    class_mean = np.zeros((k, *shape))
    class_count = np.bincount(y_np, minlength=k)
    for c in range(k):
        if class_count[c]:
            class_mean[c] = attr[y_np == c].mean(axis=0)
    global_profile = _profile(attr)

    ids, profiles = [], []
    with_data = [pid for pid, idx in enumerate(fed.client_test) if len(idx)]
    chosen = [with_data[i] for i in sample(len(with_data), max_clients, seed)]
    for pid in chosen:
        data = fed.client(pid)[1]
        pick = sample(len(data.y), client_examples, seed + 1 + pid)
        client_attr, _ = integrated_gradients(
            model, torch.from_numpy(data.x[pick]), torch.from_numpy(data.y[pick]), base, steps
        )
        ids.append(pid)
        profiles.append(_profile(client_attr.numpy().astype(np.float64)))
    clients: dict[str, Any] = {"clients": len(ids)}
    if ids:
        matrix = np.stack(profiles)
        from_global = cdist(matrix, global_profile[None, :], "cosine")[:, 0]
        clients.update(
            examples_per_client=client_examples,
            distance="cosine distance between mean |attribution| profiles",
            from_global={str(pid): float(d) for pid, d in zip(ids, from_global, strict=True)},
            mean_from_global=float(from_global.mean()),
            max_from_global=float(from_global.max()),
            mean_pairwise=float(pdist(matrix, "cosine").mean()) if len(ids) > 1 else None,
        )
    hw = image_shape(shape, fed.name)
    section: dict[str, Any] = {
        "method": "integrated gradients (captum), logit of the true class",
        "baseline": baseline,
        "ig_steps": steps,
        "examples": len(y_np),
        "max_abs_delta": float(np.abs(delta).max()),
        "max_abs_output_change": float(np.abs(attr.reshape(len(attr), -1).sum(axis=1)).max()),
        "per_class": {
            str(c): {
                "examples": int(class_count[c]),
                "mean_total": float(class_mean[c].sum()),
                "top_features": [int(i) for i in np.argsort(-class_mean[c].ravel())[:5]],
            }
            for c in range(k)
            if class_count[c]
        },
        "top_features": [int(i) for i in np.argsort(-global_profile)[:10]],
        "across_clients": clients,
        "file": ATTRIBUTIONS,
        "picture": PICTURE if hw else None,
    }
    if run_dir is not None:
        save_attributions(run_dir / ATTRIBUTIONS, {
            "class_mean": class_mean.astype(np.float32),
            "class_count": class_count.astype(np.int64),
            "baseline": base_np[0].astype(np.float32),
            "global_profile": global_profile.astype(np.float32),
            "client_ids": np.asarray(ids, dtype=np.int64),
            "client_profiles": (np.stack(profiles) if profiles
                                else np.zeros((0, global_profile.size))).astype(np.float32),
        })
        if hw:
            plot_attributions(class_mean, class_count, hw, run_dir / PICTURE)
    return section


def save_attributions(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write the attribution arrays as safetensors (no pickle on reading)."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))


def load_attributions(path: Path) -> dict[str, np.ndarray]:
    """What :func:`save_attributions` wrote."""
    from safetensors.numpy import load_file

    return load_file(str(path))


def plot_attributions(
    class_mean: np.ndarray, class_count: np.ndarray, hw: tuple[int, int], path: Path
) -> None:
    """One heatmap per class of its mean attribution (channels summed: a pixel's share of
    the logit), on one symmetric colour scale so classes compare."""
    from matplotlib.figure import Figure

    k = len(class_mean)
    maps = class_mean.reshape(k, -1, *hw).sum(axis=1)
    vmax = float(np.abs(maps).max()) or 1.0
    cols = min(k, 5)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(2.1 * cols + 0.8, 2.2 * rows))
    # one extra narrow column holds the colour bar: tight_layout handles only subplot grids
    axes = fig.subplots(rows, cols + 1, squeeze=False,
                        gridspec_kw={"width_ratios": [1.0] * cols + [0.08]})
    image = None
    for c, ax in enumerate(axes[:, :cols].flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if c >= k or not class_count[c]:
            ax.set_axis_off()
            if c < k:
                ax.set_title(f"class {c} (no examples)", fontsize=9)
            continue
        image = ax.imshow(maps[c], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(f"class {c} (n={int(class_count[c])})", fontsize=9)
    for ax in axes[1:, cols]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, cax=axes[0, cols], label="attribution")
    fig.suptitle("Integrated Gradients: mean attribution to the true class's logit")
    save_figure(fig, path)
