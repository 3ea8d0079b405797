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


def marker(row: Row, front: str) -> str:
    """A row's cell in a front's column: ``*`` on the front, ``~`` on it but
    indistinguishable from another row on it, empty if dominated, ``-`` not compared."""
    flag = row.fronts[front]
    if flag is None:
        return "-"
    return ("~" if row.ties.get(front) else "*") if flag else ""


def build_table(
    rows: Sequence[Row],
    key_names: Sequence[str],
    grouped: bool,
    metrics: Sequence[Objective],
    fronts: Sequence[Front],
    *,
    labelled: bool | None = None,
) -> Table:
    """The comparison table: the label (runs, and groups of seeds; ``--by`` groups are
    named by their key columns), keys, [n], the table metrics, status, front markers.

    A group's cell reads ``mean ± h``, ``h`` the half-width of the Student-t 95 %
    confidence interval of the mean, or just the mean when only one completed run has the
    value; ``-`` means no run has it.
    """
    labelled = not grouped if labelled is None else labelled
    shown = [
        m
        for m in metrics
        if m.header and (not m.optional or any(row.mean[m.name] is not None for row in rows))
    ]
    fronts = [
        f for f in fronts if not f.optional or any(row.fronts[f.name] is not None for row in rows)
    ]
    count = ["n"] if grouped else []
    label = (["group"] if grouped else ["run"]) if labelled else []
    headers = label + [display_key(k) for k in key_names] + count
    headers += [m.header for m in shown] + ["status"] + [f"pareto {f.name}" for f in fronts]
    numeric = [False] * (len(key_names) + len(label)) + [True] * (len(count) + len(shown))
    numeric += [False] * (1 + len(fronts))
    body = []
    for row in rows:
        cells = [row.label] * len(label) + [cell(row.keys.get(k)) or "-" for k in key_names]
        cells += [str(row.n)] if grouped else []
        for m in shown:
            mean, half = row.mean[m.name], row.ci.get(m.name)
            text = "-" if mean is None else formatted(m, mean)
            cells.append(text if half is None or not grouped else f"{text} ± {formatted(m, half)}")
        cells.append(row.status)
        cells += [marker(row, f.name) for f in fronts]
        body.append(cells)
    return Table(headers, body, numeric)


def front_cells(row: Row) -> dict[str, Any]:
    """A row's CSV front cells: ``pareto_<front>`` (True, False, empty: not compared) and
    ``tied_<front>`` (the rows on that front it is indistinguishable from, ``;``-joined)."""
    cells: dict[str, Any] = {f"pareto_{f}": flag for f, flag in row.fronts.items()}
    cells.update({f"tied_{f}": ";".join(labels) for f, labels in row.ties.items()})
    return cells


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
    columns += [f"tied_{f.name}" for f in fronts] + list(config_keys)
    out = []
    for row in rows:
        run = row.runs[0]
        line: dict[str, Any] = {"run": run.label, "path": str(run.path), "status": run.status}
        line["error"] = run.results.get("error") or ""
        line["group"] = group_of.get(id(run), "")
        line.update({m.name: metric_value(m, run) for m in metrics})
        line.update(front_cells(row))
        line.update({k: cell(v) for k, v in run.config.items()})
        out.append(line)
    return out, columns


def group_csv_rows(
    rows: Sequence[Row],
    by: Sequence[str],
    metrics: Sequence[Objective],
    fronts: Sequence[Front],
) -> tuple[list[dict[str, Any]], list[str]]:
    """``comparison_groups.csv``: per group, n and each metric's mean, sample std and the
    half-width of its Student-t 95 % confidence interval (``_ci95``)."""
    columns = ["group", *(display_key(k) for k in by), "n", "runs"]
    columns += [f"{m.name}_{stat}" for m in metrics for stat in ("mean", "std", "ci95")]
    columns += [f"pareto_{f.name}" for f in fronts] + [f"tied_{f.name}" for f in fronts]
    out = []
    for row in rows:
        line: dict[str, Any] = {"group": row.label}
        line.update({display_key(k): cell(v) for k, v in row.keys.items()})
        line.update(n=row.n, runs=len(row.runs))
        for m in metrics:
            line[f"{m.name}_mean"], line[f"{m.name}_std"] = row.mean[m.name], row.std[m.name]
            line[f"{m.name}_ci95"] = row.ci[m.name]
        line.update(front_cells(row))
        out.append(line)
    return out, columns
