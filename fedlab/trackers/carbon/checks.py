"""Start-up checks of the ``carbon`` group, before anything is written.

Every value carbon accounting will read is tried here, so a bad one ends the run in one line
naming its key (a :class:`~fedlab.config.schema.ConfigError`) instead of a traceback after the
record was started: an unknown country (CodeCarbon would silently use the world average),
a bad kWh/GB, regions and links that do not fit the clients, and a link that some client uses
but the link table does not price.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedlab.config.errors import ConfigError
from fedlab.config.measurement import CarbonConfig, LinkProfileConfig
from fedlab.trackers.assign import Check
from fedlab.trackers.carbon.intensity import assign_regions, carbon_intensity
from fedlab.trackers.carbon.network import NetworkModel, assign_links
from fedlab.trackers.devices.profiles import packaged_library


def _as_config_error(key: str, build: Callable[[], Any]) -> Any:
    """``build()``, its ValueError or TypeError turned into one line for ``key``."""
    try:
        return build()
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(key, str(err).splitlines()[0]) from None


def priced(network: NetworkModel, library: Mapping[str, LinkProfileConfig], used_by: str) -> Check:
    """A link check for :func:`fedlab.trackers.assign.assign`: the link must have a kWh/GB.

    A link of the library without one is refused naming the library entry's
    ``kwh_per_gb`` (that is where it is missing); a link nobody knows names ``used_by``.
    """
    listed = {str(name).lower(): str(name) for name in library}

    def check(link: Any) -> str:
        name = str(link).lower()
        if name not in network.kwh_per_gb and name in listed:
            entry = listed[name]
            raise ConfigError(
                f"devices.profiles.links.{entry}.kwh_per_gb",
                f"link '{entry}' is used by {used_by} but has no network energy per GB: "
                f"set it (kWh/GB, with kwh_per_gb_source) or carbon.network.{name}",
            )
        return network.check_link(link)

    return check


def check_carbon(
    carbon: CarbonConfig,
    num_clients: int,
    seed: int,
    *,
    library: Mapping[str, LinkProfileConfig] | None = None,
    device_links: Sequence[str] | None = None,
) -> None:
    """Check a :class:`~fedlab.config.schema.CarbonConfig` for ``num_clients`` clients.

    ``library`` is the run's link table (``devices.profiles.links``; None: the packaged
    library); ``device_links`` are the clients' links when simulated devices bring them
    (carbon then charges those, not ``carbon.links``, and each must be priced).
    """
    links = packaged_library().links if library is None else library
    _as_config_error("carbon.country", lambda: carbon_intensity(carbon.country))
    network = _as_config_error(
        "carbon.network", lambda: NetworkModel.from_config(carbon.network, links)
    )
    assign_regions(num_clients, carbon.regions or carbon.country, seed)
    if device_links is None:
        check = priced(network, links, "carbon.links")
        assign_links(num_clients, carbon.links, network, seed, check)
    else:
        check = priced(network, links, "the simulated devices (devices.mix, devices.links)")
        for link in dict.fromkeys(device_links):
            _as_config_error("devices.links", lambda link=link: check(link))
