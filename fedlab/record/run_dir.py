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
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = "fedlab.run/1"
RESULTS = "results.json"

#: The columns every run has; each configured tracker appends its own
#: (:attr:`fedlab.trackers.base.Tracker.round_columns` / ``client_columns``).
ROUND_COLUMNS = (
    "round",
    "central_loss",
    "central_accuracy",
    "federated_loss",
    "federated_accuracy",
    "personalized_accuracy",
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
    "sim_start_utc",
    "sim_end_utc",
    "wait_s",
)
CLIENT_COLUMNS = (
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
    "personal_loss",
    "personal_accuracy",
    "duration_s",
    "cpu_s",
    "bytes_down",
    "bytes_up",
    "error",
)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` if the block succeeds."""
    # Created with mode 0o666 so the umask applies as to any file (mkstemp would make it 0600,
    # and reading the umask means setting it, which races with other threads).
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name next to {path}")
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


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str], header: bool = True) -> str:
    """``rows`` as CSV text with a fixed header (missing values are empty cells)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Atomically write ``rows`` with a fixed header (missing values are empty cells)."""
    write_text(path, csv_text(rows, columns))


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

    def __init__(
        self,
        run_dir: Path,
        round_columns: Sequence[str] = ROUND_COLUMNS,
        client_columns: Sequence[str] = CLIENT_COLUMNS,
    ) -> None:
        self.dir = run_dir
        self.round_columns = list(round_columns)
        self.client_columns = list(client_columns)
        self.results: dict[str, Any] = {}
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        # The CSV text of the rows written so far: each round serializes only its own rows and
        # rewrites the file (atomically) from it. Serializing every row again each round was
        # quadratic in the run's length: 0.2 s of a 20-round run of 110 messages a round.
        self._text = {
            "rounds.csv": [csv_text([], self.round_columns)],
            "clients.csv": [csv_text([], self.client_columns)],
        }

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
    def resume(
        cls,
        run_dir: Path,
        upto_round: int,
        round_columns: Sequence[str] = ROUND_COLUMNS,
        client_columns: Sequence[str] = CLIENT_COLUMNS,
    ) -> RunRecord:
        """Reopen a record to continue it after round ``upto_round`` (later rows dropped)."""
        record = cls(run_dir, round_columns, client_columns)
        record.results = json.loads((run_dir / RESULTS).read_text())
        record.rounds = [
            r for r in _typed(read_csv(run_dir / "rounds.csv")) if r["round"] <= upto_round
        ]
        record.clients = [
            r for r in _typed(read_csv(run_dir / "clients.csv")) if r["round"] <= upto_round
        ]
        record._write(record.rounds, record.clients)
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
        self._write([row], client_rows)

    def _write(self, rounds: list[dict[str, Any]], clients: list[dict[str, Any]]) -> None:
        """Add ``rounds`` and ``clients`` to the CSV text and rewrite both files."""
        for name, rows, columns in (("rounds.csv", rounds, self.round_columns),
                                    ("clients.csv", clients, self.client_columns)):  # fmt: skip
            chunks = self._text[name]
            chunks.append(csv_text(rows, columns, header=False))
            if len(chunks) > 64:  # keep the join cheap
                chunks[:] = ["".join(chunks)]
            write_text(self.dir / name, "".join(chunks))

    def finish(self, status: str, error: str | None = None, **fields: Any) -> None:
        """Mark the run ``completed``, ``failed`` or ``interrupted``."""
        self.update(status=status, error=error, finished_at=now(), **fields)

    def save_model(self, state_dict: dict[str, Any]) -> None:
        """Save final weights as safetensors (loading it can never execute code)."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
        with atomic_path(self.dir / "model.safetensors") as tmp:
            save_file(tensors, str(tmp))


def load_model(path: Path) -> dict[str, Any]:
    """Load weights saved by :meth:`RunRecord.save_model` (safetensors: no pickle)."""
    from safetensors.torch import load_file

    return load_file(str(path))
