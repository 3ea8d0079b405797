"""Privacy as a tracker: the run's epsilon round by round, and the DP it puts into training.

Local DP (DP-SGD in the clients) adds its settings to every training instruction and reads
back what each client did; central DP (user-level DP-FedAvg) wraps the server's strategy in
Flower's DP wrapper. Either way :class:`~fedlab.trackers.privacy.ledger.PrivacyLedger`
composes the releases into epsilon after every round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from fedlab.trackers.base import LedgerTracker, Objective, RoundContext, RunContext, StopRun

if TYPE_CHECKING:
    from fedlab.config.experiment import Experiment
    from fedlab.data.partition import FederatedData
    from fedlab.trackers.privacy.ledger import PrivacyLedger


class PrivacyTracker(LedgerTracker):
    """Differential privacy of the run (``privacy`` group); inactive with ``privacy=none``."""

    name = "privacy"
    round_columns = ("epsilon",)
    client_columns = ("dp_noise_multiplier", "dp_sample_rate", "dp_steps", "epsilon")
    reply_metrics: ClassVar[Mapping[str, str]] = {
        "dp-noise-multiplier": "dp_noise_multiplier",
        "dp-sample-rate": "dp_sample_rate",
        "dp-steps": "dp_steps",
    }
    report_module = "fedlab.trackers.privacy.report"
    objectives = (
        Objective(
            "epsilon",
            (("privacy", "epsilon"),),
            header="epsilon",
            front="privacy",
            axis="privacy loss ε (lower is more private)",
        ),
        Objective("delta", (("privacy", "delta"),)),
    )

    def __init__(self, ledger: PrivacyLedger, exp: Experiment) -> None:
        super().__init__(ledger)
        self.cfg = exp.cfg
        self.clients_per_round = ledger.clients_per_round

    @classmethod
    def check(cls, exp: Experiment) -> None:
        """Central DP only over a strategy that declares a mean aggregate (its YAML's
        ``aggregate``); the values' own ranges were checked by the config schema."""
        from fedlab.config.schema import ConfigError
        from fedlab.trackers.privacy.central import check_central_dp, check_central_sampling

        privacy = exp.cfg.privacy
        if privacy.mode == "central":
            check_central_dp(exp.cfg.strategy)
            check_central_sampling(privacy, exp.cfg.strategy, exp.cfg.num_clients)
        elif privacy.mode == "local" and privacy.audit != "none":
            raise ConfigError("privacy.audit", "canaries audit central DP only (privacy=central)")
        elif privacy.mode == "local" and privacy.budget_epsilon is not None:
            raise ConfigError(
                "privacy.budget_epsilon", "is supported for privacy=central only for now"
            )

    @classmethod
    def prepare(cls, exp: Experiment, fed: FederatedData) -> list[str]:
        if exp.cfg.privacy.mode == "none":  # nothing to plan: the ledger imports Opacus (1-2 s)
            return []
        from fedlab.trackers.privacy.ledger import plan_privacy

        return plan_privacy(exp, fed)

    @classmethod
    def build(cls, run: RunContext, **options: Any) -> PrivacyTracker | None:
        if run.exp.cfg.privacy.mode == "none":
            return None
        from fedlab.trackers.privacy.ledger import central_ledger

        return cls(central_ledger(run.exp), run.exp)

    @classmethod
    def inactive_summary(cls, exp: Experiment) -> dict[str, Any]:
        return {"mode": "none", "unit": None, "epsilon": None, "delta": None, "accountant": None}

    def wrap_strategy(self, strategy: Any) -> Any:
        """Central DP: Flower's DP wrapper around the strategy (its accountant is the ledger's)."""
        if self.cfg.privacy.mode != "central":
            return strategy
        from fedlab.trackers.privacy.central import central_dp_strategy

        wrapped = central_dp_strategy(
            strategy,
            self.cfg.privacy,
            self.cfg.strategy,
            self.clients_per_round,
            self.cfg.num_clients,
            self.cfg.seed,
        )
        self.ledger.mechanism = wrapped
        return wrapped

    def train_config(self) -> dict[str, Any]:
        privacy = self.cfg.privacy
        if privacy.mode == "local":
            return {
                "dp-noise-multiplier": privacy.noise_multiplier,
                "dp-max-grad-norm": privacy.max_grad_norm,
                "dp-grad-sample-mode": privacy.grad_sample_mode,
            }
        return {"equal-weights": True}  # central: the noise covers an unweighted mean

    def initial_columns(self) -> dict[str, Any]:
        return {"epsilon": 0.0}  # nothing released yet

    def start_round(self, server_round: int) -> None:
        """Stop before a round whose release would take epsilon past ``privacy.budget_epsilon``."""
        budget = self.cfg.privacy.budget_epsilon
        if budget is None or self.cfg.privacy.mode != "central":
            return
        upcoming = self.ledger.epsilon_after_next_round()
        if upcoming > budget:
            spent = self.ledger.epsilon or 0.0
            self.ledger.exhausted = {
                "round": server_round - 1,
                "epsilon": spent,
                "next_round_epsilon": upcoming,
            }
            raise StopRun(
                "budget_exhausted",
                f"privacy budget epsilon {budget:g} reached: round {server_round} would take "
                f"epsilon from {spent:.4g} to {upcoming:.4g}",
            )

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        rows = ctx.tally.rows
        per_client = self.ledger.after_round(rows)
        for row in rows:
            if row["phase"] == "train" and row["client"] in per_client:
                row["epsilon"] = per_client[row["client"]]
        return {"epsilon": self.ledger.epsilon}

    def console(self, row: Mapping[str, Any]) -> str | None:
        return None if self.ledger.epsilon is None else f"eps {self.ledger.epsilon:.3g}"

    def final_note(self, section: Any) -> str | None:
        return f"privacy: {section['guarantee']}"
