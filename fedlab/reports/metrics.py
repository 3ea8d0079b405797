"""The numbers ``fedlab-compare`` puts side by side, and the Pareto fronts among them.

Two kinds of number: the reports' own (accuracy and loss, traffic, rounds, duration: every
run records them, whatever it tracks) and the :class:`~fedlab.trackers.base.Objective` of
each tracker of the compared runs. Both are ``Objective`` values, so one code path reads,
formats and averages them, and a user's tracker shows up in the table, the CSVs and the
fronts without an edit here. An objective with a ``front`` name is a cost that the chosen
``--metric`` is traded against.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedlab.record.reader import Run, number
from fedlab.reports.stats import ci_halfwidth, significantly_better
from fedlab.trackers.base import Objective, Tracker

# --------------------------------------------------------------------------------------
# Pareto front
# --------------------------------------------------------------------------------------


def pareto_front(
    points: Sequence[Sequence[float]], maximize: Sequence[bool] = (True, False)
) -> list[bool]:
    """For each point, whether it is Pareto-optimal (no other point dominates it).

    ``maximize[k]`` says whether objective ``k`` is to be maximized (else minimized); the
    default suits ``(accuracy, cost)``. Point ``q`` dominates ``p`` when ``q`` is at least
    as good in every objective and strictly better in one. Hence ties and duplicates: two
    identical points do not dominate each other, so both are on the front (a reader should
    see every run that achieves the best trade-off, not an arbitrary one of them); a point
    equal to another in one objective and worse in the other is dominated. O(n^2), which is
    nothing for the hundreds of runs a sweep has. Missing values must be left out by the
    caller: a NaN has no order, so it raises ``ValueError``.
    """
    signs = [1.0 if m else -1.0 for m in maximize]
    scored: list[list[float]] = []
    for point in points:
        if len(point) != len(signs):
            raise ValueError(f"point {tuple(point)} has {len(point)} values, expected {len(signs)}")
        if any(math.isnan(v) for v in point):
            raise ValueError(f"point {tuple(point)} has a NaN: leave runs without a value out")
        scored.append([s * float(v) for s, v in zip(signs, point, strict=True)])

    def dominates(q: list[float], p: list[float]) -> bool:
        return all(a >= b for a, b in zip(q, p, strict=True)) and q != p

    return [not any(dominates(q, p) for q in scored) for p in scored]


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def _own(name: str, *paths: tuple[str, ...], **kw: Any) -> Objective:
    """One of the reports' own metrics (``paths`` default to the top-level key ``name``)."""
    return Objective(name, paths or ((name,),), **kw)


#: What every run is judged by: the final centralized and federated evaluation.
QUALITY: tuple[Objective, ...] = (
    _own("accuracy", direction="max", header="accuracy", fmt=".4f"),
    _own("loss", header="loss", fmt=".4f"),
    _own("federated_accuracy", direction="max", fmt=".4f"),
    _own("federated_loss", fmt=".4f"),
)

#: Each client's accuracy with the model it would use (personalized FL; the global model
#: otherwise): the mean over clients and the mean of the worst 10 %. Recorded since the
#: personalized algorithms came, so last: older comparisons keep their columns' places.
PERSONALIZED: tuple[Objective, ...] = (
    _own("personalized_accuracy", ("personalized_accuracy", "mean"), direction="max",
         header="pers. acc", fmt=".4f", optional=True),
    _own("personalized_worst_10pct", ("personalized_accuracy", "worst_10pct"),
         direction="max", header="worst 10%", fmt=".4f", optional=True),
)

#: What every run spends, whatever it tracks: traffic, rounds, wall-clock time.
SPENT: tuple[Objective, ...] = (
    _own(
        "bytes",
        ("communication", "bytes_down"),
        ("communication", "bytes_up"),
        header="bytes",
        fmt="bytes",
    ),
    _own("bytes_down", ("communication", "bytes_down"), fmt=".0f"),
    _own("bytes_up", ("communication", "bytes_up"), fmt=".0f"),
    _own("rounds_completed", fmt=".0f"),
    _own("duration_s", header="duration s", fmt=".1f"),
)

#: ``--metric`` choices: whether each is maximized, and its column in ``rounds.csv``.
TARGETS: dict[str, tuple[bool, str]] = {
    "accuracy": (True, "central_accuracy"),
    "federated_accuracy": (True, "federated_accuracy"),
    "loss": (False, "central_loss"),
    "federated_loss": (False, "federated_loss"),
    "personalized_accuracy": (True, "personalized_accuracy"),
}


def tracker_union(runs: Iterable[Run]) -> list[type[Tracker]]:
    """The tracker classes of ``runs``, each once, in the order the runs name them."""
    return list(dict.fromkeys(cls for run in runs for cls in run.trackers))


def metrics_for(trackers: Sequence[type[Tracker]]) -> list[Objective]:
    """Every metric of a comparison of runs with ``trackers``, each name once.

    Order: quality, the trackers' objectives that every table shows, what every run spends,
    then the trackers' ``optional`` objectives. Columns that come and go with the runs stay
    at the end, so the others keep their places (and the columns of records made before
    trackers were pluggable keep theirs).
    """
    offered = [o for cls in trackers for o in cls.objectives]
    ordered = [
        *QUALITY,
        *(o for o in offered if not o.optional),
        *SPENT,
        *(o for o in offered if o.optional),
        *PERSONALIZED,
    ]
    first: dict[str, Objective] = {}
    for metric in ordered:
        first.setdefault(metric.name, metric)  # a tracker cannot redefine accuracy
    return list(first.values())


def metric_value(metric: Objective, run: Run) -> float | None:
    """The sum of ``run``'s ``results.json`` values at ``metric.paths``; None when any part
    is missing (half a total would read as a low cost)."""
    parts: list[float] = []
    for path in metric.paths:
        node: Any = run.results
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        value = number(node)
        if value is None:
            return None
        parts.append(value)
    return math.fsum(parts)


def human_bytes(value: float) -> str:
    """Bytes in decimal units (``12.3 MB``), as the carbon model counts GB (10^9 bytes)."""
    if abs(value) < 1000:
        return f"{value:.0f} B"
    for unit in ("kB", "MB"):
        value /= 1000
        if abs(value) < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} GB"


def formatted(metric: Objective, value: float) -> str:
    """``value`` as the table prints ``metric`` (its format spec, or decimal bytes)."""
    return human_bytes(value) if metric.fmt == "bytes" else format(value, metric.fmt)


# --------------------------------------------------------------------------------------
# Fronts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Front:
    """A trade-off: the ``--metric`` against one cost, minimized."""

    name: str  # "carbon" -> column pareto_carbon, plot pareto_carbon.png
    cost: str  # a metric name
    axis: str  # axis label of the cost
    label: str  # how the cost is named in the table's header
    optional: bool = False  # in the printed table only when some run records the cost
    measured: bool = False  # the cost is a noisy measurement (host energy), not a model


def fronts_for(metrics: Sequence[Objective]) -> list[Front]:
    """A front per metric that names one, each front once.

    Fronts against a ``measured`` cost come first, then the others in the order of
    ``metrics`` (see :func:`metrics_for`): the measured trade-off (host energy) is the one a
    sweep is usually run for, and this keeps the front columns of records made before
    trackers were pluggable in their places (pareto_carbon, pareto_privacy, pareto_edge).
    """
    first: dict[str, Objective] = {}
    for metric in metrics:
        if metric.front:
            first.setdefault(metric.front, metric)
    ordered = sorted(first.values(), key=lambda m: not m.measured)  # stable: tracker order
    return [
        Front(m.front, m.name, m.axis or m.name, m.header or m.name, m.optional, m.measured)
        for m in ordered
    ]


# --------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the comparison: a run, or a group of runs summarised by mean, sample std
    and the half-width of the Student-t 95 % confidence interval of the mean
    (:mod:`fedlab.reports.stats`)."""

    label: str
    runs: list[Run]
    keys: dict[str, Any]  # the differing config values, or the --by values
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)
    ci: dict[str, float | None] = field(default_factory=dict)  # 95 % CI half-width
    count: dict[str, int] = field(default_factory=dict)  # runs behind each mean
    group: bool = False
    n: int = 0  # completed runs behind the numbers
    fronts: dict[str, bool | None] = field(default_factory=dict)
    #: Per front: labels of the other rows on it that this one cannot be told apart from.
    ties: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        label: str,
        runs: list[Run],
        keys: dict[str, Any],
        metrics: Sequence[Objective],
        *,
        group: bool,
    ) -> Row:
        """Summarise ``runs``: a run's row shows its own numbers, complete or not (to see how
        far it got); a group averages its completed runs only (a failed seed would drag the
        mean down)."""
        row = cls(label, runs, keys, group=group, n=sum(r.completed for r in runs))
        used = [r for r in runs if r.completed] if group else runs
        for metric in metrics:
            values = [v for v in (metric_value(metric, r) for r in used) if v is not None]
            row.mean[metric.name] = statistics.fmean(values) if values else None
            row.std[metric.name] = statistics.stdev(values) if len(values) > 1 else None
            row.ci[metric.name] = ci_halfwidth(values)
            row.count[metric.name] = len(values)
        return row

    def estimate(self, name: str) -> tuple[float, float | None, int]:
        """(mean, std, n) of metric ``name``, for a significance test (mean must exist)."""
        mean = self.mean[name]
        assert mean is not None
        return mean, self.std[name], self.count.get(name, 1)

    @property
    def eligible(self) -> bool:
        """Whether the row may be on a front: a completed run, or a group with one."""
        return self.n > 0

    @property
    def status(self) -> str:
        """The run's status, or the statuses of a group's runs with their counts."""
        if not self.group:
            return self.runs[0].status
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in counts.items())


def beats(a: Row, b: Row, objectives: Sequence[tuple[str, bool]]) -> bool:
    """Whether ``a`` dominates ``b`` on ``objectives`` ((metric name, maximize) pairs).

    With two or more runs behind both rows on every objective: ``a`` is significantly better
    on *every* objective (Welch t-test, :mod:`fedlab.reports.stats`), so a difference within
    the seeds' noise never knocks a group off a front. Otherwise (a single run on a side, no
    spread to test against): the plain Pareto rule on the values, at least as good on all
    and better on one, as :func:`pareto_front` decides.
    """
    tests = [significantly_better(a.estimate(k), b.estimate(k), up) for k, up in objectives]
    if all(t is not None for t in tests):
        return all(tests)
    points = [[a.mean[k] for k, _ in objectives], [b.mean[k] for k, _ in objectives]]
    return not pareto_front(points, [up for _, up in objectives])[1]


def indistinguishable(a: Row, b: Row, objectives: Sequence[tuple[str, bool]]) -> bool:
    """Whether neither row is significantly better than the other on any objective (both
    tested, so each needs two or more runs)."""
    for k, up in objectives:
        ahead = significantly_better(a.estimate(k), b.estimate(k), up)
        behind = significantly_better(b.estimate(k), a.estimate(k), up)
        if ahead is None or behind is None or ahead or behind:
            return False
    return True


def mark_fronts(rows: Sequence[Row], metric: str, fronts: Sequence[Front]) -> None:
    """Set ``row.fronts`` for every front: True/False among eligible rows with both values,
    None for the rest (they were not compared, which is not the same as dominated); and
    ``row.ties``: the rows on the same front it is indistinguishable from."""
    maximize = TARGETS[metric][0]
    for front in fronts:
        objectives = [(metric, maximize), (front.cost, False)]
        candidates = [
            row
            for row in rows
            if row.eligible and all(row.mean[k] is not None for k, _ in objectives)
        ]
        for row in rows:
            row.fronts[front.name] = None
            row.ties[front.name] = []
        for row in candidates:
            row.fronts[front.name] = not any(
                beats(other, row, objectives) for other in candidates if other is not row
            )
        on_front = [row for row in candidates if row.fronts[front.name]]
        for row in on_front:
            row.ties[front.name] = [
                o.label for o in on_front if o is not row and indistinguishable(row, o, objectives)
            ]
