"""Start-up checks of the ``devices`` group, before anything is written.

The library's own ranges (throughput, power, bandwidth > 0; a device's link in the library)
are checked by :class:`fedlab.config.schema.DevicesConfig`; what needs the clients is here.
Whether carbon accounting can price the devices' links is carbon's check
(:func:`fedlab.trackers.carbon.checks.check_carbon`), since only it needs the price.
"""

from __future__ import annotations

from fedlab.config.schema import FedlabConfig, require
from fedlab.trackers.devices.profiles import client_devices, client_links


def check_devices(cfg: FedlabConfig) -> None:
    """Check the device mix and links of a :class:`~fedlab.config.schema.FedlabConfig`."""
    names = client_devices(cfg.devices, cfg.num_clients, cfg.seed)
    client_links(cfg.devices, cfg.num_clients, cfg.seed, names)
    require(
        cfg.carbon.links == "wired",
        "carbon.links",
        "with simulated devices each client's link is its device's: set devices.links instead",
    )
