"""``fedlab-compare``: run records side by side, grouped, with their Pareto fronts.

It reads only run records (see :mod:`fedlab.record.run_dir`): ``results.json``, ``config.yaml`` and
``rounds.csv`` of every run directory under the given paths, so a comparison can be redone
long after the runs, on any machine, and never disagrees with the record. Accuracy is traded
against two costs, emissions (kgCO2e) and privacy loss (epsilon); :func:`pareto_front` marks
the runs that no other run beats on both at once, which is what a reader of a sweep wants
first.

Incomplete runs (status other than ``completed``) are listed so that a sweep's failures are
seen, but never enter a front or a mean: their "final" numbers are those of whatever round
they reached. Bad input ends in one line on stderr and exit status 2, before anything is
written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from fedlab.record.run_dir import RESULTS, SCHEMA, read_csv, write_csv, write_text

PROG = "fedlab-compare"

#: Short names for ``--by``/``--filter``: the experiment summary in ``results.json``.
EXPERIMENT_PREFIX = "experiment."


class CompareError(ValueError):
    """Bad input (no run, unknown key, malformed option): one line on stderr, exit status 2."""


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
# Loading run records
# --------------------------------------------------------------------------------------


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``{"client": {"lr": 0.1}}`` -> ``{"client.lr": 0.1}``).

    Lists and empty dicts stay values: a list of hidden sizes is one setting, not several.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def number(cell: Any) -> float | None:
    """A record value or CSV cell as a float; None for empty, null, non-numeric or NaN."""
    if cell is None or cell == "" or isinstance(cell, bool):
        return None
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


@dataclass
class Run:
    """One run directory as the record describes it."""

    path: Path
    results: dict[str, Any]
    config: dict[str, Any]  # flattened config.yaml
    rounds: list[dict[str, str]]
    label: str = ""

    @property
    def status(self) -> str:
        """The record's status (``completed``, ``failed``, ``interrupted``, ``running``)."""
        return str(self.results.get("status") or "unknown")

    @property
    def completed(self) -> bool:
        """Whether the run finished all its rounds: only those enter fronts and means."""
        return self.status == "completed"

    def value(self, key: str) -> Any:
        """The value of a ``--by``/``--filter`` key (see :func:`resolve_key`); None if absent."""
        if key.startswith(EXPERIMENT_PREFIX):
            return (self.results.get("experiment") or {}).get(key[len(EXPERIMENT_PREFIX) :])
        if key in self.config:
            return self.config[key]
        return flatten(self.results).get(key)

    def round_values(self, column: str) -> tuple[list[int], list[float]]:
        """Rounds that have ``column`` in ``rounds.csv``, and the values there."""
        pairs = [(number(r.get("round")), number(r.get(column))) for r in self.rounds]
        kept = [(int(r), v) for r, v in pairs if r is not None and v is not None]
        return [r for r, _ in kept], [v for _, v in kept]


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Run directories at or under ``paths`` (those holding ``results.json``), each once.

    A path that is not a run directory is searched recursively (a Hydra multirun directory,
    or any folder of runs). Raises :class:`CompareError` for a path that holds no run.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if not path.is_dir():
            raise CompareError(f"{path}: no such directory")
        if (path / RESULTS).is_file():
            candidates = [path]
        else:
            candidates = sorted((p.parent for p in path.rglob(RESULTS)), key=natural_key)
        if not candidates:
            raise CompareError(f"{path}: no run found (no {RESULTS} in it or below it)")
        found.update((c.resolve(), None) for c in candidates)
    return list(found)


def natural_key(path: Path) -> list[Any]:
    """Sort key putting Hydra job ``10`` after ``9``, not after ``1``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def load_run(run_dir: Path) -> Run:
    """Read one run's record; raises :class:`CompareError` if ``results.json`` is unusable."""
    try:
        results = json.loads((run_dir / RESULTS).read_text())
    except (OSError, ValueError) as err:
        raise CompareError(f"{run_dir / RESULTS}: unreadable ({err})") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise CompareError(f"{run_dir / RESULTS}: not a {SCHEMA} run record")
    config_path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    except yaml.YAMLError as err:
        raise CompareError(f"{config_path}: unreadable ({err})".splitlines()[0]) from None
    rounds_path = run_dir / "rounds.csv"
    rounds = read_csv(rounds_path) if rounds_path.is_file() else []
    return Run(run_dir, results, flatten(config or {}), rounds)


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Every run under ``paths``, labelled by its path relative to their common folder."""
    runs = [load_run(d) for d in find_run_dirs(paths)]
    if len(runs) == 1:
        runs[0].label = runs[0].path.name
        return runs
    common = Path(os.path.commonpath([r.path for r in runs]))
    for run in runs:
        run.label = str(run.path.relative_to(common))
    return runs


def resolve_key(key: str, runs: Sequence[Run], option: str) -> str:
    """The canonical form of a ``--by``/``--filter`` key, or :class:`CompareError`.

    Keys of ``results.experiment`` (``strategy``, ``dataset``, ``model``, ``partition``, ...)
    are short names for the experiment summary; any other key is a dotted ``config.yaml``
    key (``client.lr``) or a dotted ``results.json`` key (``privacy.mode``, ``status``).
    """
    if any(key in (r.results.get("experiment") or {}) for r in runs):
        return EXPERIMENT_PREFIX + key
    if any(key in r.config for r in runs) or any(key in flatten(r.results) for r in runs):
        return key
    examples = ", ".join(["strategy", "dataset", "model", *sorted(runs[0].config)[:4]])
    raise CompareError(
        f"unknown {option} key '{key}': not a config or results key of these runs (e.g. {examples})"
    )


def parse_filter(text: str, runs: Sequence[Run]) -> tuple[str, str]:
    """``KEY=VALUE`` as (canonical key, value); :class:`CompareError` if malformed."""
    key, sep, wanted = text.partition("=")
    if not sep or not key.strip():
        raise CompareError(f"malformed --filter '{text}': expected KEY=VALUE")
    return resolve_key(key.strip(), runs, "--filter"), wanted.strip()


def matches(value: Any, wanted: str) -> bool:
    """Whether a record value equals a ``--filter`` value typed on the command line.

    Numbers compare as numbers (``client.lr=0.10`` matches 0.1), booleans and null by their
    YAML spellings, everything else as text.
    """
    if value is None:
        return wanted.lower() in ("null", "none", "")
    if isinstance(value, bool):
        return wanted.lower() == str(value).lower()
    if isinstance(value, int | float):
        return number(wanted) == float(value)
    return cell(value) == wanted


# --------------------------------------------------------------------------------------
# Metrics, rows and fronts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A number per run: the sum of the ``results.json`` values at ``paths``."""

    name: str  # column in comparison.csv
    header: str  # column in the printed table ("" keeps it out of the table)
    paths: tuple[tuple[str, ...], ...]
    fmt: Callable[[float], str]
    optional: bool = False  # in the printed table only when some run records it

    def of(self, run: Run) -> float | None:
        """The metric for ``run``; None when any part is missing."""
        parts: list[float] = []
        for path in self.paths:
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


def _fixed(digits: int) -> Callable[[float], str]:
    return lambda v: f"{v:.{digits}f}"


def _general(v: float) -> str:
    return f"{v:.3g}"


def _metric(
    name: str,
    header: str,
    *paths: tuple[str, ...],
    fmt: Callable[[float], str] = _general,
    optional: bool = False,
) -> Metric:
    return Metric(name, header, paths or ((name,),), fmt, optional)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _metric("accuracy", "accuracy", fmt=_fixed(4)),
        _metric("loss", "loss", fmt=_fixed(4)),
        _metric("federated_accuracy", "", fmt=_fixed(4)),
        _metric("federated_loss", "", fmt=_fixed(4)),
        _metric("epsilon", "epsilon", ("privacy", "epsilon")),
        _metric("delta", "", ("privacy", "delta")),
        _metric("energy_kwh", "kWh", ("carbon", "energy_kwh")),
        _metric("emissions_kg", "kgCO2e", ("carbon", "emissions_kg")),
        _metric("compute_kg", "compute kg", ("carbon", "compute_kg")),
        _metric("communication_kg", "comm kg", ("carbon", "communication_kg")),
        _metric(
            "bytes",
            "bytes",
            ("communication", "bytes_down"),
            ("communication", "bytes_up"),
            fmt=human_bytes,
        ),
        _metric("bytes_down", "", ("communication", "bytes_down"), fmt=_fixed(0)),
        _metric("bytes_up", "", ("communication", "bytes_up"), fmt=_fixed(0)),
        _metric("rounds_completed", "", fmt=_fixed(0)),
        _metric("duration_s", "duration s", fmt=_fixed(1)),
        # simulated edge devices (devices group): what the clients' devices would have spent
        _metric("edge_kwh", "edge kWh", ("devices", "edge_kwh"), optional=True),
        _metric("edge_kg", "edge kgCO2e", ("devices", "edge_kg"), optional=True),
        _metric(
            "sim_time_s", "sim time s", ("devices", "sim_time_s"), fmt=_fixed(1), optional=True
        ),
    )
}

#: ``--metric`` choices: whether each is maximized, and its column in ``rounds.csv``.
OBJECTIVES: dict[str, tuple[bool, str]] = {
    "accuracy": (True, "central_accuracy"),
    "federated_accuracy": (True, "federated_accuracy"),
    "loss": (False, "central_loss"),
    "federated_loss": (False, "federated_loss"),
}


@dataclass(frozen=True)
class Front:
    """A trade-off: the ``--metric`` against one cost, minimized."""

    name: str  # "carbon" -> column pareto_carbon, plot pareto_carbon.png
    cost: str  # a METRICS name
    axis: str  # axis label of the cost
    optional: bool = False  # in the printed table only when some run records the cost


FRONTS = (
    Front("carbon", "emissions_kg", "emissions (kgCO2e)"),
    Front("privacy", "epsilon", "privacy loss ε (lower is more private)"),
    Front("edge", "edge_kg", "simulated edge-device emissions (kgCO2e)", optional=True),
)


@dataclass
class Row:
    """One line of the comparison: a run, or a group of runs summarised by mean and std."""

    label: str
    runs: list[Run]
    keys: dict[str, Any]  # the differing config values, or the --by values
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)
    group: bool = False
    n: int = 0  # completed runs behind the numbers
    fronts: dict[str, bool | None] = field(default_factory=dict)

    @classmethod
    def of(cls, label: str, runs: list[Run], keys: dict[str, Any], *, group: bool) -> Row:
        """Summarise ``runs``: a run's row shows its own numbers, complete or not (to see how
        far it got); a group averages its completed runs only (a failed seed would drag the
        mean down)."""
        row = cls(label, runs, keys, group=group, n=sum(r.completed for r in runs))
        used = [r for r in runs if r.completed] if group else runs
        for name, metric in METRICS.items():
            values = [v for v in (metric.of(r) for r in used) if v is not None]
            row.mean[name] = statistics.fmean(values) if values else None
            row.std[name] = statistics.stdev(values) if len(values) > 1 else None
        return row

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


def mark_fronts(rows: Sequence[Row], metric: str) -> None:
    """Set ``row.fronts`` for every front: True/False among eligible rows with both values,
    None for the rest (they were not compared, which is not the same as dominated)."""
    maximize = OBJECTIVES[metric][0]
    for front in FRONTS:
        candidates = [
            (row, y, x)
            for row in rows
            if row.eligible
            and (y := row.mean[metric]) is not None
            and (x := row.mean[front.cost]) is not None
        ]
        flags = pareto_front([(y, x) for _, y, x in candidates], maximize=(maximize, False))
        for row in rows:
            row.fronts[front.name] = None
        for (row, _, _), flag in zip(candidates, flags, strict=True):
            row.fronts[front.name] = flag


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value is not the same in every run (absent counts as a value), in
    config order: the knobs the comparison is about."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.config))
    missing = object()
    return [k for k in keys if len({cell(r.config.get(k, missing)) for r in runs}) > 1]


def cell(value: Any) -> str:
    """A config value as text: lists and dicts in compact JSON, None empty."""
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def group_runs(runs: Sequence[Run], by: Sequence[str]) -> list[Row]:
    """One row per distinct combination of the ``by`` values, in order of first appearance."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(cell(run.value(k)) for k in by), []).append(run)
    rows = []
    for values, members in groups.items():
        label = (
            (values[0] or "-")
            if len(by) == 1
            else ", ".join(f"{display_key(k)}={v}" for k, v in zip(by, values, strict=True))
        )
        keys = {k: members[0].value(k) for k in by}
        rows.append(Row.of(label, members, keys, group=True))
    return rows


def display_key(key: str) -> str:
    """``experiment.strategy`` as the user typed it, ``strategy``."""
    return key.removeprefix(EXPERIMENT_PREFIX)


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


@dataclass
class Table:
    """Headers and text cells, rendered for the terminal or as Markdown."""

    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]

    def text(self) -> str:
        """Aligned columns: text left, numbers right."""
        widths = [max(len(c) for c in col) for col in zip(self.headers, *self.rows, strict=True)]

        def line(cells: list[str]) -> str:
            return "  ".join(
                c.rjust(w) if num else c.ljust(w)
                for c, w, num in zip(cells, widths, self.numeric, strict=True)
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(self.headers), rule, *(line(r) for r in self.rows)])

    def markdown(self) -> str:
        """A GitHub Markdown table (pipes in cells escaped)."""

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        align = ["---:" if num else "---" for num in self.numeric]
        return "\n".join([line(self.headers), line(align), *(line(r) for r in self.rows)])


def build_table(rows: Sequence[Row], key_names: Sequence[str], grouped: bool) -> Table:
    """The comparison table: run label (groups are named by their key columns), keys, [n],
    the table metrics, status, front markers.

    A group's cell reads ``mean ± std`` (sample std, n-1), or just the mean when only one
    completed run has the value; ``-`` means no run has it.
    """
    metrics = [
        m
        for m in METRICS.values()
        if m.header and (not m.optional or any(row.mean[m.name] is not None for row in rows))
    ]
    fronts = [
        f for f in FRONTS if not f.optional or any(row.fronts[f.name] is not None for row in rows)
    ]
    count = ["n"] if grouped else []
    headers = ([] if grouped else ["run"]) + [display_key(k) for k in key_names] + count
    headers += [m.header for m in metrics] + ["status"] + [f"pareto {f.name}" for f in fronts]
    numeric = [False] * (len(key_names) + int(not grouped)) + [True] * (len(count) + len(metrics))
    numeric += [False] * (1 + len(fronts))
    body = []
    for row in rows:
        cells = ([] if grouped else [row.label]) + [cell(row.keys.get(k)) or "-" for k in key_names]
        cells += [str(row.n)] if grouped else []
        for m in metrics:
            mean, std = row.mean[m.name], row.std[m.name]
            text = "-" if mean is None else m.fmt(mean)
            cells.append(text if std is None else f"{text} ± {m.fmt(std)}")
        cells.append(row.status)
        cells += [{True: "*", False: "", None: "-"}[row.fronts[f.name]] for f in fronts]
        body.append(cells)
    return Table(headers, body, numeric)


def run_csv_rows(rows: Sequence[Row], group_of: dict[int, str]) -> tuple[list[dict], list[str]]:
    """``comparison.csv``: one row per run with every metric, front flags and config key
    (raw numbers, empty when absent), so that any further analysis starts from it."""
    config_keys: dict[str, None] = {}
    for row in rows:
        config_keys.update(dict.fromkeys(row.runs[0].config))
    columns = ["run", "path", "status", "error", *(["group"] if group_of else []), *METRICS]
    columns += [f"pareto_{f.name}" for f in FRONTS] + list(config_keys)
    out = []
    for row in rows:
        run = row.runs[0]
        line: dict[str, Any] = {"run": run.label, "path": str(run.path), "status": run.status}
        line["error"] = run.results.get("error") or ""
        line["group"] = group_of.get(id(run), "")
        line.update({name: metric.of(run) for name, metric in METRICS.items()})
        line.update({f"pareto_{f}": flag for f, flag in row.fronts.items()})
        line.update({k: cell(v) for k, v in run.config.items()})
        out.append(line)
    return out, columns


def group_csv_rows(rows: Sequence[Row], by: Sequence[str]) -> tuple[list[dict], list[str]]:
    """``comparison_groups.csv``: per group, n and each metric's mean and sample std."""
    columns = [display_key(k) for k in by] + ["n", "runs"]
    columns += [f"{name}_{stat}" for name in METRICS for stat in ("mean", "std")]
    columns += [f"pareto_{f.name}" for f in FRONTS]
    out = []
    for row in rows:
        line: dict[str, Any] = {display_key(k): cell(v) for k, v in row.keys.items()}
        line.update(n=row.n, runs=len(row.runs))
        for name in METRICS:
            line[f"{name}_mean"], line[f"{name}_std"] = row.mean[name], row.std[name]
        line.update({f"pareto_{f}": flag for f, flag in row.fronts.items()})
        out.append(line)
    return out, columns


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Everything ``fedlab-compare`` reports, computed before anything is written."""

    runs: list[Run]
    rows: list[Row]  # per run, or per group with --by
    by: list[str]
    metric: str
    run_rows: list[Row]  # always per run (comparison.csv, and the second table with --by)
    notes: list[str]

    @property
    def grouped(self) -> bool:
        """Whether ``--by`` was given."""
        return bool(self.by)


def compare(
    paths: Sequence[Path],
    by: Sequence[str] = (),
    filters: Sequence[str] = (),
    metric: str = "accuracy",
) -> Comparison:
    """Load, filter, group and rank the runs under ``paths``; raises :class:`CompareError`."""
    if metric not in OBJECTIVES:
        raise CompareError(f"unknown --metric '{metric}': choose from {', '.join(OBJECTIVES)}")
    runs = load_runs(paths)
    for key, wanted in [parse_filter(f, runs) for f in filters]:
        runs = [r for r in runs if matches(r.value(key), wanted)]
        if not runs:
            raise CompareError(f"no run matches --filter {display_key(key)}={wanted}")
    by_keys = [resolve_key(k, runs, "--by") for k in by]
    keys = differing_keys(runs)
    run_rows = [Row.of(r.label, [r], {k: r.config.get(k) for k in keys}, group=False) for r in runs]
    mark_fronts(run_rows, metric)
    notes = []
    incomplete = [r for r in runs if not r.completed]
    if incomplete:
        listed = ", ".join(f"{r.label} ({r.status})" for r in incomplete)
        notes.append(f"{len(incomplete)} incomplete run(s), not in fronts or means: {listed}")
    if not by_keys:
        return Comparison(runs, run_rows, [], metric, run_rows, notes)
    rows = group_runs(runs, by_keys)
    mark_fronts(rows, metric)
    varying = [
        k for k in keys if any(len({cell(r.config.get(k)) for r in row.runs}) > 1 for row in rows)
    ]
    if varying:
        notes.append(f"within groups, runs differ in: {', '.join(varying)} (averaged over)")
    return Comparison(runs, rows, by_keys, metric, run_rows, notes)


def default_out(paths: Sequence[Path]) -> Path:
    """The first path if it is a folder of runs (a multirun), else ``./comparison``: a single
    run's directory is the record of that run and gets nothing extra."""
    first = paths[0]
    return Path("comparison") if (first / RESULTS).is_file() else first


def write_outputs(result: Comparison, out: Path) -> list[str]:
    """Write the CSVs, ``comparison.md`` and the plots into ``out``; returns report lines."""
    from fedlab.reports.plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    group_of = {id(run): row.label for row in result.rows if result.grouped for run in row.runs}
    rows, columns = run_csv_rows(result.run_rows, group_of)
    write_csv(out / "comparison.csv", rows, columns)
    written = ["comparison.csv"]
    if result.grouped:
        group_rows, group_columns = group_csv_rows(result.rows, result.by)
        write_csv(out / "comparison_groups.csv", group_rows, group_columns)
        written.append("comparison_groups.csv")
    write_text(out / "comparison.md", markdown_report(result))
    written.append("comparison.md")
    images, skipped = write_plots(result, out)
    lines = [f"wrote {', '.join(written + images)} to {out}"]
    return lines + [f"skipped {name}: {why}" for name, why in skipped]


def tables(result: Comparison) -> list[tuple[str, Table]]:
    """The tables to show: the main one, and with ``--by`` the runs behind the groups."""
    keys = list(result.run_rows[0].keys)
    main = build_table(result.rows, result.by if result.grouped else keys, result.grouped)
    if not result.grouped:
        return [("Runs", main)]
    return [("Groups", main), ("Runs", build_table(result.run_rows, keys, grouped=False))]


def markdown_report(result: Comparison) -> str:
    """``comparison.md``: the tables, the notes and how to read them."""
    sections = ["# fedlab comparison", ""]
    sections.append(
        f"{len(result.runs)} run(s). Pareto fronts: maximize {result.metric}, minimize "
        "kgCO2e (pareto carbon), epsilon (pareto privacy) or the simulated edge devices' "
        "kgCO2e (pareto edge); `*` on the front, `-` not "
        "compared (incomplete, or the value was not recorded)."
    )
    for title, table in tables(result):
        sections += ["", f"## {title}", "", table.markdown()]
    if result.notes:
        sections += ["", "## Notes", "", *(f"- {n}" for n in result.notes)]
    return "\n".join(sections) + "\n"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage: errors must stay one line."""

    def error(self, message: str) -> NoReturn:
        raise CompareError(message)


def parser() -> argparse.ArgumentParser:
    """The command line of ``fedlab-compare``."""
    p = _Parser(
        prog=PROG,
        description="Compare fedlab runs: table, Pareto fronts (accuracy vs kgCO2e, accuracy "
        "vs epsilon), grouped means, plots.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="run dirs or dirs of runs")
    p.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="KEY",
        help="group by a config or results key (strategy, dataset, model, client.lr, ...); "
        "repeat for several",
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep runs whose KEY equals VALUE; repeat to require several",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output dir (default: PATH if a dir of runs, else ./comparison)",
    )
    p.add_argument(
        "--metric",
        default="accuracy",
        choices=list(OBJECTIVES),
        help="objective traded against the costs (default: accuracy)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: returns the exit status (0, or 2 for bad input)."""
    try:
        args = parser().parse_args(argv)
        result = compare(args.paths, args.by, args.filter, args.metric)
        out = args.out or default_out(args.paths)
        if out.exists() and not out.is_dir():
            raise CompareError(f"--out {out}: exists and is not a directory")
    except CompareError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for title, table in tables(result):
        print(f"{title}:\n{table.text()}\n")
    for line in [*result.notes, *write_outputs(result, out)]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
