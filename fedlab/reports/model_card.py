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

import math
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedlab.record.reader import Run, cell, load_run, number, shown
from fedlab.record.run_dir import write_text

CARD = "model_card.md"

#: Share of clients whose mean accuracy is reported as the worst-off group.
WORST_SHARE = 0.10


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
            "",
            f"After {r.get('rounds_completed', 'n/a')} of {r.get('num_rounds', 'n/a')} rounds, "
            f"in {shown(r.get('duration_s'), '.1f')} s.",
        ]
    )


@dataclass(frozen=True)
class Fairness:
    """Spread of the clients' local test accuracy in one round."""

    round: int
    clients: int
    mean: float
    std: float  # population std: these are all the clients evaluated, not a sample
    min: float
    max: float
    worst_mean: float  # mean of the worst ceil(WORST_SHARE * clients) clients
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
    values = sorted(by_round[last])
    worst = max(1, math.ceil(WORST_SHARE * len(values)))
    return Fairness(
        round=last,
        clients=len(values),
        mean=statistics.fmean(values),
        std=statistics.pstdev(values),
        min=values[0],
        max=values[-1],
        worst_mean=statistics.fmean(values[:worst]),
        worst_count=worst,
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
