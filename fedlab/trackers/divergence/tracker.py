"""The divergence guard: warn when the central loss diverges, and stop the run on NaN/inf.

A run that diverges still produces a record that looks like a result (the README's first
example once went 2.3 -> 94 -> 109 -> 217 in three rounds, silently). The rule, applied to the
central test loss after every round:

* **non-finite**: the loss is NaN or infinite (the weights overflowed);
* **growth**: the loss is above ``growth_factor`` (1.5) times its minimum so far (round 0, the
  initial model, included) for ``patience`` (3) consecutive rounds. A single bad round of a
  noisy federation does not count; three in a row of a loss half again above its best does.

Either is a warning on the console and in ``results.json`` (this section's ``warnings``,
gathered into the top-level ``warnings``). ``stop_on_divergence`` decides which ends the run
with status ``diverged`` (exit code 3, as every tracker-stopped run): ``nonfinite`` (default:
nothing more can be learnt from NaN weights), ``any`` (growth too), or ``never``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from logging import getLogger
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedlab.config.schema import ConfigError
from fedlab.trackers.base import RoundContext, RunContext, StopRun, Tracker

if TYPE_CHECKING:
    from fedlab.config.experiment import Experiment

log = getLogger("fedlab")

STOP_CHOICES = ("nonfinite", "any", "never")


class DivergenceTracker(Tracker):
    """Watches the central loss; see the module docstring for the rule."""

    name: ClassVar[str] = "divergence"

    def __init__(
        self,
        run_dir: Path | None = None,
        growth_factor: float = 1.5,
        patience: int = 3,
        stop_on_divergence: str = "nonfinite",
    ) -> None:
        self.run_dir = run_dir
        self.growth_factor, self.patience, self.stop = growth_factor, patience, stop_on_divergence
        self.best = math.inf
        self.best_round = -1  # -1: round 0's loss not read yet
        self.streak = 0
        self.warnings: list[str] = []
        self.diverged: dict[str, Any] | None = None

    @classmethod
    def check(cls, exp: Experiment) -> None:
        options = dict(exp.cfg.trackers.get(cls.name) or {})
        stop = options.get("stop_on_divergence", "nonfinite")
        if stop not in STOP_CHOICES:
            raise ConfigError(
                f"trackers.{cls.name}.stop_on_divergence",
                f"must be one of {', '.join(STOP_CHOICES)}, got '{stop}'",
            )
        if float(options.get("growth_factor", 1.5)) <= 1:
            raise ConfigError(f"trackers.{cls.name}.growth_factor", "must be > 1")
        if int(options.get("patience", 3)) < 1:
            raise ConfigError(f"trackers.{cls.name}.patience", "must be >= 1")

    @classmethod
    def build(cls, run: RunContext, **options: Any) -> DivergenceTracker:
        return cls(run.run_dir, **options)

    def _read_initial_loss(self) -> None:
        """The initial model's loss (round 0, already in ``rounds.csv`` when round 1 ends; no
        hook hands it to trackers): the first minimum."""
        from fedlab.record.run_dir import read_csv

        self.best_round = 0
        path = self.run_dir / "rounds.csv" if self.run_dir is not None else None
        if path is None or not path.exists():
            return
        for row in read_csv(path):
            if row["round"] == "0" and row["central_loss"]:
                loss = float(row["central_loss"])
                self.best = loss if math.isfinite(loss) else math.inf

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        if self.best_round < 0:
            self._read_initial_loss()
        loss = float(ctx.row["central_loss"])
        r = ctx.server_round
        kind = ""
        if not math.isfinite(loss):
            kind = "nonfinite"
            text = f"round {r}: central loss is {loss}: the model diverged"
        elif loss < self.best:
            self.best, self.best_round, self.streak = loss, r, 0
        elif loss > self.growth_factor * self.best:
            self.streak += 1
            if self.streak == self.patience:
                kind = "growth"
                text = (
                    f"round {r}: central loss {loss:.4g} has been above {self.growth_factor}x "
                    f"its minimum {self.best:.4g} (round {self.best_round}) for "
                    f"{self.patience} consecutive rounds: the run is diverging "
                    "(a smaller client.lr usually helps)"
                )
        else:
            self.streak = 0
        if kind:
            self.warnings.append(text)
            log.warning("fedlab: warning: %s", text)
            if self.diverged is None:
                self.diverged = {"round": r, "kind": kind}
            if self.stop == "any" or (self.stop == "nonfinite" and kind == "nonfinite"):
                raise StopRun("diverged", text)
        return {}

    def summary(self) -> dict[str, Any]:
        return {
            "rule": f"central loss NaN/inf, or above {self.growth_factor}x its minimum for "
            f"{self.patience} consecutive rounds",
            "stop_on_divergence": self.stop,
            "diverged": self.diverged,
            "warnings": list(self.warnings),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best if math.isfinite(self.best) else None,
            "best_round": self.best_round,
            "streak": self.streak,
            "warnings": self.warnings,
            "diverged": self.diverged,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.best_round = int(state["best_round"])
        self.streak = int(state["streak"])
        self.warnings = list(state["warnings"])
        self.diverged = state["diverged"]
