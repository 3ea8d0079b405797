"""A tracker defined outside fedlab, as a researcher would write one: client wall-clock time.

Used by tests/test_tracker_plugin.py through config only
(``+trackers.wallclock._target_=wallclock_tracker.WallClockTracker``). ``after`` makes it read
the carbon tracker's per-round energy (when carbon runs) to report joules per client-second.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fedlab.trackers.base import Objective, RoundContext, RunContext, Tracker

#: Test hook: the round whose end raises, to interrupt a run deterministically.
FAIL_AT_ENV = "WALLCLOCK_FAIL_AT_ROUND"


class WallClockTracker(Tracker):
    """Seconds each client spent training (as it reported them), per client and per round."""

    name = "wallclock"
    round_columns = ("wall_s", "client_rounds")
    client_columns = ("wall_s",)
    after = ("carbon",)
    objectives = (
        Objective(
            "wall_s",
            (("wallclock", "total_s"),),
            unit="s",
            header="client wall s",
            front="wallclock",
            axis="client wall-clock seconds",
            measured=True,
        ),
    )

    def __init__(self, digits: int = 6) -> None:
        self.digits = digits
        self.total_s = 0.0
        self.client_rounds = 0
        self.joules_per_s: float | None = None

    @classmethod
    def build(cls, run: RunContext, **options: Any) -> WallClockTracker:
        return cls(**options)

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        if os.environ.get(FAIL_AT_ENV) == str(ctx.server_round):
            raise RuntimeError(f"wallclock: asked to fail at round {ctx.server_round}")
        spent = 0.0
        trained = 0
        for row in ctx.tally.rows:
            if row["phase"] == "train" and row["status"] == "ok":
                row["wall_s"] = round(float(row["duration_s"]), self.digits)
                spent += row["wall_s"]
                trained += 1
        self.total_s += spent
        self.client_rounds += trained
        kwh = ctx.row.get("energy_kwh")  # the carbon tracker ran first (``after``)
        if kwh is not None and spent > 0:
            self.joules_per_s = kwh * 3.6e6 / spent
        return {"wall_s": spent, "client_rounds": self.client_rounds}

    def console(self, row: Mapping[str, Any]) -> str | None:
        return f"wall {row['wall_s']:.2f} s"

    def summary(self) -> dict[str, Any]:
        return {
            "total_s": self.total_s,
            "client_rounds": self.client_rounds,
            "joules_per_client_s": self.joules_per_s,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"total_s": self.total_s, "client_rounds": self.client_rounds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.total_s = float(state["total_s"])
        self.client_rounds = int(state["client_rounds"])

    @classmethod
    def card_section(cls, run: Any) -> str | None:
        section = run.results.get("wallclock") or {}
        return (
            "## Client wall-clock time\n\n"
            f"{section.get('total_s', 0):.3f} s over {section.get('client_rounds', 0)} "
            "client-rounds of training."
        )
