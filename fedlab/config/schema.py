"""Structured configuration: the schema that every composed Hydra config is checked against.

Hydra composes YAML from ``conf/``; this module says what the result must look like. Two layers:

* The fixed part of the schema (top-level keys and the ``client``, ``simulation``,
  ``stragglers`` and ``failures`` groups) is a tree of dataclasses registered in Hydra's
  ConfigStore, so OmegaConf rejects a wrong type at composition time.
* Groups whose options differ in shape (``dataset``, ``partition``, ``model``, ``strategy``)
  name their implementation with ``_target_``.
  :meth:`fedlab.config.experiment.Experiment.from_config` builds each of them once at start-up
  so the implementation's own dataclass or constructor checks its arguments, and the first
  problem becomes a :class:`ConfigError` that names the key and what is allowed.

Range checks live in ``__post_init__`` so they run both here and when code builds a config
object directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from fedlab.config.clock import ClockConfig
from fedlab.config.errors import ConfigError, require, require_choice, require_fraction
from fedlab.config.measurement import CarbonConfig, DevicesConfig, PrivacyConfig
from fedlab.config.tracking import MonitoringConfig, TrackingConfig

__all__ = [  # the errors are imported from here throughout fedlab, tests and user code
    "CarbonConfig",
    "ClientConfig",
    "ConfigError",
    "DevicesConfig",
    "FedlabConfig",
    "PrivacyConfig",
    "SimulationConfig",
    "StrategyConfig",
    "register_configs",
    "require",
    "require_choice",
    "require_fraction",
]


@dataclass
class ClientConfig:
    """Local training on each client (the ``client`` group)."""

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_epochs: int = 1
    batch_size: int = 32

    def __post_init__(self) -> None:
        require_choice(self.optimizer, "client.optimizer", ("sgd", "adam"))
        require(self.lr > 0, "client.lr", f"must be > 0, got {self.lr}")
        require(
            0 <= self.momentum < 1, "client.momentum", f"must be in [0, 1), got {self.momentum}"
        )
        require(self.weight_decay >= 0, "client.weight_decay", "must be >= 0")
        require(
            self.local_epochs >= 1, "client.local_epochs", f"must be >= 1, got {self.local_epochs}"
        )
        require(self.batch_size >= 1, "client.batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class SimulationConfig:
    """How the clients are simulated (the ``simulation`` group).

    ``backend``: ``auto`` (the default: fedlab picks one of the others for the machine and
    says why, :mod:`fedlab.engines.auto`), ``ray`` (Flower's simulation engine: clients in
    parallel Ray actors, on this machine or a cluster at ``ray_address``), ``pool`` (clients
    in ``workers`` processes forked from the driver: no Ray, a crashed or hung worker is an
    error reply and is replaced) or ``inprocess`` (every client call serially in this process:
    no Ray start-up or per-message cost; no round timeout). All give the same numbers.
    ``workers``: the pool's processes (null: one per usable core, at most one per client).
    ``client_cpus`` is the Ray resource each simulated client reserves: the number of client
    actors running at once is ``ray_num_cpus / client_cpus``. Flower's default of 2 CPUs per
    client means a single actor on a 2-core machine, so fedlab defaults to 1.
    ``pull_interval_s`` is how often the server's in-memory Grid checks for replies and the
    engine hands messages to the clients (Flower's 0.1 s for both made a round cost at least
    0.2 s whatever the work).
    """

    backend: str = "auto"
    workers: int | None = None
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    ray_num_cpus: int | None = None
    ray_address: str | None = None
    round_timeout_s: float = 600.0
    connect_timeout_s: float = 120.0
    torch_threads: int = 1
    pull_interval_s: float = 0.01

    def __post_init__(self) -> None:
        from fedlab.engines.registry import ENGINES

        require_choice(self.backend, "simulation.backend", tuple(ENGINES))
        require(
            self.workers is None or self.workers >= 1,
            "simulation.workers",
            f"must be >= 1 or null (one per usable core), got {self.workers}",
        )
        require(
            self.client_cpus > 0, "simulation.client_cpus", f"must be > 0, got {self.client_cpus}"
        )
        require(self.client_gpus >= 0, "simulation.client_gpus", "must be >= 0")
        require(
            self.ray_num_cpus is None or self.ray_num_cpus >= 1,
            "simulation.ray_num_cpus",
            "must be >= 1 or null (all cores)",
        )
        require(
            self.ray_address is None or self.ray_num_cpus is None,
            "simulation.ray_num_cpus",
            "must be null with simulation.ray_address (a cluster's cores are set on each node "
            "by `ray start --num-cpus`)",
        )
        require(self.round_timeout_s > 0, "simulation.round_timeout_s", "must be > 0 seconds")
        require(self.connect_timeout_s > 0, "simulation.connect_timeout_s", "must be > 0 seconds")
        require(self.torch_threads >= 1, "simulation.torch_threads", "must be >= 1")
        require(0 < self.pull_interval_s <= 1, "simulation.pull_interval_s", "must be in (0, 1] s")


@dataclass
class StragglersConfig:
    """System heterogeneity as in FedProx (Li et al., MLSys 2020).

    Each round a seeded ``fraction`` of the sampled clients are stragglers. ``policy`` says what
    happens to them: ``drop`` (FedAvg in the paper: their work is discarded) or ``partial``
    (FedProx: they train for a random 1..E-1 epochs and are aggregated). ``auto`` takes the
    strategy's own choice (``strategy.straggler_policy``).
    """

    fraction: float = 0.0
    policy: str = "auto"

    def __post_init__(self) -> None:
        require(
            0 <= self.fraction < 1,
            "stragglers.fraction",
            f"must be in [0, 1), got {self.fraction}",
        )
        require_choice(self.policy, "stragglers.policy", ("auto", "drop", "partial"))


@dataclass
class FailuresConfig:
    """Clients that crash during their round, injected with a seeded schedule."""

    rate: float = 0.0

    def __post_init__(self) -> None:
        require(0 <= self.rate < 1, "failures.rate", f"must be in [0, 1), got {self.rate}")


@dataclass
class StrategyConfig:
    """The ``strategy`` group: a Flower strategy plus fedlab's sampling settings.

    ``flower`` holds ``_target_`` (a class of ``flwr.serverapp.strategy``) and that class's own
    hyperparameters. Client sampling is fedlab's (seeded by round, so every strategy sees the
    same clients in the same round), which is why ``fraction_train`` lives here and not in the
    Flower kwargs. ``train_config`` adds entries to the config every client receives (e.g.
    q-FedAvg asks clients for the loss of the global model before training). ``selection:
    carbon_aware`` fills each round with the clients whose grid is cleanest at that hour,
    except a ``fairness_floor`` share of the slots drawn uniformly from everyone, so every
    client keeps taking part (see :meth:`fedlab.fl.schedule.Scheduler.plan`). ``client_sampling:
    poisson`` draws each client with probability ``fraction_train`` (``fixed``: exactly that share).

    What the strategy *does* is declared, not inferred from its class name, so a strategy added
    by one YAML file is treated by what it declares:

    * ``aggregate``: what ``aggregate_train`` computes from the client updates, one of
      :attr:`AGGREGATES` (``other`` for anything else). Central DP reads it: its noise covers a
      ``weighted_mean`` (server optimisers that post-process the mean included) and nothing
      else, and it refuses a strategy that declares nothing (null).
    * ``min_clients_per_round``: a Byzantine-robust rule's bound on the clients it needs per
      round, ``base + per_malicious * f`` with f = ``flower.num_malicious_nodes`` (Krum:
      ``{base: 3, per_malicious: 2}``, i.e. 2f + 3); empty for no bound.
    """

    AGGREGATES: ClassVar[tuple[str, ...]] = (
        "weighted_mean",  # a (weighted) mean of the updates, or a server optimiser's step on it
        "median",  # coordinate-wise median
        "trimmed_mean",  # coordinate-wise mean without the extremes
        "krum",  # the one update closest to its neighbours
        "multikrum",  # the mean of the best-scoring updates
        "bulyan",  # Krum-type selection, then a trimmed mean
        "qfair",  # q-FFL: updates reweighted by each client's loss to the power q
        "other",
    )
    BOUND_KEYS: ClassVar[tuple[str, ...]] = ("base", "per_malicious")

    name: str = MISSING
    flower: Any = MISSING
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_train_clients: int = 1
    straggler_policy: str = "drop"
    train_config: dict[str, Any] = field(default_factory=dict)
    selection: str = "random"
    fairness_floor: float = 0.2
    client_sampling: str = "fixed"
    aggregate: str | None = None
    min_clients_per_round: dict[str, int] = field(default_factory=dict)
    # the algorithm's client side: {_target_: a fedlab.fl.algorithms.base.ClientUpdate, its
    # options}; empty: FedAvg's local update (SCAFFOLD, Ditto... declare their own)
    client_update: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_fraction(self.fraction_train, "strategy.fraction_train")
        require_fraction(self.fraction_evaluate, "strategy.fraction_evaluate", allow_zero=True)
        require(self.min_train_clients >= 1, "strategy.min_train_clients", "must be >= 1")
        require_choice(self.straggler_policy, "strategy.straggler_policy", ("drop", "partial"))
        require_choice(self.selection, "strategy.selection", ("random", "carbon_aware"))
        require_choice(self.client_sampling, "strategy.client_sampling", ("fixed", "poisson"))
        require(
            self.client_sampling == "fixed" or self.selection == "random",
            "strategy.client_sampling",
            "poisson draws every client independently; it cannot be combined with "
            "strategy.selection=carbon_aware (use client_sampling=fixed)",
        )
        require_fraction(self.fairness_floor, "strategy.fairness_floor", allow_zero=True)
        if self.aggregate is not None:
            require_choice(self.aggregate, "strategy.aggregate", self.AGGREGATES)
        bound = self.min_clients_per_round
        require(
            set(bound) <= set(self.BOUND_KEYS) and all(v >= 0 for v in bound.values()),
            "strategy.min_clients_per_round",
            "takes base and per_malicious, each >= 0 (clients per round >= base + "
            f"per_malicious * flower.num_malicious_nodes); got {dict(bound)}",
        )


@dataclass
class FedlabConfig:
    """The whole experiment. ``Any`` groups are checked by ``Experiment.from_config``."""

    seed: int = 0
    resume: str | None = None
    num_clients: int = 10
    num_rounds: int = 10
    dataset: Any = MISSING
    partition: Any = MISSING
    model: Any = MISSING
    strategy: StrategyConfig = MISSING
    client: ClientConfig = field(default_factory=ClientConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    stragglers: StragglersConfig = field(default_factory=StragglersConfig)
    failures: FailuresConfig = field(default_factory=FailuresConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    carbon: CarbonConfig = field(default_factory=CarbonConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    # What the run measures: name -> {_target_: a fedlab.trackers.base.Tracker subclass, and
    # its options}. Config order is the order of their columns in the record; add one with
    # +trackers.NAME._target_=my.module.MyTracker, drop one with ~trackers.NAME.
    trackers: dict[str, Any] = field(default_factory=dict)
    # what the dataset recommends (conf/recommended/<dataset>.yaml: source, group -> values)
    recommended: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.seed >= 0, "seed", f"must be a non-negative integer, got {self.seed}")
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")
        require(self.num_rounds >= 1, "num_rounds", f"must be >= 1, got {self.num_rounds}")


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` can extend it (``- fedlab_schema``), and
    the resolver that sends a resumed run back into its own directory."""
    cs = ConfigStore.instance()
    cs.store(name="fedlab_schema", node=FedlabConfig)
    if not OmegaConf.has_resolver("fedlab.run_dir"):
        # oc.select cannot do this: it returns the default only for a missing key, not null.
        OmegaConf.register_new_resolver(
            "fedlab.run_dir", lambda resume, default: resume if resume else default
        )
