"""Device and link profiles, and which client gets which.

The profiles come from the library ``conf/devices/profiles/library.yaml`` (every constant with
its source; docs/devices_sources.md). Its ``links`` section is the one table of network links:
a link's bandwidth and transfer power (for the device model) and its network energy per GB
(for carbon accounting, :mod:`fedlab.trackers.carbon.network`) sit in one entry, so a link
cannot be known to one model and missing from the other without the start-up check saying so.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

from fedlab.config.measurement import DeviceLibraryConfig, DevicesConfig
from fedlab.trackers.assign import assign, choice

#: The library as installed, relative to the package ``fedlab.conf`` (the repository's conf/).
_LIBRARY = "devices/profiles/library.yaml"


@dataclass(frozen=True)
class Device:
    """A device type: sustained throughput and power (constants and sources in the YAML)."""

    name: str
    gflops: float
    active_w: float
    idle_w: float
    link: str
    source: str = ""

    def compute_s(self, flops: float) -> float:
        """Seconds this device needs for ``flops`` floating-point operations."""
        return flops / (self.gflops * 1e9)


@dataclass(frozen=True)
class Link:
    """A network link type: bandwidth each way and the device's power while transferring."""

    name: str
    down_mbps: float
    up_mbps: float
    transfer_w: float
    source: str = ""

    def seconds(self, bytes_down: float, bytes_up: float) -> float:
        """Seconds to receive ``bytes_down`` and send ``bytes_up`` (1 Mbit/s = 10^6 bit/s)."""
        return 8 * bytes_down / (self.down_mbps * 1e6) + 8 * bytes_up / (self.up_mbps * 1e6)


@functools.lru_cache(maxsize=1)
def packaged_library() -> DeviceLibraryConfig:
    """The installed profile library, typed and range-checked like a composed config's.

    What code outside a run (tests, benchmarks, a NetworkModel built by hand) prices links
    with, so that it reads the same table as a run does; do not modify the returned object.
    """
    from omegaconf import OmegaConf

    text = files("fedlab.conf").joinpath(_LIBRARY).read_text(encoding="utf-8")
    node = OmegaConf.merge(OmegaConf.structured(DeviceLibraryConfig), OmegaConf.create(text))
    library = OmegaConf.to_object(node)
    assert isinstance(library, DeviceLibraryConfig)
    return library


def device_profiles(library: DeviceLibraryConfig) -> dict[str, Device]:
    """The library's devices (``devices.profiles``) as :class:`Device` objects."""
    return {
        name: Device(name, p.gflops, p.active_w, p.idle_w, p.link, p.source)
        for name, p in library.devices.items()
    }


def link_profiles(library: DeviceLibraryConfig) -> dict[str, Link]:
    """The library's links (``devices.profiles``) as :class:`Link` objects."""
    return {
        name: Link(name, p.down_mbps, p.up_mbps, p.transfer_w, p.source)
        for name, p in library.links.items()
    }


def client_devices(devices: DevicesConfig, num_clients: int, seed: int) -> list[str]:
    """Each client's device name from ``devices.mix``."""
    return assign(num_clients, devices.mix, choice(devices.profiles.devices), seed, "devices.mix")


def client_links(
    devices: DevicesConfig,
    num_clients: int,
    seed: int,
    device_names: Sequence[str] | None = None,
) -> list[str]:
    """Each client's link name: ``devices.links`` dealt out with ``seed + 1`` (so a link mix is
    not dealt in step with a device mix of the same shape), else each device's own link."""
    library = devices.profiles
    if devices.links is not None:
        return assign(num_clients, devices.links, choice(library.links), seed + 1, "devices.links")
    if device_names is None:
        device_names = client_devices(devices, num_clients, seed)
    return [library.devices[name].link for name in device_names]
