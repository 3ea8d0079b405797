"""From a composed Hydra config to a validated experiment: the first stage of every run.

:meth:`Experiment.from_config` checks the whole configuration before anything is written:
the fixed schema through :mod:`fedlab.config.schema`'s dataclasses, and each ``_target_`` group by
building what it names. Every problem surfaces as one :class:`~fedlab.config.schema.ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedlab.config.schema import ConfigError, FedlabConfig, require
from fedlab.data.datasets import DatasetSpec
from fedlab.data.partition import FederatedData, partition
from fedlab.fl.schedule import Scheduler
from fedlab.fl.strategy import build_strategy, check_robust_aggregation

if TYPE_CHECKING:
    from fedlab.trackers.devices import Fleet


def _omegaconf_message(err: OmegaConfBaseException, group: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    head = str(err).splitlines()[0]
    return ConfigError(f"{group}.{key}" if key else group, head)


def typed(raw: DictConfig) -> FedlabConfig:
    """Convert the composed config to :class:`FedlabConfig`, running every range check."""
    try:
        cfg = OmegaConf.to_object(raw)
    except OmegaConfBaseException as err:
        raise _omegaconf_message(err, "config") from None
    except ConfigError:
        raise
    assert isinstance(cfg, FedlabConfig)
    return cfg


def build_spec(node: dict[str, Any], group: str, base: type) -> Any:
    """Instantiate a dataclass named by ``_target_``, type-checked by OmegaConf."""
    node = dict(node)
    target = node.pop("_target_", None)
    require(target is not None, f"{group}._target_", "missing")
    try:
        cls = get_class(target)
    except Exception:
        raise ConfigError(f"{group}._target_", f"cannot import '{target}'") from None
    require(
        isinstance(cls, type) and issubclass(cls, base),
        f"{group}._target_",
        f"'{target}' is not a {base.__name__}",
    )
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), node))
    except OmegaConfBaseException as err:
        raise _omegaconf_message(err, group) from None


def check_carbon(carbon: Any, num_clients: int, seed: int) -> None:
    """Check countries, regions, links and the network model before the run starts.

    An unknown country code must stop the run: CodeCarbon would silently fall back to the
    world average.
    """
    from fedlab.trackers.carbon import NetworkModel, assign_links, assign_regions, carbon_intensity

    checks = (
        ("carbon.country", lambda: carbon_intensity(carbon.country)),
        ("carbon.network", lambda: NetworkModel.from_config(carbon.network)),
        (
            "carbon.regions",
            lambda: assign_regions(num_clients, carbon.regions or carbon.country, seed),
        ),
        (
            "carbon.links",
            lambda: assign_links(
                num_clients, carbon.links, NetworkModel.from_config(carbon.network)
            ),
        ),
    )
    for key, check in checks:
        try:
            check()
        except (ValueError, TypeError) as err:
            raise ConfigError(key, str(err).splitlines()[0]) from None


def check_devices(cfg: FedlabConfig) -> None:
    """Check the device mix and links against the profile library before the run starts."""
    from fedlab.trackers.devices import assign

    devices = cfg.devices
    library = devices.profiles
    try:
        assign(cfg.num_clients, devices.mix, library.devices, cfg.seed, "devices.mix")
        if devices.links is not None:
            assign(cfg.num_clients, devices.links, library.links, cfg.seed, "devices.links")
    except (ValueError, TypeError) as err:
        key, _, message = str(err).partition(": ")
        raise ConfigError(key, message) from None
    require(
        cfg.carbon.links == "wired",
        "carbon.links",
        "with simulated devices each client's link is its device's: set devices.links instead",
    )


@dataclass
class Experiment:
    """A validated experiment: the typed config and the objects its groups name."""

    cfg: FedlabConfig
    dataset: DatasetSpec
    _fleet: tuple[FederatedData, Fleet] | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, raw: DictConfig) -> Experiment:
        """Validate ``raw``; raises :class:`ConfigError` naming the first bad key."""
        cfg = typed(raw)
        dataset = build_spec(cfg.dataset, "dataset", DatasetSpec)
        build_strategy(cfg.strategy)  # Flower checks its kwargs, fedlab their ranges
        exp = cls(cfg, dataset)
        check_robust_aggregation(cfg.strategy, exp.scheduler().sample_size())
        if cfg.carbon.enabled or cfg.strategy.selection == "carbon_aware":
            check_carbon(cfg.carbon, cfg.num_clients, cfg.seed)
        if cfg.devices.enabled:
            check_devices(cfg)
        if cfg.privacy.mode == "central":
            from fedlab.trackers.privacy import validate_central_dp_strategy

            try:
                validate_central_dp_strategy(cfg.strategy.name)
            except ValueError as err:
                raise ConfigError("privacy", str(err)) from None
        if cfg.stragglers.fraction > 0:
            per_round = exp.scheduler().sample_size()
            require(
                round(per_round * (1 - cfg.stragglers.fraction)) >= 1
                or exp.straggler_policy == "partial",
                "stragglers.fraction",
                f"drops every one of the {per_round} clients sampled per round; lower it",
            )
        return exp

    @property
    def straggler_policy(self) -> str:
        """``stragglers.policy``, or the strategy's own choice when it is ``auto``."""
        policy = self.cfg.stragglers.policy
        return self.cfg.strategy.straggler_policy if policy == "auto" else policy

    def scheduler(self, fed: FederatedData | None = None) -> Scheduler:
        """The seeded round schedule for this experiment (over ``fed``'s clients if given).

        Simulated devices (their round times, the deadline) need the data: without ``fed``
        the schedule has no device clock, which only the counts it gives do not need.
        """
        cfg = self.cfg
        fleet = self.fleet(fed) if fed is not None else None
        evaluate = cfg.strategy.fraction_evaluate if self.dataset.client_test_fraction > 0 else 0.0
        return Scheduler(
            seed=cfg.seed,
            num_clients=cfg.num_clients,
            fraction_train=cfg.strategy.fraction_train,
            min_train_clients=cfg.strategy.min_train_clients,
            fraction_evaluate=evaluate,
            local_epochs=cfg.client.local_epochs,
            straggler_fraction=cfg.stragglers.fraction,
            straggler_policy=self.straggler_policy,
            failure_rate=cfg.failures.rate,
            selection=cfg.strategy.selection,
            fairness_floor=cfg.strategy.fairness_floor,
            intensity=self.grid_intensity() if cfg.strategy.selection == "carbon_aware" else None,
            evaluable=None
            if fed is None
            else tuple(pid for pid, idx in enumerate(fed.client_test) if len(idx)),
            hours_per_round=cfg.carbon.hours_per_round,
            fleet=fleet,
            deadline_s=cfg.devices.deadline_s,
        )

    def grid_intensity(self) -> Any:
        """(client, simulated seconds) -> gCO2e/kWh of the client's grid."""
        from fedlab.trackers.carbon import client_grid_intensity

        return client_grid_intensity(self.cfg.carbon, self.cfg.num_clients, self.cfg.seed)

    def carbon_tracker(self, fed: FederatedData, run_dir: Any) -> Any:
        """The run's :class:`fedlab.trackers.carbon.RunCarbon` writing into ``run_dir`` (None when
        ``carbon=off``); clients' links are their simulated devices' when there are any."""
        if not self.cfg.carbon.enabled:
            return None
        from fedlab.trackers.carbon import RunCarbon

        fleet = self.fleet(fed)
        return RunCarbon(
            self.cfg.carbon,
            run_dir,
            self.cfg.num_clients,
            self.cfg.seed,
            links=None if fleet is None else [link.name for link in fleet.links],
        )

    def fleet(self, fed: FederatedData) -> Fleet | None:
        """The clients' simulated devices over ``fed`` (None without ``devices``); built once."""
        if not self.cfg.devices.enabled:
            return None
        if self._fleet is None or self._fleet[0] is not fed:
            import torch

            from fedlab.trackers.devices import Fleet
            from fedlab.fl.model import build_model

            cfg = self.cfg
            # Any weights do (FLOPs depend on shapes only): leave the global RNG as it was.
            with torch.random.fork_rng():
                model = build_model(cfg.model, fed.input_shape, fed.num_classes)
            fleet = Fleet.from_config(
                cfg.devices,
                model,
                fed.input_shape,
                fed.num_classes,
                [len(idx) for idx in fed.client_train],
                [len(idx) for idx in fed.client_test],
                cfg.client.batch_size,
                cfg.seed,
                poisson=cfg.privacy.mode == "local",
            )
            self._fleet = (fed, fleet)
        return self._fleet[1]

    def load_data(self) -> FederatedData:
        """Load the dataset and partition it among the clients."""
        central = self.dataset.load(self.cfg.seed)
        return partition(
            central,
            dict(self.cfg.partition),
            self.cfg.num_clients,
            self.cfg.seed,
            self.dataset.client_test_fraction,
        )

    def prepare(self) -> tuple[FederatedData, list[str]]:
        """Load and partition the data, then settle data-dependent privacy parameters.

        Returns the federation and the warnings to show the user.
        """
        fed = self.load_data()
        return fed, self.plan_privacy(fed)

    def train_config(self) -> ConfigRecord:
        """Per-round training settings sent to every client with the global model."""
        c = self.cfg.client
        config: dict[str, Any] = {
            "optimizer": c.optimizer,
            "lr": c.lr,
            "momentum": c.momentum,
            "weight-decay": c.weight_decay,
            "local-epochs": float(c.local_epochs),
            "batch-size": c.batch_size,
        }
        privacy = self.cfg.privacy
        if privacy.mode == "local":
            config |= {
                "dp-noise-multiplier": privacy.noise_multiplier,
                "dp-max-grad-norm": privacy.max_grad_norm,
                "dp-grad-sample-mode": privacy.grad_sample_mode,
            }
        elif privacy.mode == "central":
            config["equal-weights"] = True
        config.update(self.cfg.strategy.train_config)
        return ConfigRecord(config)

    def plan_privacy(self, fed: FederatedData) -> list[str]:
        """Settle privacy parameters that depend on the data; returns warnings to show.

        With ``privacy.target_epsilon`` the noise multiplier is chosen here, from each
        client's planned participation in the seeded schedule, and written back into the
        config so the record says which noise was used.
        """
        from fedlab.trackers.privacy import delta_warning, plan_local_noise

        privacy, cfg = self.cfg.privacy, self.cfg
        if privacy.mode == "none":
            return []
        if privacy.mode == "central":
            warning = delta_warning(privacy.delta, cfg.num_clients, unit="clients")
            return [warning] if warning else []
        sizes = [len(idx) for idx in fed.client_train]
        warning = delta_warning(privacy.delta, min(sizes), unit="records of the smallest client")
        if privacy.target_epsilon is not None:
            scheduler = self.scheduler(fed)
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

    def describe(self) -> dict[str, Any]:
        """The experiment in a few names, for ``results.json`` and reports."""
        cfg = self.cfg
        return {
            "dataset": self.dataset.name,
            "partition": str(cfg.partition.get("_target_", "")).rsplit(".", 1)[-1],
            "model": str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
            "strategy": cfg.strategy.name,
            "num_clients": cfg.num_clients,
            "num_rounds": cfg.num_rounds,
            "clients_per_round": self.scheduler().sample_size(),
            "local_epochs": cfg.client.local_epochs,
            "stragglers": cfg.stragglers.fraction,
            "straggler_policy": self.straggler_policy,
            "failure_rate": cfg.failures.rate,
        }
