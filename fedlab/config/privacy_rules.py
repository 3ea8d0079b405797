"""The range rules of differential-privacy values, written once.

Two callers check the same values: :class:`fedlab.config.schema.PrivacyConfig` at start-up
(turning a ``ValueError`` into a :class:`~fedlab.config.schema.ConfigError` that names the
key) and the privacy code itself (:mod:`fedlab.trackers.privacy.accounting`,
:mod:`~fedlab.trackers.privacy.dpsgd`), which is also a library called without a config.
The rules live here, under ``fedlab.config``, so the schema never imports ``fedlab.trackers``
(the cycle config -> trackers -> config) and validating a config never imports torch or
Opacus (``fedlab-run --help`` stays fast). Every message is one line: it is shown as is.
"""

from __future__ import annotations

import math

#: Accountants the accounting code computes with. "gdp" is Opacus' Gaussian-DP (CLT)
#: accountant: experimental, it can *underestimate* epsilon (Gopi et al. 2021), and it reads
#: only the last (noise, sample rate) of a history; kept for comparisons only.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "gdp")

#: Accountants a run may report its epsilon with (``privacy.accountant``): those that give an
#: upper bound for any history (gdp does neither, see :data:`ACCOUNTANTS`). "pld" is
#: dp-accounting's privacy-loss-distribution accountant (central DP with Poisson sampling).
RUN_ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "pld")

#: Which accountant can account which client sampling of central DP: Poisson subsampling
#: (add/remove neighbours) has an RDP, PRV and PLD analysis; fixed-size sampling without
#: replacement (replace-one neighbours) only dp-accounting's RDP one (Wang, Balle and
#: Kasiviswanathan 2019); neither Opacus' PRV nor dp-accounting's PLD handles it.
ACCOUNTANTS_FOR_SAMPLING: dict[str, tuple[str, ...]] = {
    "poisson": ("rdp", "prv", "pld"),
    "fixed": ("rdp",),
}

#: Empirical audits of epsilon (``privacy.audit``): none, or one-run canaries (Steinke, Nasr
#: and Jagielski, NeurIPS 2023).
AUDITS: tuple[str, ...] = ("none", "canaries")

#: How RDP becomes (epsilon, delta): "opacus" (Balle et al. 2020, Thm 21, the tighter) or
#: "classic" (Mironov 2017: min over alpha of rdp + log(1/delta) / (alpha - 1)).
CONVERSIONS: tuple[str, ...] = ("opacus", "classic")

#: Per-sample gradient engines: Opacus 1.6's that work for plain (non-distributed) training,
#: and fedlab's ``compiled`` (torch.func under torch.compile, fedlab.trackers.privacy.per_sample).
GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ew", "functorch", "ghost", "compiled")


def validate_noise_multiplier(noise_multiplier: float) -> float:
    """Return ``noise_multiplier`` as float; raise ValueError if it is negative or not finite.

    Zero is allowed (it means "clip only, no privacy": the accountants report inf).
    """
    z = float(noise_multiplier)
    if not math.isfinite(z) or z < 0:
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")
    return z


def validate_max_grad_norm(max_grad_norm: float) -> float:
    """Return ``max_grad_norm`` as float; raise ValueError unless it is finite and > 0.

    The clipping norm is the sensitivity the noise is scaled to; 0 would clip every gradient
    to nothing and a negative norm has no meaning.
    """
    c = float(max_grad_norm)
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm}")
    return c


def validate_delta(delta: float) -> float:
    """Return ``delta`` as float; raise ValueError unless 0 < delta < 1.

    delta = 0 makes (epsilon, delta) of a Gaussian mechanism infinite; delta >= 1 promises
    nothing at all.
    """
    d = float(delta)
    if not (0.0 < d < 1.0):
        raise ValueError(f"delta must be in the open interval (0, 1), got {delta}")
    return d


def validate_target_epsilon(target_epsilon: float) -> float:
    """Return ``target_epsilon`` as float; raise ValueError unless it is finite and > 0."""
    eps = float(target_epsilon)
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon}")
    return eps


def validate_grad_sample_mode(mode: str) -> str:
    """Return ``mode``; raise ValueError unless it is one of :data:`GRAD_SAMPLE_MODES`."""
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, got {mode!r}"
        )
    return mode


def validate_accountant(accountant: str, allowed: tuple[str, ...] = ACCOUNTANTS) -> str:
    """Return ``accountant``; raise ValueError unless it is one of ``allowed``."""
    if accountant not in allowed:
        raise ValueError(f"accountant must be one of {', '.join(allowed)}, got {accountant!r}")
    return accountant


def validate_conversion(conversion: str, accountant: str) -> str:
    """Return ``conversion``; raise ValueError if it is unknown or does not fit ``accountant``.

    "classic" is an RDP-to-(epsilon, delta) formula: PRV and GDP have no RDP curve to convert.
    """
    if conversion not in CONVERSIONS:
        raise ValueError(
            f"conversion must be one of {', '.join(CONVERSIONS)}, got {conversion!r}"
        )
    if conversion == "classic" and accountant != "rdp":
        raise ValueError(
            "conversion 'classic' is an RDP-to-(epsilon, delta) formula: it applies to the "
            f"rdp accountant only, not {accountant!r}"
        )
    return conversion


def validate_sample_rate(sample_rate: float) -> float:
    """Return ``sample_rate`` as float; raise ValueError unless it is a probability."""
    q = float(sample_rate)
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
    return q


def validate_steps(steps: int) -> int:
    """Return ``steps`` as int; raise ValueError unless it is a whole number >= 0."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    return int(steps)


def delta_warning(delta: float, n_examples: int, unit: str = "records") -> str | None:
    """Return a one-line warning if ``delta >= 1 / n_examples``, else None.

    A mechanism that publishes one random record in full satisfies (0, 1/n)-DP, so a delta of
    1/n or more allows "leak one individual completely" and the epsilon is meaningless. The
    usual rule is delta << 1/n (e.g. 1e-5 for n = 60000). ``n_examples`` is the number of
    protected units: records of a client for local DP, clients for user-level DP.
    """
    validate_delta(delta)
    if n_examples <= 0:
        raise ValueError(f"n_examples must be > 0, got {n_examples}")
    if delta >= 1.0 / n_examples:
        return (
            f"WARNING: delta={delta:g} >= 1/n = 1/{n_examples} = {1.0 / n_examples:.3g} "
            f"({unit}); rule: delta must be much smaller than 1/n, or one {unit[:-1]} "
            "may be leaked in full"
        )
    return None
