"""The schema of the built-in trackers' groups: ``privacy``, ``carbon`` and ``devices``.

Kept apart from :mod:`fedlab.config.schema` (the run's own keys) so each stays small; the
root :class:`~fedlab.config.schema.FedlabConfig` composes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from fedlab.config import privacy_rules
from fedlab.config.errors import ConfigError, require, require_choice


@dataclass
class PrivacyConfig:
    """Differential privacy (the ``privacy`` group): ``none``, ``local`` or ``central``.

    * ``local``: record-level DP-SGD in every client (Opacus): per-example gradients clipped to
      ``max_grad_norm``, Gaussian noise ``noise_multiplier * max_grad_norm``, Poisson batches.
      ``target_epsilon`` instead picks the noise for the planned rounds before the run.
    * ``central``: user-level DP-FedAvg: updates clipped to ``max_grad_norm`` (``fixed``) or an
      adaptive quantile, by the server or the clients (``clip_at``), noise added once by the
      server: ``z*C/m`` on the mean (``strategy.client_sampling: fixed``) or ``z*C`` on the sum
      over the expected ``q*N`` (``poisson``, :mod:`fedlab.trackers.privacy.mechanism`).

    ``budget_epsilon`` stops training before the round that would exceed it. ``audit:
    canaries``: an empirical lower bound on epsilon from the same run (``audit_*`` keys, checked
    with the sampling by :func:`fedlab.trackers.privacy.central.check_central_sampling`).
    """

    mode: str = "none"
    delta: float = 1e-5
    accountant: str = "rdp"
    conversion: str = "opacus"
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    target_epsilon: float | None = None
    budget_epsilon: float | None = None
    grad_sample_mode: str = "ew"
    clipping: str = "fixed"
    clip_at: str = "server"
    initial_clipping_norm: float = 0.1
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    clipped_count_stddev: float | None = None
    audit: str = "none"
    audit_canaries: int = 100
    audit_guesses: int = 10
    audit_guesses_excluded: int = 0
    audit_confidence: float = 0.95

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
        for key in ("target_epsilon", "budget_epsilon"):
            if getattr(self, key) is not None:
                checks.append((key, rules.validate_target_epsilon, (getattr(self, key),)))
        for key, check, args in checks:
            try:
                check(*args)
            except ValueError as err:
                message = str(err).replace("target_epsilon", key)
                raise ConfigError(f"privacy.{key}", message) from None
        require(
            self.mode == "central" or self.accountant != "pld",
            "privacy.accountant",
            "pld accounts central DP only; local DP uses one Opacus accountant per client "
            "(rdp or prv)",
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
        require_choice(self.audit, "privacy.audit", rules.AUDITS)


#: Where intensities come from (``carbon.intensity``), what they measure
#: (``carbon.intensity_kind``: Green Mirage, arXiv 2402.03550, shows that mixing location- and
#: market-based accounting can overstate savings by up to 55 %) and what a policy decides on
#: (``carbon.forecast``).
INTENSITY_SOURCES = ("static", "trace")
INTENSITY_KINDS = ("average", "marginal", "market")
FORECASTS = ("perfect", "noisy", "persistence", "file")


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
    only carbon uses.

    Where the intensities come from (``intensity``): ``static``, each region's annual value
    from CodeCarbon's data (with ``intensity_profile``, a CSV of 24 hourly values per region
    read at the hour of the simulated clock); or ``trace``, time series with UTC timestamps
    read at the dated clock (``clock.start``): the bundled 2020 traces of DEU, GBR and FRA, or
    ``traces`` ``{REGION: CSV}`` in the same format; ``intensity_kind`` says what a user's
    traces hold (``average``, ``marginal`` or ``market``-based). Temporal policies and
    carbon-aware selection decide on a ``forecast`` (``perfect``, ``noisy`` with a seeded
    relative error ``forecast_error``, ``persistence``: the same hour a day earlier, or
    ``file``: ``forecast_files`` ``{REGION: CSV}``); accounting always uses the actual trace.
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
    intensity: str = "static"
    traces: dict[str, str] = field(default_factory=dict)
    intensity_kind: str = "average"
    forecast: str = "perfect"
    forecast_error: float = 0.05
    forecast_files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require_choice(self.tracking_mode, "carbon.tracking_mode", ("machine", "process"))
        require(self.measure_power_secs > 0, "carbon.measure_power_secs", "must be > 0")
        require(self.pue >= 1, "carbon.pue", f"must be >= 1, got {self.pue}")
        require_choice(self.intensity, "carbon.intensity", INTENSITY_SOURCES)
        require_choice(self.intensity_kind, "carbon.intensity_kind", INTENSITY_KINDS)
        require_choice(self.forecast, "carbon.forecast", FORECASTS)
        ok = math.isfinite(self.forecast_error) and 0 <= self.forecast_error < 1
        require(ok, "carbon.forecast_error", f"must be in [0, 1), got {self.forecast_error}")
        require(self.forecast != "file" or bool(self.forecast_files), "carbon.forecast_files",
                "carbon.forecast=file needs {REGION: CSV}, e.g. +carbon.forecast_files.DEU=f.csv")
        require(self.intensity == "trace" or not self.traces, "carbon.traces",
                "traces are read only with carbon.intensity=trace")
        require(self.intensity == "static" or self.intensity_profile is None,
                "carbon.intensity_profile", "a 24-hour profile is for carbon.intensity=static; "
                "a trace already changes by the hour")
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
    ``clock.round_hours``), and a client whose round would
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
