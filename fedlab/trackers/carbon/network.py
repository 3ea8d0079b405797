"""Energy of moving the model over each client's network link.

``kWh = bytes / 1e9 * kWh_per_GB[link]``. The kWh/GB of each link lives in the one table of
links, ``conf/devices/profiles/library.yaml`` (next to the link's bandwidth and transfer power,
each with its source; docs/carbon.md discusses the values and their system boundaries);
``carbon.network`` overrides a link's value or prices a link only carbon accounting uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedlab.config.measurement import LinkProfileConfig
from fedlab.trackers.assign import Check, assign
from fedlab.trackers.devices.profiles import packaged_library

_BYTES_PER_GB = 1e9


def link_prices(links: Mapping[str, LinkProfileConfig] | None = None) -> dict[str, float]:
    """kWh/GB of every priced link of a link table (``devices.profiles.links``; None: the
    packaged library), by lower-case name. A link whose ``kwh_per_gb`` is null is left out:
    carbon accounting refuses it at start-up (:mod:`fedlab.trackers.carbon.checks`)."""
    table = packaged_library().links if links is None else links
    return {
        str(name).lower(): float(link.kwh_per_gb)
        for name, link in table.items()
        if link.kwh_per_gb is not None
    }


@dataclass(frozen=True)
class NetworkModel:
    """Energy of moving bytes over a client's link: ``kWh = bytes / 1e9 * kWh_per_GB[link]``.

    A per-GB intensity is an *attributional* model (it shares the network's energy in
    proportion to traffic); network equipment power barely depends on load, so halving
    the bytes does not halve real network energy. That is the convention of the per-GB
    literature and of Qiu et al. (2023); docs/carbon.md discusses it.
    """

    kwh_per_gb: Mapping[str, float] = field(default_factory=link_prices)

    def __post_init__(self) -> None:
        clean: dict[str, float] = {}
        for link, value in dict(self.kwh_per_gb).items():
            v = float(value)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"kWh/GB for link {link!r} must be finite and >= 0, got {value}")
            clean[str(link).lower()] = v
        object.__setattr__(self, "kwh_per_gb", clean)

    @classmethod
    def from_config(
        cls,
        overrides: Mapping[str, float] | None = None,
        links: Mapping[str, LinkProfileConfig] | None = None,
    ) -> NetworkModel:
        """The priced links of ``links`` (:func:`link_prices`), with ``overrides``
        (``carbon.network``) replacing or adding link types, e.g. ``{"wired": 0.0065}``."""
        table = link_prices(links)
        table.update({str(k).lower(): float(v) for k, v in (overrides or {}).items()})
        return cls(table)

    @property
    def links(self) -> tuple[str, ...]:
        """Known link types."""
        return tuple(self.kwh_per_gb)

    def check_link(self, link: Any) -> str:
        """Return the normalised link name, or raise ValueError naming the valid ones."""
        name = str(link).lower()
        if name not in self.kwh_per_gb:
            raise ValueError(
                f"unknown network link {link!r}: priced links are {', '.join(self.links)} "
                f"(price another with carbon.network.{name} or kwh_per_gb in the link library)"
            )
        return name

    def energy_kwh(self, nbytes: float, link: str) -> float:
        """Energy in kWh of transferring ``nbytes`` bytes over ``link``."""
        if nbytes < 0:
            raise ValueError(f"byte count must be >= 0, got {nbytes}")
        return nbytes / _BYTES_PER_GB * self.kwh_per_gb[self.check_link(link)]


def assign_links(
    num_clients: int,
    links: Mapping[Any, Any] | str,
    network: NetworkModel,
    seed: int,
    check: Check | None = None,
) -> list[str]:
    """Each client's link from ``carbon.links`` (one link, ``{client_id: link, "default":
    link}`` or a weighted mix dealt out with ``seed + 1``, so that a mix of links is not
    dealt in step with a mix of regions of the same shape); ``check`` replaces
    :meth:`NetworkModel.check_link` (the start-up check's more precise errors)."""
    return assign(num_clients, links, check or network.check_link, seed + 1, "carbon.links")
