"""The audit tracker's part of the reports, from the run record alone: the card's "Fairness
audit", "Explanations" and "Drift" sections, and the drift panel of ``curves.png``."""

from __future__ import annotations

from typing import Any

from fedlab.record.reader import Run, shown
from fedlab.trackers.base import Panel

#: Groupings with more groups than this get only their summary row on the card (the record
#: has every group).
MAX_TABLE_GROUPS = 12

GROUPINGS = {
    "client": "client",
    "dominant_label": "client's dominant training label",
    "data_size": "client's size tercile (training examples)",
    "region": "client's region (carbon.regions)",
    "device": "client's device (devices.mix)",
}


def card_section(run: Run) -> str | None:
    """The audit's sections of the model card; None for a record without an audit."""
    audit = run.section("audit")
    if not audit:
        return None
    error = f"## Fairness audit and explanations\n\nNot made: {audit['error']}." if audit.get(
        "error") else ""
    parts = [error, _fairness(audit.get("fairness") or {}),
             _explanations(audit.get("explanations") or {}), _drift(audit.get("drift") or {})]
    return "\n\n".join(p for p in parts if p)


def _fairness(fair: dict[str, Any]) -> str:
    head = ["## Fairness audit (Fairlearn MetricFrame)", ""]
    if not fair:
        return ""
    if "skipped" in fair:
        return "\n".join([*head, f"Not audited: {fair['skipped']}."])
    worst = fair.get("worst_10pct_client_accuracy") or {}
    lines = [
        *head,
        f"The final model on {fair.get('examples')} examples of {fair.get('clients')} clients' "
        "local test splits, grouped by who holds them. Difference: largest minus smallest "
        "group value; ratio: smallest over largest. Accuracy overall "
        f"{shown((fair.get('overall') or {}).get('accuracy'))}; worst 10 % of clients "
        f"{shown(worst.get('mean'))} ({worst.get('clients')} client"
        f"{'s' if worst.get('clients') != 1 else ''}).",
        "",
        "| grouping | groups | accuracy min | accuracy max | accuracy difference | "
        "accuracy ratio | loss difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by: dict[str, Any] = fair.get("by") or {}
    for name, frame in by.items():
        lines.append(
            f"| {GROUPINGS.get(name, name)} | {frame.get('groups')} "
            f"| {shown(frame['group_min'].get('accuracy'))} "
            f"| {shown(frame['group_max'].get('accuracy'))} "
            f"| {shown(frame['difference'].get('accuracy'))} "
            f"| {shown(frame['ratio'].get('accuracy'))} "
            f"| {shown(frame['difference'].get('loss'))} |"
        )
    for name, frame in by.items():
        groups = frame.get("by_group") or {}
        if name == "client" or not 1 < len(groups) <= MAX_TABLE_GROUPS:
            continue
        lines += ["", f"By {GROUPINGS.get(name, name)}:", "",
                  "| group | examples | accuracy | loss |", "| --- | ---: | ---: | ---: |"]
        lines += [
            f"| {g} | {v.get('examples')} | {shown(v.get('accuracy'))} | {shown(v.get('loss'))} |"
            for g, v in groups.items()
        ]
    lines += ["", f"Sensitive attribute of the data: {fair.get('sensitive_column_note')}."]
    return "\n".join(lines)


def _explanations(exp: dict[str, Any]) -> str:
    head = ["## Explanations (Integrated Gradients)", ""]
    if not exp:
        return ""
    if "skipped" in exp:
        return "\n".join([*head, f"Not explained: {exp['skipped']}."])
    lines = [
        *head,
        f"Captum's Integrated Gradients of the true class's logit on {exp.get('examples')} "
        f"examples of the server's test split ({exp.get('ig_steps')} steps from a "
        f"{exp.get('baseline')} baseline; largest completeness error "
        f"{shown(exp.get('max_abs_delta'), '.2g')} against output changes up to "
        f"{shown(exp.get('max_abs_output_change'), '.3g')}). Per-class means are in "
        f"`{exp.get('file')}`.",
    ]
    if exp.get("picture"):
        lines += ["", f"![Mean attribution per class]({exp['picture']})"]
    else:
        lines += ["", "Most relied-on features (mean |attribution|, feature index): "
                  + ", ".join(str(i) for i in exp.get("top_features") or [])]
    clients = exp.get("across_clients") or {}
    if clients.get("clients"):
        lines += [
            "",
            f"Across {clients['clients']} clients' local test splits ({clients.get('distance')}):"
            f" mean distance from the server's profile {shown(clients.get('mean_from_global'))}, "
            f"largest {shown(clients.get('max_from_global'))}, mean between clients "
            f"{shown(clients.get('mean_pairwise'))} (0: the model relies on the same features "
            "for every client's data).",
        ]
    return "\n".join(lines)


def _drift(drift: dict[str, Any]) -> str:
    if not drift:
        return ""
    dist, shift = drift.get("update_distance") or {}, drift.get("label_shift_tv") or {}
    at = dist.get("max_at") or {}
    return "\n".join([
        "## Drift across rounds",
        "",
        f"L2 distance of each client's update from the aggregate over "
        f"{dist.get('client_rounds', 0)} client-rounds: mean {shown(dist.get('mean'), '.4g')}, "
        f"largest {shown(dist.get('max'), '.4g')} (client {at.get('client', 'n/a')}, round "
        f"{at.get('round', 'n/a')}); farthest on average: client "
        f"{dist.get('farthest_client', 'n/a')}. Label shift of the trained data between "
        f"rounds (total variation): mean {shown(shift.get('mean'))}, largest "
        f"{shown(shift.get('max'))} over {shift.get('rounds', 0)} round pairs. "
        f"Per round in `rounds.csv`, per client in `clients.csv` ({drift.get('note')}).",
    ])


def run_panels(run: Run) -> list[Panel]:
    """``curves.png``'s drift panels: the update distance from the aggregate (mean and max
    over the round's clients) and the label shift between rounds, each only when recorded and
    not all zero (every client in every round: no shift, no panel)."""
    panels = []
    for title, ylabel, columns in (
        ("Update distance from the aggregate", "L2 distance",
         (("update_distance_mean", "mean"), ("update_distance_max", "max"))),
        ("Label shift between rounds", "total variation", (("label_shift_tv", "trained labels"),)),
    ):
        series = []
        for column, label in columns:
            rounds, values = run.round_values(column)
            if rounds:
                series.append((label, tuple(float(r) for r in rounds), tuple(values)))
        if series and any(v for _, _, values in series for v in values):
            panels.append(Panel(title, "round", ylabel, tuple(series)))
    return panels
