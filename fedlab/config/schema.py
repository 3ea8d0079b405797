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

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from fedlab.config import privacy_rules


class ConfigError(ValueError):
    """An invalid configuration value; its message is the single line shown to the user."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, message)


def require_fraction(value: float, key: str, *, allow_zero: bool = False) -> None:
    """Check a fraction in (0, 1] (or [0, 1] when ``allow_zero``)."""
    low_ok = value >= 0 if allow_zero else value > 0
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    require(
        low_ok and value <= 1 and math.isfinite(value),
        key,
        f"must be in {interval}, got {value}",
    )


def require_choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    """Check that ``value`` is one of ``choices``."""
    require(value in choices, key, f"must be one of {', '.join(choices)}; got '{value}'")


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

    ``backend``: ``ray`` (Flower's simulation engine: clients in parallel Ray actors, on this
    machine or a cluster at ``ray_address``) or ``inprocess`` (every client call serially in
    this process: no Ray start-up or per-message cost, the same numbers; no round timeout).
    ``client_cpus`` is the Ray resource each simulated client reserves: the number of client
    actors running at once is ``ray_num_cpus / client_cpus``. Flower's default of 2 CPUs per
    client means a single actor on a 2-core machine, so fedlab defaults to 1.
    ``pull_interval_s`` is how often the server's in-memory Grid checks for replies and the
    engine hands messages to the clients (Flower's 0.1 s for both made a round cost at least
    0.2 s whatever the work).
    """

    backend: str = "ray"
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    ray_num_cpus: int | None = None
    ray_address: str | None = None
    round_timeout_s: float = 600.0
    connect_timeout_s: float = 120.0
    torch_threads: int = 1
    pull_interval_s: float = 0.01

    def __post_init__(self) -> None:
        from fedlab.engines.simulation import ENGINES

        require_choice(self.backend, "simulation.backend", tuple(ENGINES))
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
    client keeps taking part (see :meth:`fedlab.fl.schedule.Scheduler.plan`).

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
    aggregate: str | None = None
    min_clients_per_round: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_fraction(self.fraction_train, "strategy.fraction_train")
        require_fraction(self.fraction_evaluate, "strategy.fraction_evaluate", allow_zero=True)
        require(self.min_train_clients >= 1, "strategy.min_train_clients", "must be >= 1")
        require_choice(self.straggler_policy, "strategy.straggler_policy", ("drop", "partial"))
        require_choice(self.selection, "strategy.selection", ("random", "carbon_aware"))
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
class PrivacyConfig:
    """Differential privacy (the ``privacy`` group): ``none``, ``local`` or ``central``.

    * ``local``: record-level DP-SGD in every client (Opacus): per-example gradients clipped to
      ``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``, Poisson batches.
      ``target_epsilon`` instead picks the noise for the planned rounds before the run.
    * ``central``: user-level DP-FedAvg with Flower's wrappers: each client's update clipped to
      ``max_grad_norm`` (``clipping: fixed``) or to an adaptive quantile (``adaptive``), by the
      server or the clients (``clip_at`` decides who clips; noise is always added once to
      the aggregate by the server), Gaussian noise ``noise_multiplier * C / m``.
    """

    mode: str = "none"
    delta: float = 1e-5
    accountant: str = "rdp"
    conversion: str = "opacus"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    target_epsilon: float | None = None
    grad_sample_mode: str = "ew"
    clipping: str = "fixed"
    clip_at: str = "server"
    initial_clipping_norm: float = 0.1
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    clipped_count_stddev: float | None = None

    def __post_init__(self) -> None:
        require_choice(self.mode, "privacy.mode", ("none", "local", "central"))
        if self.mode == "none":
            return
        # The value rules are written once, in fedlab.config.privacy_rules, which the privacy
        # code (accounting, DP-SGD) checks its arguments with too.
        rules = privacy_rules
        checks: list[tuple[str, Any, tuple[Any, ...]]] = [
            ("delta", rules.validate_delta, (self.delta,)),
            ("noise_multiplier", rules.validate_noise_multiplier, (self.noise_multiplier,)),
            ("max_grad_norm", rules.validate_max_grad_norm, (self.max_grad_norm,)),
            ("grad_sample_mode", rules.validate_grad_sample_mode, (self.grad_sample_mode,)),
            ("accountant", rules.validate_accountant, (self.accountant, rules.RUN_ACCOUNTANTS)),
            ("conversion", rules.validate_conversion, (self.conversion, self.accountant)),
        ]
        if self.target_epsilon is not None:
            checks.append(("target_epsilon", rules.validate_target_epsilon, (self.target_epsilon,)))
        for key, check, args in checks:
            try:
                check(*args)
            except ValueError as err:
                raise ConfigError(f"privacy.{key}", str(err)) from None
        require(
            self.target_epsilon is None or self.mode == "local",
            "privacy.target_epsilon",
            "is supported for privacy=local only (central DP: set noise_multiplier)",
        )
        require_choice(self.clipping, "privacy.clipping", ("fixed", "adaptive"))
        require_choice(self.clip_at, "privacy.clip_at", ("server", "client"))
        require(self.initial_clipping_norm > 0, "privacy.initial_clipping_norm", "must be > 0")
        require(
            0 < self.target_clipped_quantile < 1,
            "privacy.target_clipped_quantile",
            "must be in (0, 1)",
        )
        require(self.clip_norm_lr > 0, "privacy.clip_norm_lr", "must be > 0")


@dataclass
class CarbonConfig:
    """Energy and emissions tracking (the ``carbon`` group; ``carbon=off`` disables it).

    The host is measured by CodeCarbon's offline tracker (never any network call); without
    RAPL its figures are a power *model* (CPU TDP x load, RAM per DIMM), which
    ``force_cpu_power``, ``force_ram_power`` and ``pue`` calibrate. ``regions`` places the
    simulated clients in countries (null: all in ``country``; an ISO-3 code; an explicit
    ``{client_id: ISO3, default: ISO3}``; or a weighted mix ``{ISO3: weight}`` assigned with
    the seed); ``links`` gives their network link (``wired``, ``wifi``, ``4g``, or a mapping
    or mix like regions'); ``network`` overrides the kWh/GB of a link, whose values live in the
    one table of links, ``devices.profiles.links`` (docs/carbon.md cites them), or prices a link
    only carbon uses; ``intensity_profile`` is a CSV of hourly intensities per region, read at the
    simulated clock: round r starts at (r - 1) * ``hours_per_round`` hours.
    """

    enabled: bool = True
    country: str = "DEU"
    tracking_mode: str = "machine"
    measure_power_secs: float = 1.0
    force_cpu_power: float | None = None
    force_ram_power: float | None = None
    pue: float = 1.0
    regions: Any = None
    links: Any = "wired"
    network: Any = None
    intensity_profile: str | None = None
    hours_per_round: float = 1.0  # with simulated devices, their round times are the clock

    def __post_init__(self) -> None:
        require_choice(self.tracking_mode, "carbon.tracking_mode", ("machine", "process"))
        require(self.measure_power_secs > 0, "carbon.measure_power_secs", "must be > 0")
        require(self.pue >= 1, "carbon.pue", f"must be >= 1, got {self.pue}")
        require(self.hours_per_round > 0, "carbon.hours_per_round", "must be > 0")
        for key in ("force_cpu_power", "force_ram_power"):
            value = getattr(self, key)
            require(value is None or value > 0, f"carbon.{key}", "must be > 0 watts or null")


@dataclass
class DeviceProfileConfig:
    """One edge device type (``devices.profiles.devices.<name>``); sources in the YAML."""

    gflops: float = MISSING  # sustained training throughput, GFLOP/s
    active_w: float = MISSING  # power while training, W
    idle_w: float = MISSING  # power while waiting in a round, W
    link: str = MISSING  # default network link, a key of devices.profiles.links
    source: str = ""


@dataclass
class LinkProfileConfig:
    """One network link type (``devices.profiles.links.<name>``), the one table of links: what
    a device spends on it (bandwidth, transfer power: the device model) and what the network
    spends per GB (``kwh_per_gb``: carbon accounting). A link without ``kwh_per_gb`` is refused
    at start-up by a run that charges it, unless ``carbon.network`` prices it."""

    down_mbps: float = MISSING
    up_mbps: float = MISSING
    transfer_w: float = MISSING  # the device's power while its radio or NIC transfers, W
    source: str = ""
    kwh_per_gb: float | None = None  # network energy per GB (10^9 bytes) moved, kWh
    kwh_per_gb_source: str = ""


@dataclass
class DeviceLibraryConfig:
    """The device and link profiles a mix can draw from (``conf/devices/profiles/``)."""

    devices: dict[str, DeviceProfileConfig] = field(default_factory=dict)
    links: dict[str, LinkProfileConfig] = field(default_factory=dict)


@dataclass
class DevicesConfig:
    """Simulated edge devices (the ``devices`` group; ``devices=none`` turns them off).

    ``mix`` gives each client a device: null (off), one device name, a weighted mix
    ``{device: weight}`` assigned with the seed, or ``{client_id: device, default: device}``.
    ``links`` overrides the devices' own links in the same forms (null: each device's own).
    With devices on, a round lasts as long as its slowest client's transfers and compute on
    its device, the run's simulated clock is the sum of those rounds (it replaces
    ``carbon.hours_per_round`` for hourly intensity profiles), and a client whose round would
    take longer than ``deadline_s`` is a straggler (``stragglers.policy`` says whether it is
    dropped or trains only what fits). ``count_idle`` adds the idle power of clients waiting
    for the slowest one to the edge energy.
    """

    mix: Any = None
    links: Any = None
    deadline_s: float | None = None
    count_idle: bool = True
    profiles: DeviceLibraryConfig = field(default_factory=DeviceLibraryConfig)

    @property
    def enabled(self) -> bool:
        """Whether clients are simulated on devices."""
        return self.mix is not None

    def __post_init__(self) -> None:
        require(
            self.deadline_s is None or (self.deadline_s > 0 and math.isfinite(self.deadline_s)),
            "devices.deadline_s",
            f"must be > 0 seconds or null, got {self.deadline_s}",
        )
        require(
            self.deadline_s is None or self.mix is not None,
            "devices.deadline_s",
            "needs devices to time the clients: choose devices=<mix> or set devices.mix",
        )
        for name, device in self.profiles.devices.items():
            _require_ranges(device, f"devices.profiles.devices.{name}", ("gflops", "active_w"))
            _require_ranges(device, f"devices.profiles.devices.{name}", ("idle_w",), strict=False)
            require(
                device.link in self.profiles.links,
                f"devices.profiles.devices.{name}.link",
                f"must be one of {', '.join(sorted(self.profiles.links))}; got '{device.link}'",
            )
        for name, link in self.profiles.links.items():
            _require_ranges(link, f"devices.profiles.links.{name}", ("down_mbps", "up_mbps"))
            _require_ranges(
                link, f"devices.profiles.links.{name}", ("transfer_w", "kwh_per_gb"), strict=False
            )


def _require_ranges(node: Any, prefix: str, keys: tuple[str, ...], strict: bool = True) -> None:
    """Check that each of ``keys`` of ``node`` is finite and > 0 (``strict``) or >= 0; an
    optional value left null is not checked (its user says whether it needs one)."""
    for key in keys:
        value = getattr(node, key)
        if value is None:
            continue
        ok = math.isfinite(value) and (value > 0 if strict else value >= 0)
        require(ok, f"{prefix}.{key}", f"must be {'>' if strict else '>='} 0, got {value}")


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
    carbon: CarbonConfig = field(default_factory=CarbonConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    # What the run measures: name -> {_target_: a fedlab.trackers.base.Tracker subclass, and
    # its options}. Config order is the order of their columns in the record; add one with
    # +trackers.NAME._target_=my.module.MyTracker, drop one with ~trackers.NAME.
    trackers: dict[str, Any] = field(default_factory=dict)

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
