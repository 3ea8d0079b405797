"""From a composed Hydra config to a validated experiment: the first stage of every run.

:meth:`Experiment.from_config` checks the whole configuration before anything is written:
the fixed schema through :mod:`fedlab.config.schema`'s dataclasses, and each ``_target_`` group by
building what it names. Every problem surfaces as one :class:`~fedlab.config.schema.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedlab.config.schema import ConfigError, FedlabConfig, require
from fedlab.data.datasets import DatasetSpec
from fedlab.data.partition import FederatedData, federate
from fedlab.fl import clock
from fedlab.fl.schedule import Scheduler
from fedlab.fl.strategy import build_strategy, check_client_update, check_robust_aggregation
from fedlab.trackers.registry import tracker_specs

if TYPE_CHECKING:
    from fedlab.background import Background
    from fedlab.trackers.carbon.grid import GridIntensity
    from fedlab.trackers.devices.fleet import Fleet


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


@dataclass
class Experiment:
    """A validated experiment: the typed config and the objects its groups name."""

    cfg: FedlabConfig
    dataset: DatasetSpec
    _fleet: tuple[FederatedData, Fleet] | None = field(default=None, repr=False)
    _regions: list[str] | None = field(default=None, repr=False)
    _grid: GridIntensity | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, raw: DictConfig) -> Experiment:
        """Validate ``raw``; raises :class:`ConfigError` naming the first bad key."""
        cfg = typed(raw)
        dataset = build_spec(cfg.dataset, "dataset", DatasetSpec)
        build_strategy(cfg.strategy)  # Flower checks its kwargs, fedlab their ranges
        exp = cls(cfg, dataset)
        check_robust_aggregation(cfg.strategy, exp.scheduler().sample_size())
        for spec in tracker_specs(cfg.trackers):
            spec.cls.check(exp)
        check_client_update(cfg)  # after the trackers': central DP's own refusal comes first
        clock.check_clock(exp)
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
            client_sampling=cfg.strategy.client_sampling,
            fairness_floor=cfg.strategy.fairness_floor,
            intensity=self.forecast_intensity() if cfg.strategy.selection == "carbon_aware"
            else None,
            evaluable=None
            if fed is None
            else tuple(pid for pid, idx in enumerate(fed.client_test) if len(idx)),
            fleet=fleet,
            deadline_s=cfg.devices.deadline_s,
            **clock.scheduler_options(cfg, self.regions, self.grid),
        )

    def regions(self) -> list[str]:
        """Each client's ISO-3 region (``carbon.regions``, else ``carbon.country``)."""
        if self._regions is None:
            self._regions = clock.client_regions(self.cfg)
        return self._regions

    def grid(self) -> GridIntensity:
        """The intensities of the clients' and the host's grids on the simulated clock."""
        if self._grid is None:
            try:
                self._grid = clock.build_run_grid(self.cfg, self.regions())
            except (ValueError, OSError) as err:  # a trace file's, named in the message
                raise clock.config_error(err, "carbon.traces") from None
        return self._grid

    def region_intensity(self) -> Any:
        """(client, start s, end s) -> mean gCO2e/kWh of the client's region over that interval
        of the simulated clock (what the devices' energy is charged at)."""
        regions, grid = self.regions(), self.grid()

        def intensity(client: int, a_s: float, b_s: float | None = None) -> float:
            return grid.actual(regions[client], a_s, b_s)

        return intensity

    def forecast_intensity(self) -> Any:
        """(client, simulated s) -> the forecast, issued then, of the client's grid at that
        time: what carbon-aware selection sees (accounting uses the actual trace)."""
        regions, grid = self.regions(), self.grid()

        def intensity(client: int, t_s: float) -> float:
            return grid.forecast(regions[client], t_s, None, t_s)

        return intensity

    def fleet(self, fed: FederatedData) -> Fleet | None:
        """The clients' simulated devices over ``fed`` (None without ``devices``); built once."""
        if not self.cfg.devices.enabled:
            return None
        if self._fleet is None or self._fleet[0] is not fed:
            import torch

            from fedlab.fl.model import build_model
            from fedlab.trackers.devices.fleet import Fleet

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
        """Load the dataset and partition it among the clients
        (:func:`fedlab.data.partition.federate`)."""
        return self.loader()()

    def loader(self) -> Callable[[], FederatedData]:
        """:meth:`load_data` as a function of this experiment's data settings alone, which a
        child can unpickle without importing torch (:meth:`start_loading`)."""
        return partial(
            federate, self.dataset, dict(self.cfg.partition), self.cfg.num_clients, self.cfg.seed
        )

    def start_loading(self, warm: Background | None = None) -> Background | None:
        """Start :meth:`load_data` in a forked child (:mod:`fedlab.background`), for
        :meth:`prepare` to collect, when the dataset is small enough to come back through a
        pipe and this platform forks; None where the data are loaded by :meth:`prepare`.

        ``warm`` is a child forked earlier that waits for its work (``fedlab-run`` forks it
        right after composing the config, :func:`fedlab.data.partition.background_imports`):
        it is given the work, or ended where this experiment does not use it.
        """
        from fedlab.background import Background, can_fork

        if not type(self.dataset).background or not can_fork():
            if warm is not None:
                warm.cancel()
            return None
        if warm is not None:
            warm.start(self.loader())
            return warm
        return Background(self.loader(), "data")

    def prepare(self, loading: Background | None = None) -> tuple[FederatedData, list[str]]:
        """Load and partition the data (or take them from ``loading``, started by
        :meth:`start_loading`), then let the trackers settle data-dependent settings.

        Returns the federation and the warnings to show the user.
        """
        fed = self.load_data() if loading is None else loading.result()
        clock.check_timeline(self, fed)
        specs = tracker_specs(self.cfg.trackers)
        warnings = [w for spec in specs for w in spec.cls.prepare(self, fed)]
        return fed, warnings

    def train_config(self, extra: dict[str, Any] | None = None) -> ConfigRecord:
        """Per-round training settings sent to every client with the global model (``extra``:
        what the trackers add, such as DP-SGD's noise)."""
        c = self.cfg.client
        config: dict[str, Any] = {
            "optimizer": c.optimizer,
            "lr": c.lr,
            "momentum": c.momentum,
            "weight-decay": c.weight_decay,
            "local-epochs": float(c.local_epochs),
            "batch-size": c.batch_size,
        }
        config.update(extra or {})
        config.update(self.cfg.strategy.train_config)
        return ConfigRecord(config)

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
