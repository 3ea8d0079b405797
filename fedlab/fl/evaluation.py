"""Per-client accuracy as personalized-FL papers report it: the mean over clients, the worst
10 % (the mean of the lowest-scoring tenth of the clients, at least one: Ditto's "worst 10 %"),
and the spread, for the model each client would actually use and for the global model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: The worst-off share of the clients (Ditto's "worst 10 %").
WORST_SHARE = 0.1


def worst_count(n: int) -> int:
    """How many clients the worst 10 % of ``n`` are: ceil(10 %), at least one."""
    return max(1, math.ceil(WORST_SHARE * n))


def spread(values: Sequence[float], weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Mean (unweighted over clients), example-weighted mean, worst-10 % mean, standard
    deviation (population), min, max and the number of clients of ``values``."""
    n = len(values)
    if n == 0:
        return {"clients": 0}
    # sums taken in sorted order: the same figures whatever order the clients replied in
    w = list(weights) if weights is not None else [1.0] * n
    pairs = sorted(zip(values, w, strict=True))
    ordered = [v for v, _ in pairs]
    worst = ordered[: worst_count(n)]
    mean = math.fsum(ordered) / n
    return {
        "mean": mean,
        "weighted_mean": math.fsum(v * wi for v, wi in pairs) / math.fsum(w for _, w in pairs),
        "worst_10pct": math.fsum(worst) / len(worst),
        "std": math.sqrt(math.fsum((v - mean) ** 2 for v in ordered) / n),
        "min": ordered[0],
        "max": ordered[-1],
        "clients": n,
    }


def personalized_section(rows: Sequence[Mapping[str, Any]], server_round: int) -> dict[str, Any]:
    """``results.json``'s ``personalized_accuracy``: the spread of each evaluated client's
    accuracy on its own test split with the model it would use (``personal_accuracy``) and, as
    ``global``, with the global model, over the round's successful evaluations."""
    ok = [r for r in rows if r["phase"] == "evaluate" and r["status"] == "ok"]
    weights = [r["num_examples"] for r in ok]
    personal = [r.get("personal_accuracy", r["accuracy"]) for r in ok]
    return {
        **spread(personal, weights),
        "round": server_round,
        "global": spread([r["accuracy"] for r in ok], weights),
    }
