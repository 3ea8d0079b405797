"""Console output: fedlab's one line per event, and everyone else's noise kept out of it."""

from __future__ import annotations

import logging
import warnings


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
