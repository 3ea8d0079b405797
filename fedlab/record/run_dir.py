"""The run record: one self-describing directory per run, the only thing reports read.

Layout (documented in the README, "Run record"):

    config.yaml        the resolved configuration
    results.json       status, final metrics and the privacy / carbon / communication sections
    rounds.csv         one row per round (round 0 = the initial model)
    clients.csv        one row per (round, client, phase)
    model.safetensors  final global weights
    partition.png      training labels per client
    curves.png         accuracy and loss per round

Every file is written to a temporary name in the same directory and renamed over the target
(``os.replace`` is atomic on POSIX), so a crash never leaves a half-written result.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = "fedlab.run/1"
RESULTS = "results.json"

ROUND_COLUMNS = [
    "round",
    "central_loss",
    "central_accuracy",
    "federated_loss",
    "federated_accuracy",
    "train_loss",
    "clients_sampled",
    "clients_trained",
    "clients_succeeded",
    "clients_failed",
    "clients_straggled",
    "clients_dropped",
    "clients_evaluated",
    "bytes_down",
    "bytes_up",
    "duration_s",
    "elapsed_s",
    "epsilon",
    "energy_kwh",
    "emissions_kg",
    "compute_kg",
    "communication_kg",
    "sim_start_s",
    "sim_duration_s",
    "clients_missed_deadline",
    "edge_kwh",
    "edge_kg",
]
CLIENT_COLUMNS = [
    "round",
    "client",
    "phase",
    "status",
    "num_examples",
    "local_epochs",
    "local_steps",
    "train_loss",
    "loss",
    "accuracy",
    "duration_s",
    "cpu_s",
    "bytes_down",
    "bytes_up",
    "error",
    "dp_noise_multiplier",
    "dp_sample_rate",
    "dp_steps",
    "epsilon",
    "region",
    "energy_kwh",
    "emissions_kg",
    "device",
    "device_link",
    "device_flops",
    "device_compute_s",
    "device_transfer_s",
    "device_idle_s",
    "device_compute_kwh",
    "device_transfer_kwh",
    "device_idle_kwh",
    "device_kwh",
    "device_kg",
]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` if the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    """Atomically write ``data`` as JSON (NaN and infinities become null: JSON has none)."""
    write_text(path, json.dumps(_finite(data), indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Atomically write ``rows`` with a fixed header (missing values are empty cells)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_figure(figure: Any, path: Path) -> None:
    """Atomically save a matplotlib ``Figure`` as PNG.

    Figures are built as ``matplotlib.figure.Figure`` with an Agg canvas, never through
    pyplot's global state, so saving one never switches a notebook's plotting backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a record CSV as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _typed(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """CSV strings back to numbers (empty cells to None), so resumed rows add up."""

    def convert(text: str) -> Any:
        if text == "":
            return None
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    return [{k: convert(v) for k, v in row.items()} for row in rows]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def now() -> str:
    """The current UTC time in ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def existing_status(run_dir: Path) -> str | None:
    """The status of the run recorded in ``run_dir``, or None if it holds no record."""
    try:
        return json.loads((run_dir / RESULTS).read_text()).get("status")
    except (OSError, ValueError):
        return None


class RunRecord:
    """Writes one run's directory as the run progresses."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.results: dict[str, Any] = {}
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []

    def start(self, config_yaml: str, results: dict[str, Any]) -> None:
        """Write the resolved config and the initial ``results.json`` (status "running")."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.dir / "config.yaml", config_yaml)
        self.results = {
            "schema": SCHEMA,
            "status": "running",
            "error": None,
            "started_at": now(),
            "finished_at": None,
            **results,
        }
        write_json(self.dir / RESULTS, self.results)

    @classmethod
    def resume(cls, run_dir: Path, upto_round: int) -> RunRecord:
        """Reopen a record to continue it after round ``upto_round`` (later rows dropped)."""
        record = cls(run_dir)
        record.results = json.loads((run_dir / RESULTS).read_text())
        record.rounds = [
            r for r in _typed(read_csv(run_dir / "rounds.csv")) if r["round"] <= upto_round
        ]
        record.clients = [
            r for r in _typed(read_csv(run_dir / "clients.csv")) if r["round"] <= upto_round
        ]
        write_csv(run_dir / "rounds.csv", record.rounds, ROUND_COLUMNS)
        write_csv(run_dir / "clients.csv", record.clients, CLIENT_COLUMNS)
        resumed = [*record.results.get("resumed", []), {"after_round": upto_round, "at": now()}]
        record.update(
            status="running",
            error=None,
            finished_at=None,
            rounds_completed=upto_round,
            resumed=resumed,
        )
        return record

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into ``results.json`` and rewrite it."""
        self.results.update(fields)
        write_json(self.dir / RESULTS, self.results)

    def add_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        """Append one round to ``rounds.csv`` and its clients to ``clients.csv``."""
        self.rounds.append(row)
        self.clients.extend(client_rows)
        write_csv(self.dir / "rounds.csv", self.rounds, ROUND_COLUMNS)
        write_csv(self.dir / "clients.csv", self.clients, CLIENT_COLUMNS)

    def finish(self, status: str, error: str | None = None, **fields: Any) -> None:
        """Mark the run ``completed``, ``failed`` or ``interrupted``."""
        self.update(status=status, error=error, finished_at=now(), **fields)

    def save_model(self, state_dict: dict[str, Any]) -> None:
        """Save final weights as safetensors (loading it can never execute code)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
        with atomic_path(self.dir / "model.safetensors") as tmp:
            save_file(tensors, str(tmp))

    def plot_curves(self) -> None:
        """Save ``curves.png``: centralized and federated accuracy and loss per round."""
        from matplotlib.figure import Figure

        timed = [
            (r["sim_start_s"] + r["sim_duration_s"], r["central_accuracy"])
            for r in self.rounds
            if r.get("sim_duration_s") is not None
        ]
        fig = Figure(figsize=(15 if timed else 10, 3.8))
        axes = fig.subplots(1, 3 if timed else 2)
        acc_ax, loss_ax = axes[0], axes[1]
        for prefix, label in (("central", "centralized"), ("federated", "federated")):
            points = [
                (r["round"], r[f"{prefix}_accuracy"], r[f"{prefix}_loss"])
                for r in self.rounds
                if r.get(f"{prefix}_accuracy") is not None
            ]
            if points:
                rounds, acc, loss = zip(*points, strict=True)
                acc_ax.plot(rounds, acc, marker="o", ms=3, label=label)
                loss_ax.plot(rounds, loss, marker="o", ms=3, label=label)
        acc_ax.set(xlabel="round", ylabel="accuracy", title="Test accuracy")
        loss_ax.set(xlabel="round", ylabel="loss", title="Test loss")
        if timed:  # simulated devices: time to accuracy on the edge clock
            first = self.rounds[0]
            start = [(0.0, first["central_accuracy"])] if first["round"] == 0 else []
            seconds, acc = zip(*(start + timed), strict=True)
            axes[2].plot(seconds, acc, marker="o", ms=3, label="centralized")
            axes[2].set(
                xlabel="simulated device time (s)", ylabel="accuracy", title="Time to accuracy"
            )
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend()
        save_figure(fig, self.dir / "curves.png")


def load_model(path: Path) -> dict[str, Any]:
    """Load weights saved by :meth:`RunRecord.save_model` (safetensors: no pickle)."""
    from safetensors.torch import load_file

    return load_file(str(path))
