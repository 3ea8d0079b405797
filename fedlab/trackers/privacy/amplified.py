"""User-level (central) DP accounting with amplification by client sampling.

Each round of central DP is one Gaussian release on the clients' clipped updates. What it
costs depends on how the round's clients were drawn, and each sampling has its own
neighbouring relation, stated in the record:

* **Poisson** (``strategy.client_sampling: poisson``): every client independently with
  probability q; the release is noise ``z * C`` on the *sum* (see
  :mod:`fedlab.trackers.privacy.mechanism`), so adding or removing one client moves it by at
  most C: a Poisson-subsampled Gaussian of noise multiplier z under **add/remove-one**
  neighbours. Accounted by Opacus' RDP or PRV accountant (``(z, q, rounds)`` histories) or
  dp-accounting's PLD accountant (``PoissonSampledDpEvent``).
* **Fixed size** (``fixed``): m of N clients without replacement; Flower's wrapper releases the
  mean of the aggregated n updates with noise ``z * C / m``. With a fixed m the natural
  neighbours are **replace-one**: one client's clipped update changes by up to 2C, the mean of
  n by 2C / n, so the release is a Gaussian of noise multiplier ``z * n / (2 m)`` relative to
  its replace-one sensitivity, subsampled without replacement (Wang, Balle and
  Kasiviswanathan, AISTATS 2019), accounted by dp-accounting's RDP accountant
  (``SampledWithoutReplacementDpEvent``). Neither Opacus' PRV nor dp-accounting's PLD
  accountant has an analysis of this sampling: such a config is refused at start-up.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

from fedlab.config.privacy_rules import ACCOUNTANTS_FOR_SAMPLING
from fedlab.trackers.privacy.accounting import MAX_NOISE_MULTIPLIER, compute_epsilon

#: A central release: (noise multiplier as the accountant reads it, sampled of population)
#: Poisson: (z, q); fixed size: (z * n / (2 m), m / N) with m and N kept beside it.
Release = tuple[float, float]

NEIGHBOURS: dict[str, str] = {"poisson": "add/remove one client", "fixed": "replace one client"}


def release_noise(sampling: str, noise_multiplier: float, aggregated: int, planned: int) -> float:
    """The noise multiplier of one round's release relative to its sensitivity.

    Poisson: z (noise on the sum, whoever answered). Fixed size: the mean of ``aggregated``
    updates has replace-one sensitivity 2C / n while the noise was sized ``z * C / m``.
    """
    if sampling == "poisson":
        return noise_multiplier
    return noise_multiplier * aggregated / (2.0 * planned)


def central_epsilon(
    releases: Sequence[float],
    sampling: str,
    rate: float,
    sample_size: int,
    population: int,
    delta: float,
    accountant: str,
    conversion: str = "opacus",
) -> float:
    """Epsilon at ``delta`` after the central releases with these noise multipliers.

    ``rate`` is q (Poisson); ``sample_size`` of ``population`` is the fixed-size draw. Raises
    ValueError for an accountant that cannot account the sampling.
    """
    if accountant not in ACCOUNTANTS_FOR_SAMPLING[sampling]:
        raise ValueError(
            f"accountant {accountant!r} cannot account {sampling} client sampling; allowed: "
            f"{', '.join(ACCOUNTANTS_FOR_SAMPLING[sampling])}"
        )
    if not releases:
        return 0.0
    if any(z == 0.0 for z in releases):
        return math.inf
    if sampling == "poisson" and accountant in ("rdp", "prv"):
        return compute_epsilon([(z, rate, 1) for z in releases], delta, accountant, conversion)
    return _dp_accounting_epsilon(releases, sampling, (rate, sample_size, population), delta)


def _dp_accounting_epsilon(
    releases: Sequence[float], sampling: str, draw: tuple[float, int, int], delta: float
) -> float:
    """dp-accounting's PLD (Poisson) or RDP (without replacement) epsilon; ``draw`` is
    (q, m, N)."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.rdp import RdpAccountant

    counts: dict[float, int] = {}
    for z in releases:  # composition is commutative: one event per distinct noise
        counts[z] = counts.get(z, 0) + 1
    if sampling == "poisson":
        accountant: dp_accounting.PrivacyAccountant = PLDAccountant()
    else:
        # dp-accounting's own orders (fractional ones included, which its analysis of sampling
        # without replacement uses): an integer-only grid gave a looser epsilon here.
        accountant = RdpAccountant(
            neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
        )
    rate, sample_size, population = draw
    for z, count in sorted(counts.items()):
        gaussian = dp_accounting.GaussianDpEvent(z)
        event = (
            dp_accounting.PoissonSampledDpEvent(rate, gaussian)
            if sampling == "poisson"
            else dp_accounting.SampledWithoutReplacementDpEvent(population, sample_size, gaussian)
        )
        accountant.compose(event, count)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta))


def solve_noise(
    target_epsilon: float,
    epsilon_of: Callable[[float], float],
    *,
    tolerance: float = 0.01,
    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
) -> float:
    """Smallest noise multiplier z (to ``tolerance`` in epsilon) with ``epsilon_of(z)`` <= target.

    Bisection: epsilon falls as the noise grows. Raises ValueError when even
    ``max_noise_multiplier`` gives more than the target.
    """
    floor = epsilon_of(max_noise_multiplier)
    if floor > target_epsilon:
        raise ValueError(
            f"target epsilon {target_epsilon:g} is unreachable: even noise_multiplier "
            f"{max_noise_multiplier:g} gives epsilon {floor:.4g}; raise the target or use fewer "
            "rounds or a smaller sampling rate"
        )
    low, high = 0.0, max_noise_multiplier
    while True:
        mid = (low + high) / 2
        eps = epsilon_of(mid) if mid > 0 else math.inf
        if eps > target_epsilon:
            low = mid
        else:
            high = mid
            if target_epsilon - eps <= tolerance * target_epsilon:
                return high
        if high - low < 1e-6:
            return high
