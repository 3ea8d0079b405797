"""Central (user-level) DP: which strategies it may wrap, and Flower's DP wrapper around them.

Flower's DP wrappers clip each client update to norm C and add Gaussian noise with std
``z * C / m`` to the aggregate: the sensitivity of the *mean* of m clipped updates. That
noise protects a client only if the strategy's aggregate is such a mean, or a function of it
alone (a server optimiser's step is post-processing and costs no privacy). A strategy says
what its aggregate is in its YAML (``strategy.aggregate``, see
:class:`fedlab.config.schema.StrategyConfig`), and that declaration is all this module reads:
a strategy added by a YAML file gets the same decision as a shipped one, by what it does
rather than by what it is called.

This module imports no Opacus or torch: :func:`check_central_dp` runs at start-up.
"""

from __future__ import annotations

from typing import Any

from fedlab.config.schema import ConfigError, PrivacyConfig, StrategyConfig

#: Declared aggregates that central DP's noise is calibrated to: a (weighted) mean of the
#: clipped updates, possibly post-processed (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi,
#: FedAdagrad). A median, trimmed mean or Krum-type selection can be moved by one client by up
#: to C, not C / m; q-FedAvg reweights updates by each client's loss, so neither is covered.
NOISE_CALIBRATED_AGGREGATES: tuple[str, ...] = ("weighted_mean",)


def check_central_dp(strategy: StrategyConfig) -> None:
    """Refuse central DP over a strategy whose declared aggregate its noise does not cover.

    An undeclared strategy is refused too: guessing "it is probably a mean" is exactly how a
    robust aggregator added by one YAML file would get an epsilon that does not hold.
    """
    allowed = ", ".join(NOISE_CALIBRATED_AGGREGATES)
    if strategy.aggregate is None:
        raise ConfigError(
            "strategy.aggregate",
            f"not declared by strategy '{strategy.name}', and central DP needs it: its noise "
            "(std z*C/m) is calibrated to a mean of the clipped updates, so declare what the "
            f"strategy aggregates in its YAML (central DP allows: {allowed})",
        )
    if strategy.aggregate not in NOISE_CALIBRATED_AGGREGATES:
        raise ConfigError(
            "strategy.aggregate",
            f"central DP cannot be combined with '{strategy.aggregate}' (strategy "
            f"'{strategy.name}'): the DP wrapper's noise (std z*C/m) covers a mean of m clipped "
            "updates, which one client moves by at most C/m, and this aggregate is not such a "
            f"mean, so the reported epsilon would not hold; allowed: {allowed} (fedavg, "
            "fedprox, fedavgm, fedadam, fedyogi, fedadagrad)",
        )


def central_dp_strategy(
    strategy: Any,
    privacy: PrivacyConfig,
    declared: StrategyConfig,
    clients_per_round: int,
    num_clients: int,
    seed: int = 0,
) -> Any:
    """Wrap a Flower strategy in the user-level DP mechanism for ``privacy=central``.

    ``declared`` is the strategy's config, whose ``aggregate`` is checked again here (the
    wrapper is also built by code that never went through start-up validation). Fixed-size
    client sampling: Flower's DP wrappers (noise z*C/m on the mean). Poisson sampling:
    :class:`~fedlab.trackers.privacy.mechanism.ExpectedSizeServerSideClipping` (noise z*C on
    the sum over the expected q*N), with the audit's canaries if ``privacy.audit`` asks.
    fedlab's :class:`~fedlab.trackers.privacy.ledger.PrivacyLedger` accounts both, with
    amplification by the sampling; Flower's own accountant (no amplification) is not used.
    """
    from flwr.serverapp import strategy as flwr_strategy

    check_central_dp(declared)
    z = privacy.noise_multiplier
    if declared.client_sampling == "poisson":
        from fedlab.trackers.privacy.mechanism import Canaries, ExpectedSizeServerSideClipping

        q = declared.fraction_train
        canaries = (
            Canaries(privacy.audit_canaries, seed, q) if privacy.audit == "canaries" else None
        )
        return ExpectedSizeServerSideClipping(
            strategy, z, privacy.max_grad_norm, q * num_clients, canaries
        )
    if privacy.clipping == "adaptive":
        cls = (
            flwr_strategy.DifferentialPrivacyServerSideAdaptiveClipping
            if privacy.clip_at == "server"
            else flwr_strategy.DifferentialPrivacyClientSideAdaptiveClipping
        )
        # Flower's default count noise (m/20) cannot carry a z above m/10 (Andrew et al.'s
        # split needs z < 2 * sigma_b); take at least z so the update noise grows <= 15%.
        sigma_b = privacy.clipped_count_stddev
        if sigma_b is None and z > 0:
            sigma_b = max(clients_per_round / 20, z)
        return cls(
            strategy,
            noise_multiplier=z,
            num_sampled_clients=clients_per_round,
            initial_clipping_norm=privacy.initial_clipping_norm,
            target_clipped_quantile=privacy.target_clipped_quantile,
            clip_norm_lr=privacy.clip_norm_lr,
            clipped_count_stddev=sigma_b,
        )
    cls = (
        flwr_strategy.DifferentialPrivacyServerSideFixedClipping
        if privacy.clip_at == "server"
        else flwr_strategy.DifferentialPrivacyClientSideFixedClipping
    )
    return cls(
        strategy,
        noise_multiplier=z,
        clipping_norm=privacy.max_grad_norm,
        num_sampled_clients=clients_per_round,
    )


def check_central_sampling(privacy: PrivacyConfig, strategy: StrategyConfig, clients: int) -> None:
    """What the chosen client sampling allows: its accountants, clipping, audit and budget."""
    from fedlab.config.privacy_rules import ACCOUNTANTS_FOR_SAMPLING

    sampling = strategy.client_sampling
    allowed = ACCOUNTANTS_FOR_SAMPLING[sampling]
    if privacy.accountant not in allowed:
        raise ConfigError(
            "privacy.accountant",
            f"{privacy.accountant} cannot account {sampling} client sampling (no analysis of "
            f"it in Opacus or dp-accounting); allowed with strategy.client_sampling={sampling}: "
            f"{', '.join(allowed)}",
        )
    if sampling == "poisson" and privacy.clipping != "fixed":
        raise ConfigError(
            "privacy.clipping",
            "adaptive clipping has no Poisson-sampling mechanism here; use clipping=fixed "
            "or strategy.client_sampling=fixed",
        )
    if sampling == "poisson" and privacy.clip_at != "server":
        raise ConfigError(
            "privacy.clip_at",
            "with Poisson client sampling the server clips (noise on the sum); use clip_at=server",
        )
    if privacy.audit != "none" and sampling != "poisson":
        raise ConfigError(
            "privacy.audit",
            "canaries are drawn by Poisson sampling like every client: needs "
            "strategy.client_sampling=poisson",
        )
    if privacy.audit == "none":
        return
    if not 0 < privacy.audit_confidence < 1:
        raise ConfigError("privacy.audit_confidence", "must be in (0, 1)")
    top, bottom = privacy.audit_guesses, privacy.audit_guesses_excluded
    if min(top, bottom) < 0 or not 1 <= top + bottom <= privacy.audit_canaries:
        raise ConfigError(
            "privacy.audit_guesses",
            f"audit_guesses + audit_guesses_excluded must be in [1, audit_canaries="
            f"{privacy.audit_canaries}], each >= 0; got {top} + {bottom}",
        )
    if privacy.audit_canaries > clients:
        raise ConfigError(
            "privacy.audit_canaries",
            f"{privacy.audit_canaries} canaries for {clients} clients: at most num_clients "
            "(canaries must not outnumber the population whose privacy is audited)",
        )
