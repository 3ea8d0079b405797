"""Privacy accounting: epsilon of a history, noise for a target epsilon, per-client accountants.

All the privacy mathematics comes from Opacus (``opacus.accountants``); nothing here
re-derives the RDP of the subsampled Gaussian. A history is a list of
``(noise_multiplier, sample_rate, steps)`` triples, the same format as Opacus'
``accountant.history``: each entry is ``steps`` applications of a Gaussian mechanism with
that noise multiplier on a Poisson subsample of rate ``sample_rate`` (1.0: no amplification).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import create_accountant, get_noise_multiplier

from fedlab.config.privacy_rules import (
    validate_accountant,
    validate_conversion,
    validate_delta,
    validate_noise_multiplier,
    validate_sample_rate,
    validate_steps,
    validate_target_epsilon,
)

HistoryEntry = tuple[float, float, int]

#: RDP orders searched: Opacus' defaults (1.1 .. 10.9, 12 .. 63) and larger ones up to 1024.
#: Small epsilons (much noise, small sample rates, few steps) are optimal at large orders;
#: with Opacus' grid alone they end at its last order and Opacus warns "Optimal order is the
#: largest alpha" because the bound is looser than it need be.
RDP_ORDERS: tuple[float, ...] = (
    *RDPAccountant.DEFAULT_ALPHAS,
    *range(64, 128, 8),
    *(128, 160, 192, 256, 320, 384, 512, 768, 1024),
)

#: Largest noise multiplier :func:`noise_for_target_epsilon` will propose. Beyond ~100 the
#: model learns nothing useful; asking for more means the target is not a sensible one.
MAX_NOISE_MULTIPLIER = 100.0


def new_accountant(accountant: str) -> IAccountant:
    """A fresh Opacus accountant of the named mechanism (from Opacus' own registry)."""
    validate_accountant(accountant)
    with warnings.catch_warnings():
        # GaussianAccountant warns on construction; the caller chose gdp knowingly and the
        # caveat is documented in compute_epsilon.
        warnings.simplefilter("ignore", UserWarning)
        return create_accountant(mechanism=accountant)


def _normalise_history(history: Sequence[Sequence[float]]) -> tuple[HistoryEntry, ...]:
    """Validate a history and merge entries with the same (z, q).

    Composition is commutative (RDP sums per-entry curves, PRV convolves per-entry PRVs), so
    summing the steps of equal (z, q) entries gives the same guarantee; it also keeps PRV
    accounting fast (one discretised PRV per distinct entry). Entries with 0 steps or q = 0
    contribute nothing and are dropped.
    """
    merged: dict[tuple[float, float], int] = {}
    for entry in history:
        if len(entry) != 3:
            raise ValueError(
                f"history entries are (noise_multiplier, sample_rate, steps), got {entry}"
            )
        z = validate_noise_multiplier(entry[0])
        q = validate_sample_rate(entry[1])
        s = validate_steps(entry[2])
        if s == 0 or q == 0.0:
            continue
        merged[(z, q)] = merged.get((z, q), 0) + s
    # Sorted: a canonical form, so equal compositions give bit-identical epsilons (and hit
    # the same cache entry) whatever order the rounds were recorded in.
    return tuple((z, q, s) for (z, q), s in sorted(merged.items()))


def compute_epsilon(
    history: Sequence[Sequence[float]],
    delta: float,
    accountant: str = "rdp",
    conversion: str = "opacus",
    *,
    eps_error: float = 0.01,
) -> float:
    """Epsilon at ``delta`` of the composition of the subsampled Gaussian mechanisms in ``history``.

    Args:
        history: ``[(noise_multiplier, sample_rate, steps), ...]`` (see the module docstring).
        delta: target delta, in (0, 1).
        accountant: "rdp" (Renyi DP; a valid upper bound, slightly loose), "prv" (numerical
            composition of privacy-loss random variables, Gopi et al. 2021: tighter, returns
            its certified upper bound with error ``eps_error``), or "gdp" (Gaussian DP via a
            central limit theorem: an *approximation* that can underestimate epsilon; only
            for comparison, and only for histories with a single (z, q)).
        conversion: how RDP becomes (epsilon, delta), only meaningful for "rdp".
            "opacus" is Opacus' default (Balle et al. 2020, Thm 21), the tighter one;
            "classic" is ``min_alpha rdp(alpha) + log(1/delta) / (alpha - 1)`` (Mironov 2017),
            the formula behind the TensorFlow Privacy tables. Report which one you used.
        eps_error: PRV accuracy (ignored by the other accountants).

    Returns:
        epsilon (0.0 for an empty history, inf if any step had no noise).
    """
    validate_accountant(accountant)
    validate_conversion(conversion, accountant)
    validate_delta(delta)
    return _epsilon_cached(
        _normalise_history(history), float(delta), accountant, conversion, float(eps_error)
    )


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(
    history: tuple[HistoryEntry, ...],
    delta: float,
    accountant: str,
    conversion: str,
    eps_error: float,
) -> float:
    # Cached because a federation has many clients with identical histories (same z, q and
    # local steps), and max_epsilon over them is requested every round.
    if not history:
        return 0.0
    if any(z == 0.0 for z, _, _ in history):
        return math.inf
    if accountant == "rdp" and conversion == "classic":
        orders = list(RDP_ORDERS)
        rdp = sum(
            np.asarray(rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=s, orders=orders))
            for z, q, s in history
        )
        alphas = np.asarray(orders, dtype=float)
        return float(np.nanmin(rdp - math.log(delta) / (alphas - 1.0)))
    if accountant == "gdp" and len(history) != 1:
        # Opacus' GaussianAccountant only looks at history[-1], so a mixed history would be
        # silently under-accounted. Refuse it instead.
        raise ValueError(
            "accountant='gdp' supports a single (noise_multiplier, sample_rate) pair; "
            f"got {len(history)} distinct pairs: use 'rdp' or 'prv'"
        )
    acc = new_accountant(accountant)
    acc.history = list(history)
    if accountant == "rdp":
        return float(acc.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))
    if accountant == "prv":
        with np.errstate(divide="ignore"):  # q = 1 takes log(1 - q) = -inf; handled by Opacus
            return float(acc.get_epsilon(delta=delta, eps_error=eps_error))
    return float(acc.get_epsilon(delta=delta, poisson=True))


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    *,
    epsilon_tolerance: float = 0.01,
    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
) -> float:
    """Smallest noise multiplier (to ``epsilon_tolerance``) whose epsilon is <= the target.

    Uses Opacus' ``get_noise_multiplier`` (bisection over the accountant's default
    conversion), after first checking that the target is reachable at all with at most
    ``max_noise_multiplier``; Opacus itself would search up to 1e6 and return an absurd noise
    level (or fail with an unspecific message) instead.

    Raises:
        ValueError: one line naming the target and the smallest epsilon that is reachable.
    """
    validate_accountant(accountant)
    validate_delta(delta)
    q = validate_sample_rate(sample_rate)
    s = validate_steps(steps)
    validate_target_epsilon(target_epsilon)
    if s == 0 or q == 0.0:
        return 0.0
    floor = compute_epsilon([(max_noise_multiplier, q, s)], delta, accountant)
    if floor > target_epsilon:
        raise ValueError(
            f"target epsilon {target_epsilon:g} at delta {delta:g} is unreachable with "
            f"sample_rate {q:g} and {s} steps: even noise_multiplier {max_noise_multiplier:g} "
            f"gives epsilon {floor:.4g} ({accountant}); raise the target, or use fewer steps "
            "or a smaller sample rate"
        )
    with warnings.catch_warnings():
        # RDP warns when the optimal order is at the end of the alpha grid, which the
        # bisection's extreme probes (sigma = 20, 40, ...) hit routinely; it is harmless here.
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=q,
                steps=s,
                accountant=accountant,
                epsilon_tolerance=epsilon_tolerance,
            )
        )


class ClientAccountants:
    """One Opacus accountant per client, owned by the server as part of the run state.

    Clients report ``(noise_multiplier, sample_rate, steps)`` after local DP-SGD; the server
    :meth:`record`\\ s it. Because the accountants live on the server and serialise to plain
    JSON, the per-client epsilon composes correctly across rounds and across restarts
    (checkpoint :meth:`state_dict`, resume with :meth:`load_state_dict`).

    Client ids are stored as strings (JSON object keys are strings). Use the id of the *data
    owner* (e.g. the partition id), not a transport-level node id that may change on
    restart: privacy is spent by the records, not by the process.
    """

    def __init__(self, accountant: str = "rdp") -> None:
        self.mechanism = validate_accountant(accountant)
        self._accountants: dict[str, IAccountant] = {}

    def __len__(self) -> int:
        return len(self._accountants)

    @property
    def client_ids(self) -> list[str]:
        """Ids of all clients that have recorded at least one noisy step, sorted."""
        return sorted(self._accountants)

    def record(
        self, client_id: int | str, noise_multiplier: float, sample_rate: float, steps: int
    ) -> None:
        """Compose ``steps`` noisy steps at (noise_multiplier, sample_rate) into the client's
        accountant. Consecutive records with the same (z, q) are merged into one entry."""
        z = validate_noise_multiplier(noise_multiplier)
        q = validate_sample_rate(sample_rate)
        s = validate_steps(steps)
        if s == 0:
            return
        acc = self._accountants.setdefault(str(client_id), new_accountant(self.mechanism))
        if self.mechanism == "gdp" and acc.history and acc.history[-1][:2] != (z, q):
            raise ValueError(
                f"client {client_id}: the gdp accountant needs a constant (noise_multiplier, "
                f"sample_rate); got {(z, q)} after {tuple(acc.history[-1][:2])}"
            )
        if acc.history and tuple(acc.history[-1][:2]) == (z, q):
            last = acc.history.pop()
            acc.history.append((z, q, int(last[2]) + s))
        else:
            acc.history.append((z, q, s))

    def history(self, client_id: int | str) -> list[HistoryEntry]:
        """The client's composed history (a copy); empty if it never recorded a step."""
        acc = self._accountants.get(str(client_id))
        if acc is None:
            return []
        return [(float(z), float(q), int(s)) for z, q, s in acc.history]

    def epsilon(self, client_id: int | str, delta: float, conversion: str = "opacus") -> float:
        """The client's epsilon at ``delta`` (0.0 if it never trained privately)."""
        return compute_epsilon(self.history(client_id), delta, self.mechanism, conversion)

    def epsilons(self, delta: float, conversion: str = "opacus") -> dict[str, float]:
        """Epsilon of every client, by client id."""
        return {cid: self.epsilon(cid, delta, conversion) for cid in self.client_ids}

    def max_epsilon(self, delta: float, conversion: str = "opacus") -> float:
        """The run's epsilon: the largest per-client epsilon (0.0 before any DP step)."""
        validate_delta(delta)
        return max(self.epsilons(delta, conversion).values(), default=0.0)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: ``{"mechanism": str, "clients": {id: [[z, q, steps]]}}``."""
        return {
            "mechanism": self.mechanism,
            "clients": {cid: [list(e) for e in self.history(cid)] for cid in self.client_ids},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the state with one produced by :meth:`state_dict` (possibly via JSON).

        Goes through each Opacus accountant's own ``load_state_dict``, which checks that the
        mechanism matches: an RDP history silently read as PRV would change every epsilon.
        """
        if "mechanism" not in state or "clients" not in state:
            raise ValueError("ClientAccountants state needs the keys 'mechanism' and 'clients'")
        if state["mechanism"] != self.mechanism:
            raise ValueError(
                f"cannot load a {state['mechanism']!r} accountant state into a "
                f"{self.mechanism!r} ClientAccountants"
            )
        accountants: dict[str, IAccountant] = {}
        for cid, history in state["clients"].items():
            entries = [tuple(e) for e in history]
            _normalise_history(entries)  # validates values
            acc = new_accountant(self.mechanism)
            acc.load_state_dict(
                {
                    "history": [(float(z), float(q), int(s)) for z, q, s in entries],
                    "mechanism": self.mechanism,
                }
            )
            accountants[str(cid)] = acc
        self._accountants = accountants
