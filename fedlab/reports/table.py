"""The comparison as tables: the printed and Markdown table, ``comparison.csv`` and
``comparison_groups.csv``.

The printed table is for reading (formatted numbers, only the metrics with a header, an
optional column only when some run has it); the CSVs are for further analysis (every metric
as a raw number, empty when absent, every config key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedlab.record.reader import EXPERIMENT_PREFIX, cell
from fedlab.reports.metrics import Front, Row, formatted, metric_value
from fedlab.trackers.base import Objective


def display_key(key: str) -> str:
    """``experiment.strategy`` as the user typed it, ``strategy``."""
    return key.removeprefix(EXPERIMENT_PREFIX)


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


def build_table(
    rows: Sequence[Row],
    key_names: Sequence[str],
    grouped: bool,
    metrics: Sequence[Objective],
    fronts: Sequence[Front],
) -> Table:
    """The comparison table: run label (groups are named by their key columns), keys, [n],
    the table metrics, status, front markers.

    A group's cell reads ``mean ± std`` (sample std, n-1), or just the mean when only one
    completed run has the value; ``-`` means no run has it.
    """
    shown = [
        m
        for m in metrics
        if m.header and (not m.optional or any(row.mean[m.name] is not None for row in rows))
    ]
    fronts = [
        f for f in fronts if not f.optional or any(row.fronts[f.name] is not None for row in rows)
    ]
    count = ["n"] if grouped else []
    headers = ([] if grouped else ["run"]) + [display_key(k) for k in key_names] + count
    headers += [m.header for m in shown] + ["status"] + [f"pareto {f.name}" for f in fronts]
    numeric = [False] * (len(key_names) + int(not grouped)) + [True] * (len(count) + len(shown))
    numeric += [False] * (1 + len(fronts))
    body = []
    for row in rows:
        cells = ([] if grouped else [row.label]) + [cell(row.keys.get(k)) or "-" for k in key_names]
        cells += [str(row.n)] if grouped else []
        for m in shown:
            mean, std = row.mean[m.name], row.std[m.name]
            text = "-" if mean is None else formatted(m, mean)
            cells.append(text if std is None else f"{text} ± {formatted(m, std)}")
        cells.append(row.status)
        cells += [{True: "*", False: "", None: "-"}[row.fronts[f.name]] for f in fronts]
        body.append(cells)
    return Table(headers, body, numeric)


def run_csv_rows(
    rows: Sequence[Row],
    group_of: dict[int, str],
    metrics: Sequence[Objective],
    fronts: Sequence[Front],
) -> tuple[list[dict[str, Any]], list[str]]:
    """``comparison.csv``: one row per run with every metric, front flags and config key
    (raw numbers, empty when absent), so that any further analysis starts from it."""
    config_keys: dict[str, None] = {}
    for row in rows:
        config_keys.update(dict.fromkeys(row.runs[0].config))
    columns = ["run", "path", "status", "error", *(["group"] if group_of else [])]
    columns += [m.name for m in metrics] + [f"pareto_{f.name}" for f in fronts]
    columns += list(config_keys)
    out = []
    for row in rows:
        run = row.runs[0]
        line: dict[str, Any] = {"run": run.label, "path": str(run.path), "status": run.status}
        line["error"] = run.results.get("error") or ""
        line["group"] = group_of.get(id(run), "")
        line.update({m.name: metric_value(m, run) for m in metrics})
        line.update({f"pareto_{f}": flag for f, flag in row.fronts.items()})
        line.update({k: cell(v) for k, v in run.config.items()})
        out.append(line)
    return out, columns


def group_csv_rows(
    rows: Sequence[Row],
    by: Sequence[str],
    metrics: Sequence[Objective],
    fronts: Sequence[Front],
) -> tuple[list[dict[str, Any]], list[str]]:
    """``comparison_groups.csv``: per group, n and each metric's mean and sample std."""
    columns = [display_key(k) for k in by] + ["n", "runs"]
    columns += [f"{m.name}_{stat}" for m in metrics for stat in ("mean", "std")]
    columns += [f"pareto_{f.name}" for f in fronts]
    out = []
    for row in rows:
        line: dict[str, Any] = {display_key(k): cell(v) for k, v in row.keys.items()}
        line.update(n=row.n, runs=len(row.runs))
        for m in metrics:
            line[f"{m.name}_mean"], line[f"{m.name}_std"] = row.mean[m.name], row.std[m.name]
        line.update({f"pareto_{f}": flag for f, flag in row.fronts.items()})
        out.append(line)
    return out, columns
