"""The fairness audit of the final global model: Fairlearn's ``MetricFrame`` over the union of
the clients' local test splits, grouped by who holds the examples.

Each example of a client's test split carries its client's groups (sensitive features):

* ``client``: the client id (per-client accuracy and loss; the worst-off 10 % of clients);
* ``dominant_label``: the class most of the client's *training* data has (under label skew,
  are the clients that mostly hold one digit served worse?);
* ``data_size``: ``small`` / ``medium`` / ``large``, the client's rank by training examples
  in three equal-count groups (quantity skew);
* ``region`` (``carbon.regions`` set) and ``device`` (``devices.mix`` set): the clients'
  simulated grid region and edge device, dealt by :mod:`fedlab.trackers.assign` exactly as the
  carbon and devices trackers deal them (their own functions are called, the rule is not
  repeated), and read even with ``carbon=off``;
* a sensitive column of the dataset itself: none of fedlab's datasets has one (digits, iris,
  the FedProx synthetic data, mnist, cifar10 and femnist carry no demographic attribute), so
  the record says so instead of inventing one.

For every grouping the record keeps ``by_group`` (accuracy, mean cross-entropy loss, examples),
``overall``, and Fairlearn's ``difference()`` (largest minus smallest group value) and
``ratio()`` (smallest over largest). Selection rate is not used: it is a binary-decision
metric, meaningless for a multiclass classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedlab.fl.evaluation import worst_count

if TYPE_CHECKING:
    import torch

    from fedlab.config.experiment import Experiment
    from fedlab.data.partition import FederatedData

METRICS = ("accuracy", "loss")
#: Clients audited at most; beyond, a seeded sample of this many (generating and scoring
#: 10,000 lazily generated clients' test splits would cost minutes at the end of a run).
MAX_AUDITED = 1000
SIZE_GROUPS = ("small", "medium", "large")
NO_SENSITIVE_COLUMN = (
    "none of fedlab's datasets (digits, iris, synthetic, mnist, cifar10, femnist) carries a "
    "sensitive attribute: groups are the clients' own (client, label skew, size, region, device)"
)


@dataclass(frozen=True)
class Predictions:
    """The final model on every client's test split, one entry per example."""

    y_true: np.ndarray
    y_pred: np.ndarray
    loss: np.ndarray  # per-example cross-entropy (nats)
    client: np.ndarray  # the client holding the example


def audited_clients(num_clients: int, seed: int) -> np.ndarray:
    """The clients the audit scores: all of them, or a seeded sample of :data:`MAX_AUDITED`."""
    if num_clients <= MAX_AUDITED:
        return np.arange(num_clients)
    rng = np.random.default_rng([seed, 20])
    return np.sort(rng.choice(num_clients, MAX_AUDITED, replace=False))


def client_groups(
    exp: Experiment, fed: FederatedData, audited: np.ndarray | None = None
) -> dict[str, list[str]]:
    """Sensitive feature -> each client's group, for every client (see the module docstring).

    ``region`` and ``device`` appear only where the config places clients (``carbon.regions``,
    ``devices.mix``); an invalid placement raises the carbon / devices trackers' own
    :class:`~fedlab.config.schema.ConfigError` (called from ``check`` before anything is written).
    """
    from fedlab.trackers.carbon.intensity import assign_regions
    from fedlab.trackers.devices.profiles import client_devices

    cfg = exp.cfg
    n = fed.num_clients
    dominant = [""] * n  # only the audited clients' data are generated
    for pid in range(n) if audited is None else audited:
        labels = fed.client(int(pid))[0].y
        dominant[pid] = str(int(np.argmax(np.bincount(labels, minlength=fed.num_classes))))
    groups: dict[str, list[str]] = {
        "client": [str(pid) for pid in range(n)],
        "dominant_label": dominant,
        "data_size": size_groups([len(idx) for idx in fed.client_train]),
    }
    if cfg.carbon.regions is not None:
        groups["region"] = assign_regions(n, cfg.carbon.regions, cfg.seed)
    if cfg.devices.enabled:
        groups["device"] = client_devices(cfg.devices, n, cfg.seed)
    return groups


def size_groups(sizes: list[int]) -> list[str]:
    """Each client's size tercile: clients ranked by examples (ties by id) and cut into
    three groups of (nearly) equal count; fewer than three clients give fewer groups."""
    order = sorted(range(len(sizes)), key=lambda pid: (sizes[pid], pid))
    out = [""] * len(sizes)
    parts = np.array_split(np.asarray(order, dtype=int), min(3, len(sizes)) or 1)
    names = SIZE_GROUPS if len(parts) == 3 else SIZE_GROUPS[:: 2][: len(parts)]
    for name, part in zip(names, parts, strict=True):
        for pid in part:
            out[int(pid)] = name
    return out


def predict(
    model: torch.nn.Module,
    fed: FederatedData,
    batch_size: int = 1024,
    clients: np.ndarray | None = None,
) -> Predictions:
    """``model``'s predictions and per-example losses on each (audited) client's local test
    split."""
    import torch
    from torch.nn.functional import cross_entropy

    model.eval()
    ys, preds, losses, owners = [], [], [], []
    with torch.no_grad():
        for pid in range(fed.num_clients) if clients is None else clients:
            pid = int(pid)
            index = fed.client_test[pid]
            if not len(index):
                continue
            data = fed.client(pid)[1]
            x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
            for start in range(0, len(y), batch_size):
                logits = model(x[start : start + batch_size])
                target = y[start : start + batch_size]
                preds.append(logits.argmax(dim=1).numpy())
                losses.append(cross_entropy(logits, target, reduction="none").numpy())
            ys.append(data.y)
            owners.append(np.full(len(index), pid))
    if not ys:
        empty = np.zeros(0, dtype=np.int64)
        return Predictions(empty, empty, np.zeros(0), empty)
    return Predictions(
        np.concatenate(ys),
        np.concatenate(preds),
        np.concatenate(losses).astype(np.float64),
        np.concatenate(owners),
    )


def _accuracy(y_true: Any, y_pred: Any) -> float:
    """MetricFrame metric: the fraction correct (plain numpy: sklearn's ``accuracy_score``
    validates its arguments on every group, which cost more than the audit itself)."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def _mean_loss(y_true: Any, y_pred: Any, losses: Any) -> float:
    """MetricFrame metric: the mean of the per-example losses it slices for the group."""
    return float(np.mean(losses))


def _natural(group: Any) -> tuple[int, Any]:
    text = str(group)
    return (0, int(text)) if text.isdigit() else (1, text)


def _number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def metric_frame(pred: Predictions, feature: np.ndarray, name: str) -> dict[str, Any]:
    """One grouping's Fairlearn ``MetricFrame``: by group, overall, difference, ratio."""
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count
    frame = MetricFrame(
        metrics={"accuracy": _accuracy, "loss": _mean_loss, "count": count},
        y_true=pred.y_true,
        y_pred=pred.y_pred,
        sensitive_features=pd.Series(feature, name=name),
        sample_params={"loss": {"losses": pred.loss}},
    )
    by_group = frame.by_group
    difference, ratio = frame.difference(), frame.ratio()
    group_min, group_max = frame.group_min(), frame.group_max()
    return {
        "groups": len(by_group),
        "by_group": {
            str(group): {
                "accuracy": _number(by_group.loc[group, "accuracy"]),
                "loss": _number(by_group.loc[group, "loss"]),
                "examples": int(by_group.loc[group, "count"]),
            }
            for group in sorted(by_group.index, key=_natural)
        },
        "overall": {m: _number(frame.overall[m]) for m in METRICS},
        "difference": {m: _number(difference[m]) for m in METRICS},
        "ratio": {m: _number(ratio[m]) for m in METRICS},
        "group_min": {m: _number(group_min[m]) for m in METRICS},
        "group_max": {m: _number(group_max[m]) for m in METRICS},
    }


def worst_clients(by_group: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy of the worst ceil(10 %) clients (at least one), each counted once."""
    values = sorted(g["accuracy"] for g in by_group.values() if g["accuracy"] is not None)
    if not values:
        return {"mean": None, "clients": 0}
    worst = worst_count(len(values))  # the rule of the record's personalized_accuracy
    return {"mean": float(np.mean(values[:worst])), "clients": worst}


def fairness_audit(exp: Experiment, fed: FederatedData, model: torch.nn.Module) -> dict[str, Any]:
    """The audit section's ``fairness`` part for the final ``model`` (module docstring)."""
    audited = audited_clients(fed.num_clients, exp.cfg.seed)
    pred = predict(model, fed, clients=audited)
    if not len(pred.y_true):
        return {"skipped": "no client has a local test split (dataset.client_test_fraction=0)"}
    groups = client_groups(exp, fed, audited)
    by = {
        name: metric_frame(pred, np.asarray(per_client)[pred.client], name)
        for name, per_client in groups.items()
    }
    return {
        "evaluated_on": "the union of the clients' local test splits, final global model",
        "examples": len(pred.y_true),
        "clients": len(np.unique(pred.client)),
        "clients_audited": f"{len(audited)} of {fed.num_clients}"
        + ("" if len(audited) == fed.num_clients else f" (a seeded sample, at most {MAX_AUDITED})"),
        "overall": by["client"]["overall"],
        "worst_10pct_client_accuracy": worst_clients(by["client"]["by_group"]),
        "sensitive_column": None,
        "sensitive_column_note": NO_SENSITIVE_COLUMN,
        "by": by,
    }
