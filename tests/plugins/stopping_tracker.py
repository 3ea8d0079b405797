"""A tracker that ends the run on purpose (fedlab.trackers.base.StopRun), as a privacy budget
or a divergence guard does: after round ``after_round`` is recorded, or before it trains."""

from __future__ import annotations

from typing import Any

from fedlab.trackers.base import RoundContext, StopRun, Tracker


class StoppingTracker(Tracker):
    name = "stopper"

    def __init__(self, at_round: int = 2, before: bool = False) -> None:
        self.at_round = at_round
        self.before = before

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        if not self.before and ctx.server_round == self.at_round:
            raise StopRun("stop_test", f"asked to stop after round {ctx.server_round}")
        return {}

    def start_round(self, server_round: int) -> None:
        if self.before and server_round == self.at_round:
            raise StopRun("stop_test", f"asked to stop before round {server_round}")
