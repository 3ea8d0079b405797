"""One rule for dealing configured values out to the clients: regions, links and devices.

``carbon.regions``, ``carbon.links``, ``devices.mix`` and ``devices.links`` all say the same kind
of thing, "which value does client k get", so they share one reading of the config and one
set of errors:

* one value, ``"FRA"``: every client gets it;
* an explicit mapping ``{0: "FRA", 1: "DEU", "default": "POL"}``: keys are client ids (ints,
  or digit strings as YAML and JSON write them), ``default`` covers the clients not listed and
  without it every client must be listed; an id outside ``0..num_clients-1`` is an error (a
  typo would otherwise silently leave that client on the default);
* a weighted mix ``{"FRA": 0.3, "DEU": 0.7}`` dealt out with the seed: exact counts by the
  largest-remainder method (floors of each share of ``num_clients``, the clients left over to
  the largest fractional parts, ties to the value listed first), in an order shuffled by
  ``random.Random(seed)``, so a 30/70 mix of 10 clients is 3 and 7 clients and not a lottery,
  and the same seed gives the same assignment on every machine.

What a value may be is the caller's: ``check`` returns its canonical spelling (upper-case ISO-3
codes, lower-case link names) or raises ``ValueError``. Every error is one
:class:`~fedlab.config.schema.ConfigError` naming the config key.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fedlab.config.schema import ConfigError

#: A value's check: canonical spelling, or ValueError with a one-line message.
Check = Callable[[Any], str]


def choice(known: Iterable[str]) -> Check:
    """A :data:`Check` that accepts exactly the names in ``known`` (case-sensitive)."""
    names = tuple(known)

    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in names:
            raise ValueError(f"unknown '{value}'; choose from {', '.join(sorted(names))}")
        return value

    return check


def client_id(key: object) -> int | None:
    """A mapping key read as a client id (an int, or a digit string from YAML/JSON); else None."""
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key.strip())
    return None


def assign(
    num_clients: int,
    spec: Any,
    check: Check,
    seed: int,
    key: str,
    *,
    share_first: bool = False,
) -> list[str]:
    """Each client's value (``num_clients`` of them) from ``spec``; see the module docstring.

    ``share_first`` only chooses the float expression of a mix's quotas: ``weight / total * n``
    (what ``carbon.regions`` always computed) instead of ``n * weight / total`` (what
    ``devices.mix`` and ``devices.links`` computed). The two round differently in the last bit
    for about 1 mix in 200 (an exact tie such as 107.5 / 21.5 can tip either way), which moves
    one client; the flag keeps every seed dealing the clients it dealt before the routines were
    merged.
    """
    if num_clients < 0:
        raise ConfigError(key, f"num_clients must be >= 0, got {num_clients}")
    try:
        if isinstance(spec, str):
            return [check(spec)] * num_clients
        if not isinstance(spec, Mapping) or not spec:
            raise ValueError(
                "give one value, {client_id: value, default: value} or a mix {value: weight}; "
                f"got {spec!r}"
            )
        keys = list(spec)
        ids = [k for k in keys if client_id(k) is not None]
        if ids or keys == ["default"]:
            other = [k for k in keys if client_id(k) is None and k != "default"]
            if other:
                raise ValueError(
                    f"mixes client ids and other keys {other[:5]}: use either "
                    "{client_id: value, default: value} or a weighted mix {value: weight}"
                )
            return _explicit(num_clients, spec, check)
        return _weighted(num_clients, spec, check, seed, share_first)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(key, str(err).splitlines()[0]) from None


def _explicit(num_clients: int, spec: Mapping[Any, Any], check: Check) -> list[str]:
    """``{client_id: value, "default": value}``, with no client silently left out."""
    default = spec.get("default")
    out: list[str | None] = [check(default) if default is not None else None] * num_clients
    seen: set[int] = set()
    for key, value in spec.items():
        if key == "default":
            continue
        cid = client_id(key)
        assert cid is not None
        if not 0 <= cid < num_clients:
            raise ValueError(
                f"names client {cid} but there are {num_clients} clients (ids 0..{num_clients - 1})"
            )
        if cid in seen:
            raise ValueError(f"lists client {cid} twice")
        seen.add(cid)
        out[cid] = check(value)
    missing = [i for i, value in enumerate(out) if value is None]
    if missing:
        raise ValueError(
            f"gives no value for clients {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}: list them or add a 'default' entry"
        )
    return [value for value in out if value is not None]


def _weight(name: str, value: Any) -> float:
    """A mix weight: a finite number >= 0 (YAML's ``true`` is not a weight)."""
    if isinstance(value, bool):
        raise ValueError(f"weight of '{name}' must be a number, got {value!r}")
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"weight of '{name}' must be a number, got {value!r}") from None
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight of '{name}' must be finite and >= 0, got {value}")
    return weight


def _weighted(
    num_clients: int, spec: Mapping[Any, Any], check: Check, seed: int, share_first: bool
) -> list[str]:
    """Weighted mix -> exact counts (largest remainder) -> seeded shuffle."""
    weights: dict[str, float] = {}
    for key, value in spec.items():
        name = check(key)
        if name in weights:
            raise ValueError(f"'{name}' appears twice in the mix")
        weights[name] = _weight(name, value)
    total = math.fsum(weights.values())
    if total <= 0:
        raise ValueError("the weights sum to 0: give at least one positive weight")
    quotas = {
        name: w / total * num_clients if share_first else num_clients * w / total
        for name, w in weights.items()
    }
    counts = {name: math.floor(q) for name, q in quotas.items()}
    listed = list(weights)
    by_remainder = sorted(listed, key=lambda n: (-(quotas[n] - counts[n]), listed.index(n)))
    for name in by_remainder[: num_clients - sum(counts.values())]:
        counts[name] += 1
    out = [name for name in weights for _ in range(counts[name])]
    random.Random(seed).shuffle(out)
    return out
