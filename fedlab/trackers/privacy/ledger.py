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

from fedlab.config.privacy_rules import delta_warning
from fedlab.config.schema import ConfigError
from fedlab.trackers.privacy.accounting import (
    ClientAccountants,
    compute_epsilon,
    noise_for_target_epsilon,
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
    * central DP: one Gaussian release per round on the clients' updates. A round where only
      n of the m planned clients were aggregated gives the mean a sensitivity of C/n while
      the noise was sized for C/m, so its effective noise multiplier is z * n / m. Flower's
      accountant (when attached) assumes every round full; when a round is not, fedlab
      accounts the whole run with Opacus at the effective multipliers, and says so.
    """

    def __init__(self, cfg: PrivacyConfig, num_clients: int, clients_per_round: int) -> None:
        self.cfg = cfg
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.clients = ClientAccountants(cfg.accountant)
        self.releases: list[tuple[float, int]] = []  # central: (effective z, aggregated)
        self.flower_strategy: Any = None
        self.epsilon: float | None = None

    @property
    def flower_accounted(self) -> bool:
        """Whether Flower's accountant gives the run's epsilon (central, every round full)."""
        return (
            self.flower_strategy is not None
            and getattr(self.flower_strategy, "accountant", None) is not None
            and all(n == self.clients_per_round for _, n in self.releases)
        )

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
        if aggregated:
            z_eff = cfg.noise_multiplier * aggregated / self.clients_per_round
            self.releases.append((z_eff, aggregated))
        self.epsilon = self._central_epsilon()
        return {}

    def _central_epsilon(self) -> float:
        if not self.releases:
            return 0.0
        if self.flower_accounted:
            return float(self.flower_strategy.privacy_spent().epsilon)
        history = [(z, 1.0, 1) for z, _ in self.releases]  # no amplification: q = 1
        return compute_epsilon(history, self.cfg.delta, self.cfg.accountant, self.cfg.conversion)

    def accountant_name(self) -> str:
        """Which accountant produced the epsilon, in words."""
        cfg = self.cfg
        opacus = f"Opacus {cfg.accountant.upper()} ({cfg.conversion} conversion)"
        if cfg.mode == "local":
            return f"{opacus}, one per client, Poisson sampling of records"
        if self.flower_accounted:
            return "Flower RdpAccountant (dp-accounting), no amplification"
        return f"{opacus}, no amplification, effective noise per round"

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
            "guarantee": self.guarantee(),
        }
        if cfg.mode == "local":
            rates = [q for cid in self.clients.client_ids for _, q, _ in self.clients.history(cid)]
            section |= {
                "target_epsilon": cfg.target_epsilon,
                "grad_sample_mode": cfg.grad_sample_mode,
                "sample_rate_min": min(rates, default=None),
                "sample_rate_max": max(rates, default=None),
                "client_epsilons": self.clients.epsilons(cfg.delta, cfg.conversion),
            }
        else:
            section |= {
                "clipping": cfg.clipping,
                "clip_at": cfg.clip_at,
                "client_sampling": "fixed-size without replacement",
                "client_sampling_rate": self.clients_per_round / self.num_clients,
                "amplification": False,
                "releases": len(self.releases),
                "effective_noise_multipliers": [z for z, _ in self.releases],
            }
        return section

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (for checkpoints)."""
        return {
            "clients": self.clients.state_dict(),
            "releases": list(self.releases),
            "epsilon": self.epsilon,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Flower's accountant lives inside the DP wrapper, which a resumed run builds afresh:
        the past releases are composed into it again.
        """
        self.clients.load_state_dict(state["clients"])
        self.releases = [(float(z), int(n)) for z, n in state["releases"]]
        self.epsilon = state["epsilon"]
        accountant = getattr(self.flower_strategy, "accountant", None)
        if accountant is not None:
            from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

            for _ in self.releases:
                accountant.compose(
                    GaussianPrivacyEvent(
                        noise_multiplier=self.cfg.noise_multiplier,
                        sample_size=self.clients_per_round,
                        population_size=self.num_clients,
                    )
                )


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
