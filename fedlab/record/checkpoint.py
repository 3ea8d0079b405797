"""Checkpoints: everything a run needs to continue exactly after its last complete round.

One file, ``checkpoint.safetensors`` in the run directory, rewritten atomically after every
round: the global model and the strategy's array state (server optimizer moments of
FedAdam/FedYogi/FedAdagrad, FedAvgM's momentum, ...) as tensors, and the rest (round number,
the DP wrapper's adaptive clipping norm, and every tracker's ``state_dict()`` under its name:
privacy accountants, carbon ledger, device totals, a user's tracker) as JSON in the
safetensors metadata. safetensors holds only tensors and strings, so loading a checkpoint can
never execute code (unlike a pickle).

Nothing random needs saving: the schedule, the clients' training and the DP noise are all
seeded from (seed, round), so a resumed round draws exactly what the original would have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedlab.fl.model import ndarray_of
from fedlab.record.run_dir import atomic_path

FILE = "checkpoint.safetensors"
# Scalar state of Flower's strategies and DP wrappers that changes during a run.
_SCALARS = ("clipping_norm",)


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    server_round: int
    model: dict[str, torch.Tensor]
    strategy: dict[str, torch.Tensor]
    layout: dict[str, Any]  # how to put ``strategy`` back (see restore_strategy)
    state: dict[str, Any]


def _layers(strategy: Any) -> list[tuple[str, Any]]:
    """The strategy and, for a DP wrapper, the strategy it wraps."""
    inner = getattr(strategy, "strategy", None)
    return [("outer", strategy)] + ([("inner", inner)] if inner is not None else [])


def strategy_state(strategy: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The array and scalar state of a Flower strategy, found generically.

    Public attributes holding arrays (a dict or list of numpy arrays, or an ArrayRecord) are
    state by construction: hyperparameters are scalars from the config.
    """
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    for prefix, obj in _layers(strategy):
        for name, value in vars(obj).items():
            if name.startswith("_"):
                continue
            key = f"{prefix}.{name}"
            if isinstance(value, ArrayRecord):
                value = {k: ndarray_of(v) for k, v in value.items()}
                layout[key] = "arrayrecord"
            elif (
                isinstance(value, dict)
                and value
                and all(isinstance(v, np.ndarray) for v in value.values())
            ):
                layout[key] = "dict"
            elif (
                isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value)
            ):
                value = {str(i): v for i, v in enumerate(value)}
                layout[key] = "list"
            elif name in _SCALARS:
                layout[key] = float(value)
                continue
            else:
                continue
            for k, v in value.items():
                tensors[f"{key}/{k}"] = torch.from_numpy(np.array(v))  # a copy: no sharing
    return tensors, layout


def restore_strategy(strategy: Any, tensors: dict[str, torch.Tensor], layout: dict) -> None:
    """Put back what :func:`strategy_state` captured."""
    objects = dict(_layers(strategy))
    for key, kind in layout.items():
        prefix, name = key.split(".", 1)
        target = objects[prefix]
        if not isinstance(kind, str):
            setattr(target, name, kind)
            continue
        entries = {
            k.split("/", 1)[1]: v.numpy() for k, v in tensors.items() if k.split("/", 1)[0] == key
        }
        if kind == "list":
            setattr(target, name, [entries[str(i)] for i in range(len(entries))])
        elif kind == "arrayrecord":
            setattr(target, name, ArrayRecord({k: Array(v) for k, v in entries.items()}))
        else:
            setattr(target, name, entries)


def save(
    run_dir: Path,
    server_round: int,
    arrays: ArrayRecord,
    strategy: Any,
    state: dict[str, Any],
) -> None:
    """Write the checkpoint of ``server_round`` (atomically, replacing the previous one)."""
    tensors = {f"model/{k}": v for k, v in arrays.to_torch_state_dict().items()}
    strategy_tensors, layout = strategy_state(strategy)
    tensors |= {f"strategy/{k}": v for k, v in strategy_tensors.items()}
    metadata = {
        "round": str(server_round),
        "strategy_layout": json.dumps(layout),
        "state": json.dumps(state),
    }
    from safetensors.torch import save_file

    with atomic_path(run_dir / FILE) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load(run_dir: Path) -> Checkpoint:
    """Read the checkpoint in ``run_dir``."""
    from safetensors import safe_open

    with safe_open(str(run_dir / FILE), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + "/")}

    return Checkpoint(
        server_round=int(metadata["round"]),
        model=part("model"),
        strategy=part("strategy"),
        layout=json.loads(metadata["strategy_layout"]),
        state=json.loads(metadata["state"]),
    )
