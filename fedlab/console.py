"""Console output: fedlab's one line per event, and everyone else's noise kept out of it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

SEPARATOR = " | "


def line(parts: Iterable[str | None]) -> str:
    """fedlab's console line: its parts joined by `` | `` (empty parts left out). Every line a
    run prints (the first, each round's, the last) is built here."""
    return SEPARATOR.join(part for part in parts if part)


def round_line(row: Mapping[str, Any], num_rounds: int, parts: Iterable[str | None]) -> str:
    """A round's progress line from its ``rounds.csv`` row; ``parts``: who trained, then each
    tracker's fragment. The time is the run's elapsed time (cumulative, since the server
    began round 0), not the round's own, and the line says so."""
    fed = row["federated_accuracy"]
    return line(
        [
            f"round {row['round']:3d}/{num_rounds}",
            f"acc {row['central_accuracy']:.4f}",
            f"loss {row['central_loss']:.4f}",
            f"fed acc {'  -   ' if fed is None else f'{fed:.4f}'}",
            *parts,
            f"{row['elapsed_s']:.1f} s elapsed",
        ]
    )


def setup_logging() -> None:
    """Quiet Flower, Ray and friends after Hydra configured logging.

    Flower's ``flwr`` logger carries its own console handler and also propagates to the root
    logger, so under Hydra every Flower line would print twice; fedlab removes that handler
    and lets the root handlers (console and ``run.log``) show Flower's warnings once.
    """
    flwr_logger = logging.getLogger("flwr")
    for handler in list(flwr_logger.handlers):
        if type(handler).__name__ == "ConsoleHandler":
            flwr_logger.removeHandler(handler)
    flwr_logger.setLevel(logging.WARNING)
    flwr_logger.propagate = True
    flwr_logger.addFilter(_drop_run_simulation_deprecation)
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
    warnings.filterwarnings("ignore", message=".*run_simulation.*", category=DeprecationWarning)


def _drop_run_simulation_deprecation(record: logging.LogRecord) -> bool:
    """flwr 1.42 warns on every ``run_simulation`` call, which fedlab uses on purpose (the
    pinned programmatic entry point; see the guide). Keep every other warning."""
    return "DEPRECATED FEATURE" not in str(record.msg) and "deprecated feature" not in str(
        record.msg
    )
