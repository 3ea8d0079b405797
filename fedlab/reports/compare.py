"""``fedlab-compare``: run records side by side, grouped, with their Pareto fronts.

It reads only run records, through :mod:`fedlab.record.reader` (``results.json``,
``config.yaml`` and ``rounds.csv`` of every run directory under the given paths), so a
comparison can be redone long after the runs, on any machine, and never disagrees with the
record. Accuracy is traded against every cost the runs' trackers offer as a front
(:mod:`fedlab.reports.metrics`): a run is on a front when no other run beats it on both at
once, which is what a reader of a sweep wants first.

Incomplete runs (status other than ``completed``) are listed so that a sweep's failures are
seen, but never enter a front or a mean: their "final" numbers are those of whatever round
they reached. Bad input ends in one line on stderr and exit status 2, before anything is
written.

This module is the command and its orchestration; the numbers are in
:mod:`~fedlab.reports.metrics`, the tables and CSVs in :mod:`~fedlab.reports.table`, the
figures in :mod:`~fedlab.reports.plots`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from fedlab.record.reader import (
    EXPERIMENT_PREFIX,
    ReadError,
    Run,
    cell,
    flatten,
    load_runs,
    number,
)
from fedlab.record.run_dir import RESULTS, write_csv, write_text
from fedlab.reports.comparison import Comparison
from fedlab.reports.groups import (
    differing_keys,
    group_runs,
    honesty_notes,
    inherit_fronts,
    seed_group_keys,
)
from fedlab.reports.metrics import (
    TARGETS,
    Row,
    fronts_for,
    mark_fronts,
    metrics_for,
    pareto_front,
    tracker_union,
)
from fedlab.reports.table import Table, build_table, display_key, group_csv_rows, run_csv_rows

__all__ = [  # pareto_front and Comparison are documented here too (docs/compare.md)
    "CompareError",
    "Comparison",
    "compare",
    "lineage_notes",
    "main",
    "markdown_report",
    "pareto_front",
    "tables",
    "write_outputs",
]

PROG = "fedlab-compare"


class CompareError(ValueError):
    """Bad input (unknown key, malformed option): one line on stderr, exit status 2. An
    unreadable record or a path without runs is a :class:`~fedlab.record.reader.ReadError`,
    reported the same way."""


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


def sweep_name(runs: Sequence[Run]) -> str:
    """The folder compared, by its last two parts (``12-00-00`` alone says little)."""
    common = Path(os.path.commonpath([r.path for r in runs]))
    return "/".join(common.parts[-2:])


def compare(
    paths: Sequence[Path],
    by: Sequence[str] = (),
    filters: Sequence[str] = (),
    metric: str = "accuracy",
) -> Comparison:
    """Load, filter, group and rank the runs under ``paths``; raises :class:`CompareError`
    or :class:`~fedlab.record.reader.ReadError`.

    Without ``by``, runs that differ only in seed are grouped (their mean and confidence
    interval are what a front can be judged on). The metrics and fronts are those of the
    trackers of the runs that pass the filters (each tracker once, in the order the runs
    name them), so a user's tracker is compared like the built-ins.
    """
    if metric not in TARGETS:
        raise CompareError(f"unknown --metric '{metric}': choose from {', '.join(TARGETS)}")
    runs = load_runs(paths)
    for key, wanted in [parse_filter(f, runs) for f in filters]:
        runs = [r for r in runs if matches(r.value(key), wanted)]
        if not runs:
            raise CompareError(f"no run matches --filter {display_key(key)}={wanted}")
    by_keys = [resolve_key(k, runs, "--by") for k in by]
    trackers = tracker_union(runs)
    metrics = metrics_for(trackers)
    fronts = fronts_for(metrics)
    keys = differing_keys(runs)
    run_rows = [
        Row.of(r.label, [r], {k: r.config.get(k) for k in keys}, metrics, group=False) for r in runs
    ]
    mark_fronts(run_rows, metric, fronts)
    notes = []
    incomplete = [r for r in runs if not r.completed]
    if incomplete:
        listed = ", ".join(f"{r.label} ({r.status})" for r in incomplete)
        notes.append(f"{len(incomplete)} incomplete run(s), not in fronts or means: {listed}")
    seed_keys = None if by_keys else seed_group_keys(runs, keys)
    if seed_keys is not None:
        by_keys = seed_keys
        notes.append("runs that differ only in seed are grouped (--by KEY groups otherwise)")
    rows = run_rows
    if by_keys or seed_keys is not None:
        rows = group_runs(runs, by_keys, metrics, seeds=seed_keys is not None)
        mark_fronts(rows, metric, fronts)
        inherit_fronts(rows, run_rows)
        varying = [
            k
            for k in keys
            if any(len({cell(r.config.get(k)) for r in row.runs}) > 1 for row in rows)
        ]
        if varying:
            notes.append(f"within groups, runs differ in: {', '.join(varying)} (averaged over)")
    result = Comparison(
        runs,
        rows,
        [] if seed_keys is not None else by_keys,
        metric,
        run_rows,
        notes,
        trackers,
        metrics,
        fronts,
        sweep_name(runs),
        seed_keys is not None,
    )
    notes.extend(honesty_notes(result))
    notes.extend(lineage_notes(runs))
    return result


def lineage_notes(runs: Sequence[Run], shown_labels: int = 6) -> list[str]:
    """Whether the runs trained on the same examples split among the same clients: the
    dataset and partition hashes each record's lineage holds (``results.json["lineage"]``).
    Equal hashes mean equal arrays and equal client indices, which a config comparison
    cannot promise (a dataset revised upstream, a partitioner changed by an upgrade).
    Nothing is said when no run has a lineage (records from before fedlab wrote one)."""
    pairs: dict[tuple[str, str], list[str]] = {}
    missing = []
    for run in runs:
        entry = run.results.get("lineage")
        if isinstance(entry, dict) and entry.get("dataset") and entry.get("partition"):
            pairs.setdefault((entry["dataset"], entry["partition"]), []).append(run.label)
        else:
            missing.append(run.label)
    if not pairs or len(runs) < 2:
        return []

    def listed(labels: list[str]) -> str:
        more = len(labels) - shown_labels
        return ", ".join(labels[:shown_labels]) + (f" and {more} more" if more > 0 else "")

    notes = []
    if len(pairs) == 1:
        ((dataset, part), labels), = pairs.items()
        who = f"all {len(runs)} runs" if not missing else f"{listed(labels)}"
        notes.append(
            f"{who} share data and partition (lineage: dataset sha256 {dataset[:12]}, "
            f"partition {part[:12]}): the same examples held by the same clients"
        )
    else:
        datasets = {d for d, _ in pairs}
        groups = "; ".join(
            f"dataset {d[:12]}/partition {p[:12]}: {listed(labels)}"
            for (d, p), labels in pairs.items()
        )
        what = "data" if len(datasets) > 1 else "partition (same dataset)"
        notes.append(f"runs differ in {what}, by lineage hashes: {groups}")
    if missing:
        notes.append(f"{len(missing)} run(s) have no lineage to compare data by: {listed(missing)}")
    return notes


def default_out(paths: Sequence[Path]) -> Path:
    """The first path if it is a folder of runs (a multirun), else ``./comparison``: a single
    run's directory is the record of that run and gets nothing extra."""
    first = paths[0]
    return Path("comparison") if (first / RESULTS).is_file() else first


def write_outputs(result: Comparison, out: Path) -> list[str]:
    """Write the CSVs, ``comparison.md`` and the plots into ``out``; returns report lines."""
    from fedlab.reports.plots import write_plots  # matplotlib (1 s) only once there is output

    out.mkdir(parents=True, exist_ok=True)
    group_of = {id(run): row.label for row in result.rows if result.grouped for run in row.runs}
    rows, columns = run_csv_rows(result.run_rows, group_of, result.metrics, result.fronts)
    write_csv(out / "comparison.csv", rows, columns)
    written = ["comparison.csv"]
    if result.grouped:
        group_rows, group_columns = group_csv_rows(
            result.rows, result.by, result.metrics, result.fronts
        )
        write_csv(out / "comparison_groups.csv", group_rows, group_columns)
        written.append("comparison_groups.csv")
    write_text(out / "comparison.md", markdown_report(result))
    written.append("comparison.md")
    images, skipped = write_plots(result, out)
    lines = [f"wrote {', '.join(written + images)} to {out}"]
    return lines + [f"skipped {name}: {why}" for name, why in skipped]


def tables(result: Comparison) -> list[tuple[str, Table]]:
    """The tables to show: the main one, and when rows are groups the runs behind them."""
    keys = list(result.run_rows[0].keys)
    columns = (result.metrics, result.fronts)
    if not result.grouped:
        return [("Runs", build_table(result.rows, keys, False, *columns))]
    main = build_table(result.rows, result.by, True, *columns, labelled=result.seed_grouped)
    return [("Groups", main), ("Runs", build_table(result.run_rows, keys, False, *columns))]


def markdown_report(result: Comparison) -> str:
    """``comparison.md``: the tables, the notes (statistics, warnings, what each front
    trades) and how to read the markers."""
    sections = ["# fedlab comparison", ""]
    if result.fronts:
        sections.append(
            f"{len(result.runs)} run(s) in {result.name}. Fronts: `*` on the front, `~` on it "
            "but indistinguishable from another row on it, empty if dominated, `-` not "
            "compared (incomplete, or the value was not recorded)."
        )
    else:
        sections.append(f"{len(result.runs)} run(s). No tracker of these runs offers a front.")
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
        description="Compare fedlab runs: table, Pareto fronts (accuracy against each cost "
        "the runs' trackers offer: kgCO2e, epsilon, ...), grouped means, plots.",
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
        choices=list(TARGETS),
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
    except (CompareError, ReadError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for title, table in tables(result):
        print(f"{title}:\n{table.text()}\n")
    for line in [*result.notes, *write_outputs(result, out)]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
