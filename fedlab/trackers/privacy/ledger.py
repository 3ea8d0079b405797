"""The run's privacy budget: planning the noise before the run, and the ledger during it.

:func:`plan_privacy` settles what depends on the data (the noise for a target epsilon, the
delta rule) before the record is written; :class:`PrivacyLedger` composes every round's
releases into the run's epsilon and writes the record's ``privacy`` section. Both are used by
:class:`fedlab.trackers.privacy.tracker.PrivacyTracker`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fedlab.config.privacy_rules import ACCOUNTANTS_FOR_SAMPLING, delta_warning
from fedlab.config.schema import ConfigError
from fedlab.trackers.privacy.accounting import (
    ClientAccountants,
    noise_for_target_epsilon,
)
from fedlab.trackers.privacy.amplified import (
    NEIGHBOURS,
    central_epsilon,
    release_noise,
    solve_noise,
)

if TYPE_CHECKING:
    from fedlab.config.experiment import Experiment
    from fedlab.config.schema import PrivacyConfig
    from fedlab.data.partition import FederatedData


def plan_local_noise(
    target_epsilon: float,
    delta: float,
    planned: Mapping[int, tuple[float, int]],
    accountant: str = "rdp",
) -> float:
    """The smallest noise multiplier that keeps every client within ``target_epsilon``.

    ``planned`` maps each client to its (sample_rate, total noisy steps) over the run as the
    seeded schedule plans it. Epsilon falls as noise grows, so the noise the most exposed
    client needs suffices for all of them.
    """
    return max(
        noise_for_target_epsilon(target_epsilon, delta, q, steps, accountant)
        for q, steps in planned.values()
        if steps > 0
    )


class PrivacyLedger:
    """Epsilon of a run, round by round, from what the clients and the server actually did.

    * local DP: each client's reported (noise, sample rate, steps) is composed into that
      client's own Opacus accountant (:class:`ClientAccountants`); the run's epsilon is the
      largest over clients.
    * central DP: one Gaussian release per round on the clients' clipped updates, accounted
      with amplification by the round's client sampling
      (:mod:`fedlab.trackers.privacy.amplified`). Poisson: every round is one release of noise
      z, empty rounds included (the mechanism ran). Fixed size: a round where n of the m
      planned clients were aggregated releases their mean (replace-one sensitivity 2C/n) with
      noise sized for C/m: noise multiplier z n / (2 m); a round with none releases nothing.
    """

    def __init__(
        self,
        cfg: PrivacyConfig,
        num_clients: int,
        clients_per_round: int,
        sampling: str = "fixed",
        rate: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.sampling = sampling
        self.rate = clients_per_round / num_clients if rate is None else rate
        self.clients = ClientAccountants(cfg.accountant if cfg.mode == "local" else "rdp")
        self.releases: list[tuple[float, int]] = []  # central: (accounted z, aggregated)
        self.epsilon: float | None = None
        self.exhausted: dict[str, Any] | None = None  # the budget stop: round, epsilon
        self.mechanism: Any = None  # the central-DP wrapper (its canaries, for the audit)

    def after_round(self, rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
        """Compose one round's releases; returns each trained client's epsilon (local DP)."""
        cfg = self.cfg
        trained = [r for r in rows if r["phase"] == "train" and r.get("dp_steps")]
        if cfg.mode == "local":
            for r in trained:
                self.clients.record(
                    r["client"], r["dp_noise_multiplier"], r["dp_sample_rate"], int(r["dp_steps"])
                )
            per_client = {
                r["client"]: self.clients.epsilon(r["client"], cfg.delta, cfg.conversion)
                for r in trained
            }
            self.epsilon = (
                self.clients.max_epsilon(cfg.delta, cfg.conversion) if len(self.clients) else 0.0
            )
            return per_client
        aggregated = sum(1 for r in rows if r["phase"] == "train" and r["status"] == "ok")
        if aggregated or self.sampling == "poisson":
            z = release_noise(
                self.sampling, cfg.noise_multiplier, aggregated, self.clients_per_round
            )
            self.releases.append((z, aggregated))
        self.epsilon = self.central_epsilon([z for z, _ in self.releases])
        return {}

    def central_epsilon(self, noises: Sequence[float], accountant: str | None = None) -> float:
        """Epsilon of central releases with these noise multipliers (the run's accountant)."""
        cfg = self.cfg
        return central_epsilon(
            noises,
            self.sampling,
            self.rate,
            self.clients_per_round,
            self.num_clients,
            cfg.delta,
            accountant or cfg.accountant,
            cfg.conversion,
        )

    def epsilon_after_next_round(self) -> float:
        """Central: epsilon once the next round (a full one, as planned) has released."""
        z = release_noise(
            self.sampling, self.cfg.noise_multiplier, self.clients_per_round, self.clients_per_round
        )
        return self.central_epsilon([*(z for z, _ in self.releases), z])

    def accountant_name(self) -> str:
        """Which accountant produced the epsilon, in words."""
        cfg = self.cfg
        opacus = f"Opacus {cfg.accountant.upper()} ({cfg.conversion} conversion)"
        if cfg.mode == "local":
            return f"{opacus}, one per client, Poisson sampling of records"
        if self.sampling == "fixed":
            return (
                "dp-accounting RDP, sampling without replacement of "
                f"{self.clients_per_round} of {self.num_clients} clients, replace-one"
            )
        source = opacus if cfg.accountant != "pld" else "dp-accounting PLD"
        return f"{source}, Poisson client sampling at q={self.rate:.3g}, add/remove-one"

    def guarantee(self) -> str:
        """The guarantee in one line of plain words."""
        cfg = self.cfg
        eps = "inf" if self.epsilon is None or math.isinf(self.epsilon) else f"{self.epsilon:.3g}"
        if cfg.mode == "local":
            return (
                f"(epsilon={eps}, delta={cfg.delta:g}) record-level DP for every client's "
                f"examples (DP-SGD, noise {cfg.noise_multiplier:.3g}, clip "
                f"{cfg.max_grad_norm:g}; {self.accountant_name()})"
            )
        clip = f"clip {cfg.max_grad_norm:g}" if cfg.clipping == "fixed" else "adaptive clipping"
        return (
            f"(epsilon={eps}, delta={cfg.delta:g}) user-level DP for each client's whole "
            f"dataset (DP-FedAvg, noise {cfg.noise_multiplier:.3g}, {clip}; "
            f"{self.accountant_name()})"
        )

    def summary(self) -> dict[str, Any]:
        """The ``privacy`` section of ``results.json``."""
        cfg = self.cfg
        section: dict[str, Any] = {
            "mode": cfg.mode,
            "unit": "record" if cfg.mode == "local" else "user",
            "epsilon": self.epsilon,
            "delta": cfg.delta,
            "accountant": self.accountant_name(),
            "noise_multiplier": cfg.noise_multiplier,
            "max_grad_norm": cfg.max_grad_norm if cfg.clipping == "fixed" else None,
            "target_epsilon": cfg.target_epsilon,
            "budget_epsilon": cfg.budget_epsilon,
            "budget_exhausted": self.exhausted,
            "guarantee": self.guarantee(),
        }
        if cfg.mode == "local":
            rates = [q for cid in self.clients.client_ids for _, q, _ in self.clients.history(cid)]
            return section | {
                "grad_sample_mode": cfg.grad_sample_mode,
                "sample_rate_min": min(rates, default=None),
                "sample_rate_max": max(rates, default=None),
                "client_epsilons": self.clients.epsilons(cfg.delta, cfg.conversion),
            }
        noises = [z for z, _ in self.releases]
        section |= {
            "clipping": cfg.clipping,
            "clip_at": cfg.clip_at,
            "client_sampling": self.sampling,
            "client_sampling_rate": self.rate,
            "neighbouring_relation": NEIGHBOURS[self.sampling],
            "mechanism": MECHANISMS[self.sampling],
            "amplification": True,
            "releases": len(self.releases),
            "clients_per_release": [n for _, n in self.releases],
            "accounted_noise_multipliers": noises,
            "epsilons": {
                name: self.central_epsilon(noises, name)
                for name in ACCOUNTANTS_FOR_SAMPLING[self.sampling]
            },
        }
        canaries = getattr(self.mechanism, "canaries", None)
        if canaries is not None:
            section["audit"] = audit_summary(canaries, cfg, self.epsilon)
        return section

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (for checkpoints): the accountants' whole history."""
        return {
            "clients": self.clients.state_dict(),
            "releases": list(self.releases),
            "epsilon": self.epsilon,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.clients.load_state_dict(state["clients"])
        self.releases = [(float(z), int(n)) for z, n in state["releases"]]
        self.epsilon = state["epsilon"]


#: The central mechanism of each client sampling, in words (the record's ``mechanism``).
MECHANISMS: dict[str, str] = {
    "poisson": "noise std z*C on the sum of clipped updates, divided by the expected q*N "
    "(fedlab ExpectedSizeServerSideClipping); empty rounds release noise",
    "fixed": "noise std z*C/m on the mean of the clipped updates (Flower's DP wrapper)",
}


def audit_summary(canaries: Any, cfg: PrivacyConfig, claimed: float | None) -> dict[str, Any]:
    """The one-run audit's result (Steinke, Nasr and Jagielski 2023) beside the claim."""
    from fedlab.trackers.privacy.audit import epsilon_lower_bound, guess_and_count

    guesses, correct = guess_and_count(
        canaries.scores(), canaries.included, cfg.audit_guesses, cfg.audit_guesses_excluded
    )
    bound = epsilon_lower_bound(canaries.count, guesses, correct, cfg.delta, cfg.audit_confidence)
    return {
        "method": "one-run canaries (Steinke, Nasr, Jagielski, NeurIPS 2023)",
        "canaries": canaries.count,
        "canaries_included": int(canaries.included.sum()),
        "guesses": guesses,
        "correct": correct,
        "confidence": cfg.audit_confidence,
        "epsilon_lower_bound": bound,
        "epsilon_claimed": claimed,
        "consistent": claimed is None or bound <= claimed,
        "note": "an empirical check of the accountant, not a proof of the claimed epsilon",
    }


def plan_privacy(exp: Experiment, fed: FederatedData) -> list[str]:
    """Settle privacy parameters that depend on the data; returns warnings to show.

    With ``privacy.target_epsilon`` the noise multiplier is chosen here, from each
    client's planned participation in the seeded schedule, and written back into the
    config so the record says which noise was used.
    """
    privacy, cfg = exp.cfg.privacy, exp.cfg
    if privacy.mode == "none":
        return []
    if privacy.mode == "central":
        warning = delta_warning(privacy.delta, cfg.num_clients, unit="clients")
        ledger = central_ledger(exp)
        if privacy.target_epsilon is not None:

            def epsilon_of(z: float) -> float:
                m = ledger.clients_per_round
                return ledger.central_epsilon([release_noise(ledger.sampling, z, m, m)] * rounds)

            rounds = cfg.num_rounds
            try:
                privacy.noise_multiplier = solve_noise(privacy.target_epsilon, epsilon_of)
            except ValueError as err:
                raise ConfigError("privacy.target_epsilon", str(err)) from None
        check_budget(privacy, ledger.epsilon_after_next_round())
        return [warning] if warning else []
    sizes = [len(idx) for idx in fed.client_train]
    warning = delta_warning(privacy.delta, min(sizes), unit="records of the smallest client")
    if privacy.target_epsilon is not None:
        scheduler = exp.scheduler(fed)
        planned: dict[int, tuple[float, int]] = {}
        for pid, n in enumerate(sizes):
            batches = math.ceil(n / cfg.client.batch_size)
            steps = sum(
                max(1, math.ceil(plan.epochs[pid] * batches))
                for plan in map(scheduler.plan, range(1, cfg.num_rounds + 1))
                if pid in plan.epochs
            )
            planned[pid] = (1 / batches, steps)
        try:
            privacy.noise_multiplier = plan_local_noise(
                privacy.target_epsilon, privacy.delta, planned, privacy.accountant
            )
        except ValueError as err:
            raise ConfigError("privacy.target_epsilon", str(err)) from None
    return [warning] if warning else []


def central_ledger(exp: Experiment) -> PrivacyLedger:
    """The central-DP ledger of ``exp``: its client sampling, rate and planned round size."""
    cfg = exp.cfg
    scheduler = exp.scheduler()
    poisson = cfg.strategy.client_sampling == "poisson"
    return PrivacyLedger(
        cfg.privacy,
        cfg.num_clients,
        scheduler.trained_per_round(),
        cfg.strategy.client_sampling,
        cfg.strategy.fraction_train if poisson else None,
    )


def check_budget(privacy: PrivacyConfig, first_round: float) -> None:
    """A budget below what the first round costs would stop the run before it trains."""
    budget = privacy.budget_epsilon
    if budget is not None and first_round > budget:
        raise ConfigError(
            "privacy.budget_epsilon",
            f"{budget:g} is below the first round's epsilon {first_round:.4g} (noise "
            f"{privacy.noise_multiplier:.3g}, delta {privacy.delta:g}): no round could train; "
            "raise the budget or the noise",
        )
