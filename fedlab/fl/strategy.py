"""Strategies: Flower's own (``flwr.serverapp.strategy``), made to follow fedlab's schedule.

A strategy option in ``conf/strategy/`` names a Flower class and its hyperparameters under
``flower:``. :func:`build_strategy` subclasses that class with :class:`ScheduledSampling`, which
hands the strategy a view of the Grid holding only the clients the seeded schedule chose for
this round; Flower's sampling, aggregation and server optimizers are otherwise untouched.
"""

from __future__ import annotations

import inspect
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedlab.config.schema import ConfigError, StrategyConfig

# Ranges of Flower hyperparameters that Flower itself does not check at construction time.
_RULES: dict[str, tuple[Any, str]] = {
    "proximal_mu": (lambda v: v >= 0, "must be >= 0"),
    "eta": (lambda v: v > 0, "must be > 0"),
    "eta_l": (lambda v: v > 0, "must be > 0"),
    "tau": (lambda v: v > 0, "must be > 0"),
    "beta_1": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "beta_2": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "server_learning_rate": (lambda v: v > 0, "must be > 0"),
    "server_momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "beta": (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    "q": (lambda v: v >= 0, "must be >= 0"),
    "client_learning_rate": (lambda v: v > 0, "must be > 0"),
    "num_malicious_nodes": (lambda v: v >= 0, "must be >= 0"),
    "num_nodes_to_select": (lambda v: v >= 1, "must be >= 1"),
}

# Flower's own sampling knobs: fedlab's schedule decides who takes part, so the strategy is
# told to take every node the view shows it.
_TAKE_ALL = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 0,
    "min_evaluate_nodes": 0,
    "min_available_nodes": 0,
}


class ScheduledSampling:
    """Mixin: configure rounds through :meth:`fedlab.fl.grid.FedlabGrid.view`.

    ``round_offset`` lets a resumed run reuse Flower's own round loop
    (``Strategy.start`` always counts from 1): the strategy and the schedule see the true
    round number, ``start``'s count plus the rounds completed before the checkpoint.
    """

    round_offset = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        server_round += self.round_offset
        view = grid.view(server_round, "train")  # type: ignore[attr-defined]
        return list(super().configure_train(server_round, arrays, config, view))  # type: ignore[misc]

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        return super().aggregate_train(server_round + self.round_offset, replies)  # type: ignore[misc]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        server_round += self.round_offset
        view = grid.view(server_round, "evaluate")  # type: ignore[attr-defined]
        return list(super().configure_evaluate(server_round, arrays, config, view))  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Any) -> Any:
        return super().aggregate_evaluate(server_round + self.round_offset, replies)  # type: ignore[misc]


def strategy_class(cfg: StrategyConfig) -> type[Strategy]:
    """The Flower class named by ``strategy.flower._target_``."""
    from hydra.utils import get_class

    target = cfg.flower.get("_target_")
    if not target:
        raise ConfigError(
            "strategy.flower._target_", "missing: name a flwr.serverapp.strategy class"
        )
    try:
        cls = get_class(target)
    except Exception:
        raise ConfigError("strategy.flower._target_", f"cannot import '{target}'") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError("strategy.flower._target_", f"'{target}' is not a Flower Strategy")
    return cls


def check_robust_aggregation(cfg: StrategyConfig, clients_per_round: int) -> None:
    """Byzantine-robust rules need enough clients per round for the attackers they assume.

    The bound is the strategy's own declaration (``strategy.min_clients_per_round``: ``base +
    per_malicious * f`` with f = ``flower.num_malicious_nodes``; Krum declares 2f + 3, Bulyan
    4f + 3), so a robust rule added by a YAML file is checked the same way.
    """
    bound = cfg.min_clients_per_round
    if not bound:
        return
    f = int(cfg.flower.get("num_malicious_nodes", 0))
    base, per = bound.get("base", 0), bound.get("per_malicious", 0)
    need = base + per * f
    if clients_per_round < need:
        raise ConfigError(
            "strategy.flower.num_malicious_nodes" if per else "strategy.min_clients_per_round",
            f"{cfg.name} with {f} malicious nodes needs at least {need} clients per round "
            f"(strategy.min_clients_per_round: {per}f + {base}); this config samples "
            f"{clients_per_round} (raise num_clients or fraction_train)",
        )


def build_strategy(cfg: StrategyConfig) -> Strategy:
    """Instantiate the configured Flower strategy with fedlab's scheduled sampling."""
    cls = strategy_class(cfg)
    kwargs = {k: v for k, v in cfg.flower.items() if k != "_target_"}
    for key, value in kwargs.items():
        if key in _RULES:
            ok, rule = _RULES[key]
            if not isinstance(value, int | float) or not ok(value):
                raise ConfigError(f"strategy.flower.{key}", f"{rule}, got {value}")
    accepted = inspect.signature(cls).parameters
    kwargs.update({k: v for k, v in _TAKE_ALL.items() if k in accepted})
    # FedAvg's own aggregation ignores the round number; keeping it (rather than the mixin's
    # offsetting override) keeps what Flower's DP accountant requires of the strategy.
    own = (
        {"aggregate_train": FedAvg.aggregate_train}
        if cls.aggregate_train is FedAvg.aggregate_train
        else {}
    )
    scheduled = type(f"Scheduled{cls.__name__}", (ScheduledSampling, cls), own)
    try:
        return scheduled(**kwargs)
    except TypeError as err:
        raise ConfigError("strategy.flower", f"{cls.__name__}: {err}") from None


def _client_update_class(cfg: Any) -> type | None:
    """The class ``strategy.client_update._target_`` names (None: FedAvg's update)."""
    from hydra.utils import get_class

    from fedlab.fl.algorithms.base import ClientUpdate

    target = dict(cfg.strategy.client_update).get("_target_")
    if not cfg.strategy.client_update:
        return None
    try:
        cls = get_class(str(target))
    except Exception:
        raise ConfigError(
            "strategy.client_update._target_", f"cannot import '{target}'"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, ClientUpdate)):
        raise ConfigError(
            "strategy.client_update._target_",
            f"'{target}' is not a fedlab.fl.algorithms.base.ClientUpdate",
        )
    return cls


def check_client_update(cfg: Any) -> None:
    """Refuse, before anything is written, a client update (``strategy.client_update``) that
    cannot be built or is not defined for ``privacy.mode`` (its declarations say which)."""
    from hydra.utils import instantiate

    cls = _client_update_class(cfg)
    if cls is None:
        return
    mode = cfg.privacy.mode
    if mode not in cls.privacy_modes:
        raise ConfigError(
            "privacy.mode",
            f"strategy={cfg.strategy.name} is defined for privacy="
            f"{'|'.join(cls.privacy_modes)} only, got {mode}: {cls.privacy_reason}",
        )
    try:
        instantiate(dict(cfg.strategy.client_update))
    except Exception as err:
        cause = err.__cause__ or err
        raise ConfigError("strategy.client_update", str(cause).splitlines()[0]) from None


def check_model_fits(cfg: Any, model: Any) -> None:
    """Refuse a model DP-SGD cannot train (Opacus's own validator: BatchNorm, say) with
    ``privacy=local``, and one the client update says it cannot work with (FedBN without
    normalization layers): checks that need the built model."""
    if cfg.privacy.mode == "local":
        from opacus.validators import ModuleValidator

        if errors := ModuleValidator.validate(model, strict=False):
            first = str(errors[0]).split(". ")[0]
            raise ConfigError("model", f"privacy=local (DP-SGD) cannot train it: {first}")
    cls = _client_update_class(cfg)
    if cls is not None and (problem := cls.check(model, cfg)):
        raise ConfigError(*problem)
