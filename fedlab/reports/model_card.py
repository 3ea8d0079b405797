"""``model_card.md`` for a run, written from its record alone.

A model card (Mitchell et al., FAT* 2019) says what a model is for, what it was trained on
and how well, and what it cost. Here every statement is derived from the run record
(``results.json``, ``config.yaml``, ``rounds.csv``, ``clients.csv``), never from live
objects, so a card can be (re)written for any run, finished or not, on any machine, and it
cannot claim more than the record holds: a privacy guarantee appears only with the ε and δ
that the accountant recorded, carbon only if it was tracked.

The generic sections are written here; every tracker of the run adds its own
(:meth:`~fedlab.trackers.base.Tracker.card_section`, in the record's tracker order), so a
user's tracker gets a section on the card without an edit here.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlab.fl.evaluation import spread, worst_count
from fedlab.record import lineage
from fedlab.record.reader import Run, cell, load_run, number, shown
from fedlab.record.run_dir import write_text

CARD = "model_card.md"


def write_model_card(run_dir: Path) -> Path:
    """Write ``model_card.md`` into ``run_dir`` from its record; returns its path."""
    run = load_run(run_dir)
    sections = [
        _header(run),
        _intended_use(run),
        _data(run),
        _model(run),
        _training(run),
        _metrics(run),
        _fairness(run.clients),
        _robustness(run),
        lineage_section(run),
        gate_section(run),
        *tracker_sections(run),
        _reproduce(run),
    ]
    path = run_dir / CARD
    write_text(path, "\n\n".join(sections) + "\n")
    return path


def tracker_sections(run: Run) -> list[str]:
    """The sections of the run's trackers, in the record's order; a tracker with nothing to
    say about this run returns None and is left out."""
    return [text for cls in run.trackers if (text := cls.card_section(run))]


# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------


def _settings(run: Run, prefix: str, skip: Sequence[str] = ()) -> str:
    """The config keys under ``prefix`` as ``key=value, ...`` (``_target_`` and ``skip``
    left out: they are named elsewhere on the card)."""
    items = [
        f"{key[len(prefix) + 1 :]}={cell(value)}"
        for key, value in run.config.items()
        if key.startswith(prefix + ".")
        and not key.endswith("._target_")
        and not key[len(prefix) + 1 :].startswith(tuple(skip))
    ]
    return ", ".join(items) or "defaults"


def _target(run: Run, prefix: str) -> str:
    return str(run.config.get(f"{prefix}._target_", "unknown"))


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


def _header(run: Run) -> str:
    lines = [
        f"# Model card: {run.path.name}",
        "",
        f"Written by fedlab from the run record in `{run.path}`; every number below comes "
        "from that record.",
    ]
    if not run.completed:
        error = run.results.get("error")
        lines += [
            "",
            f"**This run did not complete (status: {run.status}"
            + (f"; {error}" if error else "")
            + f").** The figures are those of the last round it recorded "
            f"({run.results.get('rounds_completed')} of {run.results.get('num_rounds')}).",
        ]
    return "\n".join(lines)


def _intended_use(run: Run) -> str:
    exp = run.results.get("experiment") or {}
    return "\n".join(
        [
            "## Intended use",
            "",
            "A research artefact: the global model of a *simulated* federation "
            f"({exp.get('num_clients', 'n/a')} clients on one machine), kept to reproduce, "
            "analyse and compare the experiment. It is not a deployable model: it was not "
            "validated for any real population or task, and nothing here is evidence that it "
            "is safe, fair or accurate outside this simulation.",
        ]
    )


def _data(run: Run) -> str:
    exp = run.results.get("experiment") or {}
    lines = [
        "## Data and partition",
        "",
        f"- Dataset: {exp.get('dataset', 'n/a')} (`{_target(run, 'dataset')}`; "
        f"{_settings(run, 'dataset')})",
        f"- Partition: {exp.get('partition', 'n/a')} ({_settings(run, 'partition')})",
        f"- Clients: {exp.get('num_clients', 'n/a')}, of which "
        f"{exp.get('clients_per_round', 'n/a')} are sampled per round",
    ]
    if (run.path / "partition.png").is_file():
        lines += ["", "![Training labels per client](partition.png)"]
    return "\n".join(lines)


def _model(run: Run) -> str:
    exp = run.results.get("experiment") or {}
    weights = "`model.safetensors`" if (run.path / "model.safetensors").is_file() else "none"
    return "\n".join(
        [
            "## Model",
            "",
            f"- Architecture: {exp.get('model', 'n/a')} (`{_target(run, 'model')}`; "
            f"{_settings(run, 'model')})",
            f"- Final global weights: {weights}",
        ]
    )


def _training(run: Run) -> str:
    exp = run.results.get("experiment") or {}
    return "\n".join(
        [
            "## Training",
            "",
            f"- Strategy: {exp.get('strategy', 'n/a')} (`{_target(run, 'strategy.flower')}`; "
            f"{_settings(run, 'strategy.flower')})",
            f"- Client sampling and aggregation: {_settings(run, 'strategy', ('name', 'flower'))}",
            f"- Local training: {_settings(run, 'client')}",
            f"- Rounds: {run.results.get('num_rounds', 'n/a')}; seed {run.results.get('seed')}",
            f"- Stragglers: fraction {exp.get('stragglers', 'n/a')}, policy "
            f"{exp.get('straggler_policy', 'n/a')}; client failure rate "
            f"{exp.get('failure_rate', 'n/a')}",
        ]
    )


def _metrics(run: Run) -> str:
    r = run.results
    return "\n".join(
        [
            "## Metrics",
            "",
            "| evaluation | accuracy (fraction correct) | loss (mean cross-entropy, nats) |",
            "| --- | ---: | ---: |",
            f"| centralized (server's test split) | {shown(r.get('accuracy'))} | "
            f"{shown(r.get('loss'))} |",
            f"| federated (clients' local test splits, weighted by examples) | "
            f"{shown(r.get('federated_accuracy'))} | {shown(r.get('federated_loss'))} |",
            *_personalized_rows(r.get("personalized_accuracy")),
            "",
            f"After {r.get('rounds_completed', 'n/a')} of {r.get('num_rounds', 'n/a')} rounds, "
            f"in {shown(r.get('duration_s'), '.1f')} s.",
        ]
    )


def _personalized_rows(section: dict[str, Any] | None) -> list[str]:
    """The personalized evaluation: each client's own model (the global one for algorithms
    that do not personalize) on its own test split, beside the global model on the same."""
    if not section or not section.get("clients"):
        return []
    g = section.get("global", {})
    return [
        "",
        f"Per client, round {section['round']}, {section['clients']} clients (each client's "
        "accuracy on its own test split; mean over clients, not weighted):",
        "",
        "| model each client uses | mean | worst 10 % | std | min | max |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {label} | {shown(s.get('mean'))} | {shown(s.get('worst_10pct'))} | "
            f"{shown(s.get('std'))} | {shown(s.get('min'))} | {shown(s.get('max'))} |"
            for label, s in (("its personalized model", section), ("the global model", g))
        ),
    ]


@dataclass(frozen=True)
class Fairness:
    """Spread of the clients' local test accuracy in one round."""

    round: int
    clients: int
    mean: float
    std: float  # population std: these are all the clients evaluated, not a sample
    min: float
    max: float
    worst_mean: float  # mean of the worst ceil(10 %) of the clients
    worst_count: int


def client_fairness(clients: Sequence[dict[str, str]]) -> Fairness | None:
    """Accuracy across clients from the ``evaluate`` rows of the last round that has any.

    The last round is the final model's (or the closest to it); each client counts once,
    unweighted, because fairness asks how the *worst-served clients* fare, not the average
    example. The worst-off group is the ceil(10%) lowest clients, at least one.
    """
    by_round: dict[int, list[float]] = {}
    for row in clients:
        if row.get("phase") != "evaluate" or row.get("status") != "ok":
            continue
        accuracy, rnd = number(row.get("accuracy")), number(row.get("round"))
        if accuracy is not None and rnd is not None:
            by_round.setdefault(int(rnd), []).append(accuracy)
    if not by_round:
        return None
    last = max(by_round)
    s = spread(by_round[last])  # the rule the record's personalized_accuracy uses too
    return Fairness(
        round=last,
        clients=s["clients"],
        mean=s["mean"],
        std=s["std"],
        min=s["min"],
        max=s["max"],
        worst_mean=s["worst_10pct"],
        worst_count=worst_count(s["clients"]),
    )


def _fairness(clients: Sequence[dict[str, str]]) -> str:
    head = ["## Fairness across clients", ""]
    f = client_fairness(clients)
    if f is None:
        return "\n".join(
            [
                *head,
                "Not measured: no client evaluated the model on its local test split "
                "(the dataset has no client test split, or no evaluation round was recorded).",
            ]
        )
    return "\n".join(
        [
            *head,
            f"Local test accuracy of the {f.clients} clients evaluated in round {f.round}, "
            "each client counted once:",
            "",
            "| mean (fraction) | std | min | max | worst 10% mean |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {f.mean:.4f} | {f.std:.4f} | {f.min:.4f} | {f.max:.4f} | {f.worst_mean:.4f} "
            f"({f.worst_count} client{'s' if f.worst_count > 1 else ''}) |",
        ]
    )


def _robustness(run: Run) -> str:
    columns = ("clients_trained", "clients_failed", "clients_straggled", "clients_dropped")
    training = [r for r in run.rounds if number(r.get("clients_trained")) is not None]
    totals = {c: int(sum(number(r.get(c)) or 0 for r in training)) for c in columns}
    head = ["## Failures and stragglers", ""]
    if not training:
        return "\n".join([*head, "No training round was recorded."])
    return "\n".join(
        [
            *head,
            f"Over {len(training)} training round{'s' if len(training) != 1 else ''}, "
            f"{totals['clients_trained']} client training "
            f"tasks: {totals['clients_failed']} failed, {totals['clients_straggled']} "
            f"straggled, {totals['clients_dropped']} dropped (the straggler policy decides "
            "whether a straggler's partial work was aggregated or dropped).",
        ]
    )


def lineage_section(run: Run) -> str:
    """The chain of hashes the model came from (``lineage.json``) and its digest, which
    ``fedlab-lineage`` checks this card against. Read, not verified: a card is written from
    whatever the record holds, and verifying is the command's job."""
    head = ["## Lineage", ""]
    doc = lineage.read_lineage(run.path)
    if doc is None or not isinstance(doc.get("digest"), str):
        return "\n".join([*head, "Not recorded (a record from before fedlab wrote "
                           "`lineage.json`, or a run that never closed)."])
    values = {"dataset": "its arrays (re-derived by `--data`)", "code": "git commit and diff",
              "results": "values in `results.json`"}
    rows = [
        f"| {stage['stage']} | `{str(stage.get('sha256'))[:16]}` | "
        f"{', '.join(f'`{f}`' for f in stage.get('files') or {}) or values.get(name, 'values')} |"
        for name, stage in lineage.stage_map(doc).items()
    ]
    return "\n".join([
        *head,
        lineage.card_digest_line(doc["digest"]),
        "",
        "Each stage's sha256 (first 16 hex digits; all of them in `lineage.json`): the dataset's "
        "arrays, each client's indices, the resolved config, the code (git commit and "
        "uncommitted diff), the last checkpoint, the final model, the per-round metrics and "
        "the final results. `fedlab-lineage "
        f"{run.path.name}` re-hashes the files and names the first that changed.",
        "",
        "| stage | sha256 | hashed from |",
        "| --- | --- | --- |",
        *rows,
    ])


def gate_section(run: Run) -> str:
    """The release gate's verdict (``fedlab-gate``), rule by rule, as ``results.json`` holds
    it; a run no policy was checked against says so."""
    head = ["## Release gate", ""]
    gate = run.section("gate")
    if not gate:
        return "\n".join([*head, "Not checked against a release policy "
                           "(`fedlab-gate RUN_DIR --policy FILE` records a verdict here)."])
    verdict = "**passed**" if gate.get("passed") else "**failed**"
    sha = str(gate.get("policy_sha256"))[:16]
    rows = [
        f"| `{r.get('rule')}` | {r.get('bound')} | {_gate_value(r.get('value'))} | "
        f"{'pass' if r.get('passed') else 'FAIL'} |"
        for r in gate.get("rules") or []
    ]
    return "\n".join([
        *head,
        f"{verdict} against `{gate.get('policy')}` (sha256 `{sha}`) at {gate.get('at')}.",
        "",
        "| rule | bound | value | result |",
        "| --- | --- | ---: | --- |",
        *rows,
    ])


def _gate_value(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, ".6g")
    return cell(value) or "n/a"


def _reproduce(run: Run) -> str:
    overrides = [str(o) for o in run.results.get("overrides") or []]
    versions = ", ".join(f"{k} {v}" for k, v in (run.results.get("versions") or {}).items())
    return "\n".join(
        [
            "## Reproduce",
            "",
            f"`{shlex.join(['fedlab-run', *overrides])}`",
            "",
            f"The resolved configuration is `config.yaml`. Versions: {versions or 'n/a'}.",
        ]
    )
