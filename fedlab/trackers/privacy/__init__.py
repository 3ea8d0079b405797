"""Differential privacy for fedlab: accounting, noise calibration, DP-SGD plumbing, checks.

Two kinds of privacy live in fedlab and both are accounted here:

* **Local (record-level) DP**: each client trains with DP-SGD (Opacus). The client only
  reports what actually happened -- ``(noise_multiplier, sample_rate, steps)`` -- and the
  *server* composes it into that client's persistent accountant (:class:`ClientAccountants`),
  which is part of the run state, so the epsilon survives rounds, restarts and resumes.
  The run's epsilon is the maximum over clients: every client protects its own records,
  and the guarantee of the run is that of its least protected client.
* **Central (user-level) DP**: DP-FedAvg with Flower's DP wrappers. Where Flower's own
  accountant cannot be used (adaptive clipping, unequal weights, Poisson client sampling),
  :func:`user_level_history` gives the history to account with and :func:`compute_epsilon`
  turns it into an epsilon.

All the privacy mathematics comes from Opacus (``opacus.accountants``); nothing here
re-derives the RDP of the subsampled Gaussian. A history is a list of
``(noise_multiplier, sample_rate, steps)`` triples, the same format as Opacus'
``accountant.history``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from torch import nn
from torch.utils.data import DataLoader

__all__ = [
    "ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "NOISE_IGNORING_AGGREGATORS",
    "ClientAccountants",
    "DPTrainingReport",
    "PrivateTraining",
    "compute_epsilon",
    "delta_warning",
    "make_private_training",
    "noise_for_target_epsilon",
    "private_training",
    "user_level_history",
    "validate_central_dp_strategy",
    "validate_delta",
    "validate_grad_sample_mode",
    "validate_max_grad_norm",
    "validate_noise_multiplier",
]

AccountantName = Literal["rdp", "prv", "gdp"]
Conversion = Literal["opacus", "classic"]
GradSampleMode = Literal["hooks", "ew", "functorch", "ghost"]
HistoryEntry = tuple[float, float, int]

#: Accountants that fedlab accepts. "gdp" is Opacus' Gaussian-DP (CLT) accountant: it is
#: experimental and can *underestimate* epsilon (Gopi et al. 2021), so it is never the default.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "gdp")

#: Per-sample gradient engines of Opacus 1.6 that work for plain (non-distributed) training.
GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ew", "functorch", "ghost")

#: Aggregators whose output is not the mean of the clipped updates. The noise of Flower's DP
#: wrappers is calibrated to the mean's sensitivity (C / m), so their epsilon would be wrong.
NOISE_IGNORING_AGGREGATORS: tuple[str, ...] = (
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
)

_ACCOUNTANT_CLASSES: dict[str, type[IAccountant]] = {
    "rdp": RDPAccountant,
    "prv": PRVAccountant,
    "gdp": GaussianAccountant,
}

#: Largest noise multiplier :func:`noise_for_target_epsilon` will propose. Beyond ~100 the
#: model learns nothing useful; asking for more means the target is not a sensible one.
MAX_NOISE_MULTIPLIER = 100.0


# --------------------------------------------------------------------------------------
# Validation (one-line messages, so they read well in logs and Hydra errors)
# --------------------------------------------------------------------------------------


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


def validate_grad_sample_mode(mode: str) -> str:
    """Return ``mode``; raise ValueError if Opacus 1.6 has no such single-process engine."""
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, got {mode!r}"
        )
    return mode


def _normalise_strategy_name(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def validate_central_dp_strategy(strategy: str) -> None:
    """Raise ValueError if central DP is combined with an aggregator that ignores its noise scale.

    Flower's DP wrappers clip each update to norm C and add Gaussian noise with std
    ``z * C / m`` to the aggregate, which is the sensitivity of the *mean* of m clipped
    updates. FedMedian, FedTrimmedAvg, Krum, MultiKrum and Bulyan return a median, a trimmed
    mean or one selected client's update: one client can move those by up to C (not C / m),
    so the same noise gives far less privacy than the accountant reports.
    """
    key = _normalise_strategy_name(strategy)
    if key in NOISE_IGNORING_AGGREGATORS:
        raise ValueError(
            f"central DP cannot be combined with {strategy}: the DP wrapper's noise "
            "(std z*C/m) is calibrated to the sensitivity of the mean of clipped updates, "
            f"but {strategy} returns a median/trimmed mean/selected update that one client "
            "can move by up to C, so the reported epsilon would be wrong; use FedAvg-type "
            "aggregation (fedavg, fedprox, fedadam, fedyogi, fedadagrad, fedavgm)"
        )


def _validate_sample_rate(sample_rate: float) -> float:
    q = float(sample_rate)
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
    return q


def _validate_steps(steps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps}")
    return int(steps)


def _validate_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    return accountant


def _new_accountant(accountant: str) -> IAccountant:
    _validate_accountant(accountant)
    with warnings.catch_warnings():
        # GaussianAccountant warns on construction; the caller chose gdp knowingly and the
        # caveat is documented in compute_epsilon.
        warnings.simplefilter("ignore", UserWarning)
        return _ACCOUNTANT_CLASSES[accountant]()


# --------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------


def _normalise_history(history: Sequence[Sequence[float]]) -> tuple[HistoryEntry, ...]:
    """Validate a history and merge entries with the same (z, q).

    Composition is commutative, so summing the steps of equal (z, q) entries gives the same
    guarantee; it also keeps PRV accounting fast (one discretised PRV per distinct entry).
    Entries with 0 steps or q = 0 contribute nothing and are dropped.
    (RDP composes by summing per-entry RDP curves and PRV by convolving per-entry PRVs;
    both are order-free.)
    """
    merged: dict[tuple[float, float], int] = {}
    for entry in history:
        if len(entry) != 3:
            raise ValueError(
                f"history entries are (noise_multiplier, sample_rate, steps), got {entry}"
            )
        z = validate_noise_multiplier(entry[0])
        q = _validate_sample_rate(entry[1])
        s = _validate_steps(entry[2])
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
        history: ``[(noise_multiplier, sample_rate, steps), ...]``: each entry is ``steps``
            applications of a Gaussian mechanism with that noise multiplier on a Poisson
            subsample of rate ``sample_rate`` (1.0 means no subsampling amplification).
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
    _validate_accountant(accountant)
    if conversion not in ("opacus", "classic"):
        raise ValueError(f"conversion must be 'opacus' or 'classic', got {conversion!r}")
    if conversion == "classic" and accountant != "rdp":
        raise ValueError(
            f"conversion='classic' is an RDP-to-(eps, delta) formula; it does not apply to "
            f"accountant={accountant!r}"
        )
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
    if accountant == "rdp":
        orders = RDPAccountant.DEFAULT_ALPHAS
        if conversion == "classic":
            rdp = sum(
                np.asarray(
                    rdp_analysis.compute_rdp(q=q, noise_multiplier=z, steps=s, orders=orders)
                )
                for z, q, s in history
            )
            alphas = np.asarray(orders, dtype=float)
            return float(np.nanmin(rdp - math.log(delta) / (alphas - 1.0)))
        acc: IAccountant = RDPAccountant()
        acc.history = list(history)
        return float(acc.get_epsilon(delta=delta, alphas=orders))
    if accountant == "prv":
        acc = PRVAccountant()
        acc.history = list(history)
        with np.errstate(divide="ignore"):  # q = 1 takes log(1 - q) = -inf; handled by Opacus
            return float(acc.get_epsilon(delta=delta, eps_error=eps_error))
    # gdp: Opacus' GaussianAccountant only looks at history[-1], so a mixed history would be
    # silently under-accounted. Refuse it instead.
    if len(history) != 1:
        raise ValueError(
            "accountant='gdp' supports a single (noise_multiplier, sample_rate) pair; "
            f"got {len(history)} distinct pairs: use 'rdp' or 'prv'"
        )
    acc = _new_accountant("gdp")
    acc.history = list(history)
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
    _validate_accountant(accountant)
    validate_delta(delta)
    q = _validate_sample_rate(sample_rate)
    s = _validate_steps(steps)
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon}")
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


def user_level_history(
    noise_multiplier: float,
    clients_per_round: int,
    num_clients: int,
    rounds: int,
    sampling: str = "fixed",
) -> list[HistoryEntry]:
    """History to account user-level DP-FedAvg with: ``[(z, q, rounds)]``.

    ``noise_multiplier`` is the z of Flower's DP wrappers (noise std ``z * C`` on the sum of
    the clipped updates, i.e. ``z * C / m`` on their mean).

    * ``sampling="poisson"``: each client joins each round independently with probability
      ``q = clients_per_round / num_clients``; amplification by subsampling applies.
    * ``sampling="fixed"``: exactly ``clients_per_round`` clients are drawn without
      replacement (what Flower's ``grid``/strategy sampling does). We then account with
      ``q = 1``, i.e. claim NO amplification. The Poisson analysis does not transfer: the
      sample size is public and fixed, which matches the *replace-one* neighbouring
      relation, under which the sensitivity of the sum is 2C (not C) and the sampled-
      without-replacement RDP bounds differ (Wang, Balle, Kasiviswanathan 2019). Without
      that separate analysis, the only bound this simple accounting can honestly give is
      the one without amplification, which holds for any selection of the participants.
    """
    z = validate_noise_multiplier(noise_multiplier)
    if num_clients <= 0 or clients_per_round <= 0 or clients_per_round > num_clients:
        raise ValueError(
            f"need 0 < clients_per_round <= num_clients, got {clients_per_round} of {num_clients}"
        )
    r = _validate_steps(rounds)
    if sampling == "poisson":
        q = clients_per_round / num_clients
    elif sampling == "fixed":
        q = 1.0
    else:
        raise ValueError(f"sampling must be 'poisson' or 'fixed', got {sampling!r}")
    return [(z, q, r)]


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
        self.mechanism = _validate_accountant(accountant)
        self._accountants: dict[str, IAccountant] = {}

    def __len__(self) -> int:
        return len(self._accountants)

    def __contains__(self, client_id: object) -> bool:
        return str(client_id) in self._accountants

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
        q = _validate_sample_rate(sample_rate)
        s = _validate_steps(steps)
        if s == 0:
            return
        acc = self._accountants.setdefault(str(client_id), _new_accountant(self.mechanism))
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

    def record_history(self, client_id: int | str, history: Sequence[Sequence[float]]) -> None:
        """Record every entry of a client-reported history (e.g. ``DPTrainingReport.history``)."""
        for z, q, s in history:
            self.record(client_id, z, q, int(s))

    def history(self, client_id: int | str) -> list[HistoryEntry]:
        """The client's composed history (a copy); empty if it never recorded a step."""
        acc = self._accountants.get(str(client_id))
        if acc is None:
            return []
        return [(float(z), float(q), int(s)) for z, q, s in acc.history]

    def accountant(self, client_id: int | str) -> IAccountant | None:
        """The client's Opacus accountant (None if it never recorded a step)."""
        return self._accountants.get(str(client_id))

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
            "clients": {
                cid: [[float(z), float(q), int(s)] for z, q, s in self._accountants[cid].history]
                for cid in self.client_ids
            },
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
            acc = _new_accountant(self.mechanism)
            acc.load_state_dict(
                {
                    "history": [(float(z), float(q), int(s)) for z, q, s in entries],
                    "mechanism": self.mechanism,
                }
            )
            accountants[str(cid)] = acc
        self._accountants = accountants

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ClientAccountants:
        """Build a ClientAccountants from :meth:`state_dict` output."""
        obj = cls(str(state.get("mechanism", "rdp")))
        obj.load_state_dict(state)
        return obj


# --------------------------------------------------------------------------------------
# DP-SGD plumbing for the client
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DPTrainingReport:
    """What a client's DP-SGD actually did; the server composes it into its accountant.

    ``history`` is the exact list of noisy steps Opacus' step hook saw (normally one entry
    ``(noise_multiplier, sample_rate, steps)``).
    """

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    expected_batch_size: int
    empty_batches: int
    history: tuple[HistoryEntry, ...]

    def as_metrics(self) -> dict[str, float | int]:
        """Flat scalars for a Flower MetricRecord (keys ``dp-...``)."""
        return {
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-max-grad-norm": self.max_grad_norm,
            "dp-sample-rate": self.sample_rate,
            "dp-steps": self.steps,
        }


@dataclass
class PrivateTraining:
    """The private training objects of one local-training session.

    Use ``model`` for forward passes, ``optimizer`` for steps, ``data_loader`` for batches
    and ``criterion`` for the loss (in ghost mode it is Opacus' two-pass loss and *must* be
    used). ``module`` is the caller's original ``nn.Module``: its parameters are the ones
    being trained, so after :meth:`close` it holds the result with unchanged state_dict keys.

    Every batch of the Poisson loader must lead to exactly one optimizer step, *including
    empty batches* (use :meth:`noise_only_step` or :meth:`fit_batch`): the accountant assumes
    one noisy release per sampled batch, and skipping empty ones would reveal that no
    record was sampled.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader
    criterion: Callable[..., Any]
    module: nn.Module
    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str
    sample_rate: float
    expected_batch_size: int
    _accountant: IAccountant = field(repr=False)
    _closed: bool = field(default=False, repr=False)
    empty_batches: int = 0

    @property
    def history(self) -> list[HistoryEntry]:
        """Noisy steps taken so far, as recorded by Opacus' step hook."""
        return [(float(z), float(q), int(s)) for z, q, s in self._accountant.history]

    @property
    def steps(self) -> int:
        """Number of noisy optimizer steps taken so far."""
        return sum(s for _, _, s in self.history)

    def noise_only_step(self) -> None:
        """Take the noisy step of an empty Poisson batch: zero clipped sum plus noise.

        Needed because "ew" cannot run a forward pass on 0 samples and the loss of an empty
        batch is NaN; the release must still happen for the accounting to hold.
        """
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.module.parameters():
            if not p.requires_grad:
                continue
            if self.grad_sample_mode == "ghost":
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = p.new_zeros((0, *p.shape))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.empty_batches += 1

    def fit_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> float | None:
        """One DP-SGD step on a batch; returns the mean loss (None for an empty batch)."""
        if len(targets) == 0:
            self.noise_only_step()
            return None
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.model(inputs), targets)
        with warnings.catch_warnings():
            # Opacus' per-sample hooks are full backward hooks; torch warns on every model
            # whose input does not require grad (i.e. always). The warning is benign.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def report(self) -> DPTrainingReport:
        """Summary to send to the server (see :meth:`ClientAccountants.record_history`)."""
        return DPTrainingReport(
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            sample_rate=self.sample_rate,
            steps=self.steps,
            expected_batch_size=self.expected_batch_size,
            empty_batches=self.empty_batches,
            history=tuple(self.history),
        )

    def close(self) -> None:
        """Remove Opacus' hooks and per-parameter attributes from ``module`` (idempotent).

        Afterwards ``module`` is a plain nn.Module again: make_private can be applied to it
        another time without "Trying to add hooks twice", and it pickles/serialises cleanly.
        """
        if self._closed:
            return
        self.optimizer.zero_grad(set_to_none=True)
        cleanup = getattr(self.model, "_close", None) or getattr(self.model, "cleanup", None)
        if cleanup is not None:
            cleanup()
        for p in self.module.parameters():
            for attr in ("grad_sample", "summed_grad", "_forward_counter", "_processed"):
                if hasattr(p, attr):
                    delattr(p, attr)
        self._closed = True


def _seeded_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """Two independent generators (batch sampling, noise) derived from one seed."""
    sample_seed, noise_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return (
        torch.Generator().manual_seed(int(sample_seed) & 0x7FFF_FFFF_FFFF_FFFF),
        torch.Generator().manual_seed(int(noise_seed) & 0x7FFF_FFFF_FFFF_FFFF),
    )


def make_private_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
    criterion: Callable[..., Any] | None = None,
    seed: int | None = None,
    sample_generator: torch.Generator | None = None,
    noise_generator: torch.Generator | None = None,
    proximal_mu: float = 0.0,
) -> PrivateTraining:
    """Wrap (model, optimizer, loader) for record-level DP-SGD with Poisson sampling.

    Each call uses a fresh ``PrivacyEngine`` with a fresh local RDP accountant, used only to
    *count* what happens (its history is what :meth:`PrivateTraining.report` returns); the
    privacy budget itself is composed on the server.

    Args:
        model: a plain nn.Module (not yet wrapped); BatchNorm is rejected by Opacus.
        optimizer: an optimizer over ``model``'s parameters.
        data_loader: loader whose ``batch_size`` sets the expected batch size; it is replaced
            by a Poisson-sampling loader with ``sample_rate = 1 / len(data_loader)``.
        noise_multiplier, max_grad_norm: DP-SGD noise (std = z * C on the clipped sum) and C.
        grad_sample_mode: "hooks" (default, works everywhere), "ew" (expanded weights),
            "functorch", or "ghost" (ghost clipping; ``criterion`` becomes a two-pass loss).
        criterion: loss with reduction "mean" (default ``nn.CrossEntropyLoss()``).
        seed: makes batch sampling and noise deterministic (secure_mode is off: this is a
            research simulator; the PRNG is not cryptographically secure). Explicit
            ``sample_generator`` / ``noise_generator`` take precedence over ``seed``.
        proximal_mu: FedProx's mu. The proximal term mu/2 ||w - w_global||^2 does not depend
            on data, so its gradient ``mu (w - w_global)`` is added *after* clipping and noise
            (via Opacus' step hook) -- with DP-SGD a proximal term in the loss would be
            silently dropped, because the optimizer rebuilds ``p.grad`` from per-sample grads.
    """
    noise_multiplier = validate_noise_multiplier(noise_multiplier)
    max_grad_norm = validate_max_grad_norm(max_grad_norm)
    grad_sample_mode = validate_grad_sample_mode(grad_sample_mode)
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
    if criterion is None:
        criterion = nn.CrossEntropyLoss()
    if seed is not None:
        seeded_sample, seeded_noise = _seeded_generators(seed)
        sample_generator = sample_generator or seeded_sample
        noise_generator = noise_generator or seeded_noise
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None

    with warnings.catch_warnings():
        # "Secure RNG turned off": intended, see the docstring.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    out = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        noise_generator=noise_generator,
        grad_sample_mode=grad_sample_mode,
    )
    if grad_sample_mode == "ghost":
        private_model, private_optimizer, private_criterion, private_loader = out
    else:
        private_model, private_optimizer, private_loader = out
        private_criterion = criterion
    if sample_generator is not None:
        # make_private takes the sampler's generator from the original loader; seed it here
        # so batch composition is reproducible without touching the global RNG.
        private_loader.batch_sampler.generator = sample_generator
        private_loader.generator = sample_generator

    if global_params is not None:
        account_hook = private_optimizer.step_hook
        trainable = [p for p in model.parameters()]

        def _hook(optim: Any) -> None:
            account_hook(optim)
            with torch.no_grad():
                for p, p0 in zip(trainable, global_params, strict=True):
                    if p.requires_grad and p.grad is not None:
                        p.grad.add_(p - p0, alpha=proximal_mu)

        private_optimizer.attach_step_hook(_hook)

    sample_rate = 1.0 / len(data_loader)
    return PrivateTraining(
        model=private_model,
        optimizer=private_optimizer,
        data_loader=private_loader,
        criterion=private_criterion,
        module=model,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        grad_sample_mode=grad_sample_mode,
        sample_rate=sample_rate,
        expected_batch_size=int(private_optimizer.expected_batch_size),
        _accountant=engine.accountant,
    )


@contextlib.contextmanager
def private_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    **kwargs: Any,
) -> Iterator[PrivateTraining]:
    """Context-manager form of :func:`make_private_training`; closes (unhooks) on exit.

    Example::

        with private_training(model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                              seed=42) as dp:
            for _ in range(epochs):
                for x, y in dp.data_loader:
                    dp.fit_batch(x, y)
        report = dp.report()  # -> send report.history to the server
        model.state_dict()    # plain keys, no "_module." prefix
    """
    session = make_private_training(model, optimizer, data_loader, **kwargs)
    try:
        yield session
    finally:
        session.close()


# ---------------------------------------------------------------------------------------------
# Run-level privacy: wrapping the strategy for central DP, planning local noise, and the
# round-by-round ledger the record is written from.
# ---------------------------------------------------------------------------------------------


def central_dp_strategy(
    strategy: Any, cfg: Any, clients_per_round: int, num_clients: int
) -> tuple[Any, bool]:
    """Wrap a Flower strategy in Flower's user-level DP wrapper for ``privacy=central``.

    Returns ``(wrapped, flower_accounted)``. Flower's own RDP accountant is attached where it
    applies (fixed clipping over FedAvg's own aggregation with equal client weights and no
    amplification claimed, which matches fedlab's fixed-size client sampling); the ledger
    accounts every other case with Opacus. ``cfg`` is a :class:`fedlab.config.schema.PrivacyConfig`.
    """
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
    from flwr.serverapp import strategy as flwr_strategy

    validate_central_dp_strategy(type(strategy).__name__.removeprefix("Scheduled"))
    z = cfg.noise_multiplier
    if cfg.clipping == "adaptive":
        cls = (
            flwr_strategy.DifferentialPrivacyServerSideAdaptiveClipping
            if cfg.clip_at == "server"
            else flwr_strategy.DifferentialPrivacyClientSideAdaptiveClipping
        )
        # Flower's default count noise (m/20) cannot carry a z above m/10 (Andrew et al.'s
        # split needs z < 2 * sigma_b); take at least z so the update noise grows <= 15%.
        sigma_b = cfg.clipped_count_stddev
        if sigma_b is None and z > 0:
            sigma_b = max(clients_per_round / 20, z)
        wrapped = cls(
            strategy,
            noise_multiplier=z,
            num_sampled_clients=clients_per_round,
            initial_clipping_norm=cfg.initial_clipping_norm,
            target_clipped_quantile=cfg.target_clipped_quantile,
            clip_norm_lr=cfg.clip_norm_lr,
            clipped_count_stddev=sigma_b,
        )
        return wrapped, False
    cls = (
        flwr_strategy.DifferentialPrivacyServerSideFixedClipping
        if cfg.clip_at == "server"
        else flwr_strategy.DifferentialPrivacyClientSideFixedClipping
    )
    fedavg_aggregation = isinstance(strategy, flwr_strategy.FedAvg) and (
        type(strategy).aggregate_train is flwr_strategy.FedAvg.aggregate_train
    )
    accountant = None
    if fedavg_aggregation and z > 0:
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=cfg.delta,
                population_size=num_clients,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
    wrapped = cls(
        strategy,
        noise_multiplier=z,
        clipping_norm=cfg.max_grad_norm,
        num_sampled_clients=clients_per_round,
        accountant=accountant,
    )
    return wrapped, accountant is not None


def plan_local_noise(
    target_epsilon: float,
    delta: float,
    planned: Mapping[int, tuple[float, int]],
    accountant: str = "rdp",
) -> float:
    """The smallest noise multiplier that keeps every client within ``target_epsilon``.

    ``planned`` maps each client to its (sample_rate, total noisy steps) over the run as the
    seeded schedule plans it. Epsilon falls as noise grows, so the noise the most exposed
    client needs suffices for all of them.
    """
    return max(
        noise_for_target_epsilon(target_epsilon, delta, q, steps, accountant)
        for q, steps in planned.values()
        if steps > 0
    )


class PrivacyLedger:
    """Epsilon of a run, round by round, from what the clients and the server actually did.

    * local DP: each client's reported (noise, sample rate, steps) is composed into that
      client's own Opacus accountant (:class:`ClientAccountants`); the run's epsilon is the
      largest over clients.
    * central DP: one Gaussian release per round on the clients' updates. A round where only
      n of the m planned clients were aggregated gives the mean a sensitivity of C/n while
      the noise was sized for C/m, so its effective noise multiplier is z * n / m. Flower's
      accountant (when attached) assumes every round full; when a round is not, fedlab
      accounts the whole run with Opacus at the effective multipliers, and says so.
    """

    def __init__(self, cfg: Any, num_clients: int, clients_per_round: int) -> None:
        self.cfg = cfg
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.clients = ClientAccountants(cfg.accountant)
        self.releases: list[tuple[float, int]] = []  # central: (effective z, aggregated)
        self.flower_strategy: Any = None
        self.epsilon: float | None = None

    @property
    def flower_accounted(self) -> bool:
        """Whether Flower's accountant gives the run's epsilon (central, every round full)."""
        return (
            self.flower_strategy is not None
            and getattr(self.flower_strategy, "accountant", None) is not None
            and all(n == self.clients_per_round for _, n in self.releases)
        )

    def after_round(self, rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
        """Compose one round's releases; returns each trained client's epsilon (local DP)."""
        cfg = self.cfg
        trained = [r for r in rows if r["phase"] == "train" and r.get("dp_steps")]
        if cfg.mode == "local":
            for r in trained:
                self.clients.record(
                    r["client"], r["dp_noise_multiplier"], r["dp_sample_rate"], int(r["dp_steps"])
                )
            per_client = {
                r["client"]: self.clients.epsilon(r["client"], cfg.delta, cfg.conversion)
                for r in trained
            }
            self.epsilon = (
                self.clients.max_epsilon(cfg.delta, cfg.conversion) if len(self.clients) else 0.0
            )
            return per_client
        aggregated = sum(1 for r in rows if r["phase"] == "train" and r["status"] == "ok")
        if aggregated:
            z_eff = cfg.noise_multiplier * aggregated / self.clients_per_round
            self.releases.append((z_eff, aggregated))
        self.epsilon = self._central_epsilon()
        return {}

    def _central_epsilon(self) -> float:
        if not self.releases:
            return 0.0
        if self.flower_accounted:
            return float(self.flower_strategy.privacy_spent().epsilon)
        history = [(z, 1.0, 1) for z, _ in self.releases]  # no amplification: q = 1
        return compute_epsilon(history, self.cfg.delta, self.cfg.accountant, self.cfg.conversion)

    def accountant_name(self) -> str:
        """Which accountant produced the epsilon, in words."""
        cfg = self.cfg
        opacus = f"Opacus {cfg.accountant.upper()} ({cfg.conversion} conversion)"
        if cfg.mode == "local":
            return f"{opacus}, one per client, Poisson sampling of records"
        if self.flower_accounted:
            return "Flower RdpAccountant (dp-accounting), no amplification"
        return f"{opacus}, no amplification, effective noise per round"

    def guarantee(self) -> str:
        """The guarantee in one line of plain words."""
        cfg = self.cfg
        eps = "inf" if self.epsilon is None or math.isinf(self.epsilon) else f"{self.epsilon:.3g}"
        if cfg.mode == "local":
            return (
                f"(epsilon={eps}, delta={cfg.delta:g}) record-level DP for every client's "
                f"examples (DP-SGD, noise {cfg.noise_multiplier:.3g}, clip "
                f"{cfg.max_grad_norm:g}; {self.accountant_name()})"
            )
        clip = f"clip {cfg.max_grad_norm:g}" if cfg.clipping == "fixed" else "adaptive clipping"
        return (
            f"(epsilon={eps}, delta={cfg.delta:g}) user-level DP for each client's whole "
            f"dataset (DP-FedAvg, noise {cfg.noise_multiplier:.3g}, {clip}; "
            f"{self.accountant_name()})"
        )

    def summary(self) -> dict[str, Any]:
        """The ``privacy`` section of ``results.json``."""
        cfg = self.cfg
        section: dict[str, Any] = {
            "mode": cfg.mode,
            "unit": "record" if cfg.mode == "local" else "user",
            "epsilon": self.epsilon,
            "delta": cfg.delta,
            "accountant": self.accountant_name(),
            "noise_multiplier": cfg.noise_multiplier,
            "max_grad_norm": cfg.max_grad_norm if cfg.clipping == "fixed" else None,
            "guarantee": self.guarantee(),
        }
        if cfg.mode == "local":
            rates = [q for cid in self.clients.client_ids for _, q, _ in self.clients.history(cid)]
            section |= {
                "target_epsilon": cfg.target_epsilon,
                "grad_sample_mode": cfg.grad_sample_mode,
                "sample_rate_min": min(rates, default=None),
                "sample_rate_max": max(rates, default=None),
                "client_epsilons": self.clients.epsilons(cfg.delta, cfg.conversion),
            }
        else:
            section |= {
                "clipping": cfg.clipping,
                "clip_at": cfg.clip_at,
                "client_sampling": "fixed-size without replacement",
                "client_sampling_rate": self.clients_per_round / self.num_clients,
                "amplification": False,
                "releases": len(self.releases),
                "effective_noise_multipliers": [z for z, _ in self.releases],
            }
        return section

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (for checkpoints)."""
        return {
            "clients": self.clients.state_dict(),
            "releases": list(self.releases),
            "epsilon": self.epsilon,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Flower's accountant lives inside the DP wrapper, which a resumed run builds afresh:
        the past releases are composed into it again.
        """
        self.clients.load_state_dict(state["clients"])
        self.releases = [(float(z), int(n)) for z, n in state["releases"]]
        self.epsilon = state["epsilon"]
        accountant = getattr(self.flower_strategy, "accountant", None)
        if accountant is not None:
            from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

            for _ in self.releases:
                accountant.compose(
                    GaussianPrivacyEvent(
                        noise_multiplier=self.cfg.noise_multiplier,
                        sample_size=self.clients_per_round,
                        population_size=self.num_clients,
                    )
                )
