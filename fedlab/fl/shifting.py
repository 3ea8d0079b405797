"""When rounds run: temporal carbon-aware policies, and when clients are there (local time).

Shifting work in time is the other half of carbon-aware FL (the first is choosing *where*, by
client selection): the same kWh emit less when the grid is cleaner, so a run with slack before
its deadline can wait for low-carbon hours ("Let's Wait Awhile", Wiesner et al., Middleware
'21). This module decides *when* each round starts on the run's simulated clock, from a
forecast ``signal`` of the grid's intensity, and which clients are available at an instant,
from daily windows in each client's local time (phones charging overnight).

Everything here is pure: no I/O, no clock of its own, no fedlab imports. The scheduler calls
:meth:`TemporalPolicy.next_start` round by round (replanning with the forecast issued at the
end of the previous round), and a replay calls it again under hundreds of start dates, so a
plan is one signal call per candidate slot plus vectorised selection, never a loop over pairs.

Times: the policy works in *sim seconds* since ``clock.start``; availability takes POSIX epoch
seconds (UTC) and converts with :mod:`zoneinfo`, so daylight-saving changes move a local
window by an hour in UTC, as they do for a real phone on a charger.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

Signal = Callable[[float, float, float], float]
"""``signal(a_s, b_s, issued_at_s)``: the forecast mean intensity (g/kWh) over the sim interval
[a_s, b_s), as forecast at sim second ``issued_at_s``."""

POLICIES = ("immediate", "deadline", "threshold")

# Slot counts are floor(span / duration); spans that are an exact multiple of the duration in
# decimal (30 h for 30 rounds of 0.1 h...) can land a hair under it in binary floating point.
_SLOT_EPS = 1e-9
# Block sums come from a running total, which carries rounding error: blocks within this
# relative distance of the best are ties, so the earliest of them wins as for exact ties.
_TIE_REL = 1e-9


class ShiftError(ValueError):
    """A bad clock setting or availability spec; the message is one line naming the key."""


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h"


def slot_choice(costs: Sequence[float], rounds: int, interruptible: bool) -> list[int]:
    """The slots (indices into ``costs``, sorted) that minimise the summed cost of ``rounds``.

    Interruptible: the ``rounds`` cheapest slots, ties going to the earlier slot (waiting longer
    for the same carbon only delays the model). Not interruptible: the contiguous block
    ``start .. start + rounds - 1`` with the lowest sum, the earliest on ties; window sums come
    from one cumulative sum, so this is O(K) for K slots whatever ``rounds`` is.
    """
    values = np.asarray(costs, dtype=float)
    if rounds <= 0:
        return []
    if rounds > values.size:
        raise ShiftError(f"slot_choice: {rounds} rounds do not fit in {values.size} slots")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ShiftError(f"signal: slot {bad[0]} has intensity {values[bad[0]]}; need a number")
    if interruptible:
        # a stable sort keeps equal costs in slot order, so ties go to the earlier slot
        return sorted(int(i) for i in np.argsort(values, kind="stable")[:rounds])
    running = np.concatenate(([0.0], np.cumsum(values)))
    sums = running[rounds:] - running[:-rounds]
    best = sums.min()
    tolerance = _TIE_REL * max(1.0, float(np.abs(running).max()))
    start = int(np.flatnonzero(sums <= best + tolerance)[0])
    return list(range(start, start + rounds))


@dataclass(frozen=True)
class TemporalPolicy:
    """When the rounds of a run start, given a forecast of the grid's intensity.

    ``immediate`` runs each round as soon as the previous one ends (the baseline). ``deadline``
    places the remaining rounds in the cheapest slots before ``deadline_s``; ``threshold`` waits
    for the first slot at or under ``threshold`` g/kWh, bounded by the deadline (or, without one,
    by ``horizon_s`` per round). ``interruptible=False`` keeps the training one contiguous block:
    only the first round's start moves, the rest follow back to back.
    """

    kind: str = "immediate"
    deadline_s: float | None = None  # the whole training must END by clock.start + deadline_s
    interruptible: bool = True  # False: one contiguous block, only its start moves
    threshold: float | None = None  # g/kWh, for kind == "threshold"
    horizon_s: float = 7 * 86400  # threshold without a deadline: the longest wait per round

    def check(self, num_rounds: int, round_s: float) -> None:
        """Reject settings the policy cannot honour, before the run starts."""
        self._kind()
        if not (math.isfinite(round_s) and round_s > 0):
            raise ShiftError(f"clock.round_hours: must be > 0, got {_hours(round_s)}")
        if self.kind == "immediate":
            return  # ignores the deadline and threshold: nothing to honour
        if self.kind == "threshold":
            self._threshold()
            if self.deadline_s is None and not (
                math.isfinite(self.horizon_s) and self.horizon_s >= 0
            ):
                raise ShiftError(
                    f"clock.max_wait_hours: must be >= 0, got {_hours(self.horizon_s)}"
                )
        if self.kind == "deadline" or self.deadline_s is not None:
            deadline = self._deadline()
            if _slots(deadline, round_s) < num_rounds:
                raise ShiftError(
                    f"clock.deadline_hours: {_hours(deadline)} is shorter than the training needs"
                    f" ({num_rounds} rounds x {_hours(round_s)} = {_hours(num_rounds * round_s)})"
                )

    def _kind(self) -> None:
        if self.kind not in POLICIES:
            raise ShiftError(
                f"clock.policy: unknown policy {self.kind!r} (allowed: {', '.join(POLICIES)})"
            )

    def _deadline(self) -> float:
        if self.deadline_s is None or not math.isfinite(self.deadline_s):
            raise ShiftError(
                f"clock.deadline_hours: the {self.kind} policy needs a deadline in hours, "
                f"got {self.deadline_s}"
            )
        return self.deadline_s

    def _threshold(self) -> float:
        if self.threshold is None or not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ShiftError(
                f"clock.threshold_g_per_kwh: the threshold policy needs a threshold >= 0 g/kWh, "
                f"got {self.threshold}"
            )
        return self.threshold

    def next_start(
        self, now_s: float, remaining: int, duration_s: float, signal: Signal, first: bool
    ) -> float:
        """The sim second (>= ``now_s``) at which the next round starts.

        ``now_s`` is the end of the previous round (0 before round 1), ``remaining`` the rounds
        left including this one, ``duration_s`` this round's (estimated) length, ``first``
        whether this is the run's first round. Candidate slots are
        ``[now + i*d, now + (i+1)*d)``; each is priced by ``signal(slot, issued_at=now)``, so a
        plan uses only what is known when it is made and is redone every round.
        """
        if self.kind == "immediate" or remaining <= 0:
            return now_s
        self._kind()
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ShiftError(f"clock.round_hours: a round must last > 0 s, got {duration_s}")
        if not self.interruptible and not first:
            return now_s  # the block is running: no gaps inside it
        if self.kind == "deadline":
            return self._deadline_start(now_s, remaining, duration_s, signal)
        return self._threshold_start(now_s, remaining, duration_s, signal)

    def _deadline_start(self, now_s: float, remaining: int, d: float, signal: Signal) -> float:
        k = _slots(self._deadline() - now_s, d)
        if k < remaining:
            return now_s  # the deadline can no longer be met: lose no more time
        costs = _slot_costs(signal, now_s, d, k)
        return now_s + slot_choice(costs, remaining, self.interruptible)[0] * d

    def _threshold_start(self, now_s: float, remaining: int, d: float, signal: Signal) -> float:
        limit = self._threshold()
        if self.deadline_s is None:
            last = _slots(self.horizon_s, d)  # slots 0..last start within the horizon
            fallback = now_s + self.horizon_s
        else:
            k = _slots(self._deadline() - now_s, d)
            if k < remaining:
                return now_s
            last = k - remaining  # the latest slot that still leaves room for the rest
            fallback = now_s + last * d
        # the earliest qualifying slot wins, so price slots one by one and stop at it
        for i in range(last + 1):
            a = now_s + i * d
            if signal(a, a + d, now_s) <= limit:
                return a
        return fallback


def _slots(span_s: float, duration_s: float) -> int:
    """How many whole slots of ``duration_s`` fit in ``span_s`` (negative spans: none)."""
    return max(0, math.floor(span_s / duration_s + _SLOT_EPS))


def _slot_costs(signal: Signal, now_s: float, d: float, k: int) -> np.ndarray:
    """The forecast of each of the ``k`` slots from ``now_s``, all issued at ``now_s``.

    Slot starts are ``now + i*d`` (not a running sum) so slot edges do not drift over
    thousands of slots."""
    starts = now_s + np.arange(k, dtype=float) * d
    return np.fromiter(
        (signal(float(a), float(a) + d, now_s) for a in starts), dtype=float, count=k
    )


# ---------------------------------------------------------------------------------------------
# Availability in local time

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_ALWAYS = "always"
_DAY_MIN = 24 * 60


@dataclass(frozen=True)
class Window:
    """A daily window in local time, minutes after local midnight, ``[start, end)``.

    ``end_min < start_min`` wraps midnight ("22:00-06:00": from 22:00 to 06:00 the next
    morning); ``end_min`` may be 1440 ("18:00-24:00").
    """

    start_min: int
    end_min: int

    def contains(self, minute: float) -> bool:
        """Whether local time ``minute`` (after midnight, fractional) is inside the window."""
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def __str__(self) -> str:
        return "-".join(f"{m // 60:02d}:{m % 60:02d}" for m in (self.start_min, self.end_min))


def parse_window(text: str, key: str) -> Window:
    """``"HH:MM-HH:MM"`` -> :class:`Window`; ShiftError naming ``key`` for anything else."""
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if match is None:
        raise ShiftError(f"{key}: {text!r} is not a window HH:MM-HH:MM (e.g. 22:00-06:00)")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        raise ShiftError(f"{key}: {text!r} is not a time of day (00:00 to 23:59, end up to 24:00)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end % _DAY_MIN:
        raise ShiftError(f"{key}: {text!r} is empty or the whole day; write 'always' for no limit")
    return Window(start, end)


# Countries whose grid region has one civil time zone (mainland for ESP and PRT). Countries
# spanning several zones (USA, CAN, AUS, BRA, RUS, MEX, IDN...) need clock.timezone.
REGION_TIMEZONES: dict[str, str] = {
    "ARE": "Asia/Dubai", "ARG": "America/Argentina/Buenos_Aires", "AUT": "Europe/Vienna",
    "BEL": "Europe/Brussels", "BGD": "Asia/Dhaka", "BGR": "Europe/Sofia",
    "CHE": "Europe/Zurich", "CHN": "Asia/Shanghai", "COL": "America/Bogota",
    "CZE": "Europe/Prague", "DEU": "Europe/Berlin", "DNK": "Europe/Copenhagen",
    "EGY": "Africa/Cairo", "ESP": "Europe/Madrid", "EST": "Europe/Tallinn",
    "FIN": "Europe/Helsinki", "FRA": "Europe/Paris", "GBR": "Europe/London",
    "GRC": "Europe/Athens", "HKG": "Asia/Hong_Kong", "HRV": "Europe/Zagreb",
    "HUN": "Europe/Budapest", "IND": "Asia/Kolkata", "IRL": "Europe/Dublin",
    "ISL": "Atlantic/Reykjavik", "ISR": "Asia/Jerusalem", "ITA": "Europe/Rome",
    "JPN": "Asia/Tokyo", "KEN": "Africa/Nairobi", "KOR": "Asia/Seoul",
    "LTU": "Europe/Vilnius", "LUX": "Europe/Luxembourg", "LVA": "Europe/Riga",
    "MYS": "Asia/Kuala_Lumpur", "NGA": "Africa/Lagos", "NLD": "Europe/Amsterdam",
    "NOR": "Europe/Oslo", "NZL": "Pacific/Auckland", "PAK": "Asia/Karachi",
    "PER": "America/Lima", "PHL": "Asia/Manila", "POL": "Europe/Warsaw",
    "PRT": "Europe/Lisbon", "ROU": "Europe/Bucharest", "SAU": "Asia/Riyadh",
    "SGP": "Asia/Singapore", "SRB": "Europe/Belgrade", "SVK": "Europe/Bratislava",
    "SVN": "Europe/Ljubljana", "SWE": "Europe/Stockholm", "THA": "Asia/Bangkok",
    "TUR": "Europe/Istanbul", "TWN": "Asia/Taipei", "VNM": "Asia/Ho_Chi_Minh",
    "ZAF": "Africa/Johannesburg",
}  # fmt: skip


def _zone(name: str, key: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ShiftError(
            f"{key}: unknown time zone {name!r}; use an IANA name such as Europe/Berlin"
        ) from None


def region_timezone(region: str, override: str | None) -> str:
    """The IANA zone of a client in ``region``: ``override`` (clock.timezone) when given, else
    the region's own from :data:`REGION_TIMEZONES`."""
    if override is not None:
        _zone(override, "clock.timezone")
        return override
    zone = REGION_TIMEZONES.get(region.upper())
    if zone is None:
        raise ShiftError(
            f"clock.timezone: no time zone known for {region}; set clock.timezone=Area/City"
        )
    return zone


def _local_minute(zone: ZoneInfo, epoch_s: float) -> float:
    local = datetime.fromtimestamp(epoch_s, tz=zone)
    return local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60


class Availability:
    """Which clients can train at an instant: one daily local-time window per client."""

    def __init__(self, windows: Sequence[Window | None], zones: Sequence[str]) -> None:
        """``windows[c]`` is client c's window (None: always available), ``zones[c]`` the IANA
        zone its window is read in."""
        if len(windows) != len(zones):
            raise ShiftError(f"clock.availability: {len(windows)} windows for {len(zones)} zones")
        self.windows: tuple[Window | None, ...] = tuple(windows)
        self.zones: tuple[str, ...] = tuple(zones)
        self._tz = {name: _zone(name, "clock.timezone") for name in set(self.zones)}

    @classmethod
    def from_config(
        cls,
        spec: object,
        regions: Sequence[str],
        timezone: str | None,
        num_clients: int,
        seed: int,
        key: str = "clock.availability",
    ) -> Availability:
        """Build from ``clock.availability``: null or "always" (everyone, always), one window
        for everyone ("22:00-06:00"), per client ``{0: "22:00-06:00", default: "always"}``, or
        a mix ``{"22:00-06:00": 0.7, "always": 0.3}`` assigned by ``np.random.default_rng(seed)``
        with the weights normalised. ``regions[c]`` is client c's grid region; its zone is only
        looked up for clients that have a window (clients always there need none)."""
        if len(regions) != num_clients:
            raise ShiftError(f"{key}: {len(regions)} client regions for {num_clients} clients")
        windows = _windows(spec, num_clients, seed, key)
        zones = [
            "UTC" if w is None else region_timezone(r, timezone)
            for w, r in zip(windows, regions, strict=True)
        ]
        return cls(windows, zones)

    def available(self, client: int, epoch_s: float) -> bool:
        """Whether ``client`` is inside its window at POSIX second ``epoch_s`` (UTC)."""
        window = self.windows[client]
        if window is None:
            return True
        return window.contains(_local_minute(self._tz[self.zones[client]], epoch_s))

    def available_clients(self, epoch_s: float) -> list[int]:
        """The clients available at ``epoch_s``, in id order (local time computed per zone)."""
        minutes = {name: _local_minute(tz, epoch_s) for name, tz in self._tz.items()}
        return [
            c
            for c, (w, z) in enumerate(zip(self.windows, self.zones, strict=True))
            if w is None or w.contains(minutes[z])
        ]


def _window_or_always(value: object, key: str) -> Window | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == _ALWAYS):
        return None
    return parse_window(value, key)  # type: ignore[arg-type]  # parse_window rejects non-str


def _is_weight(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _windows(spec: object, n: int, seed: int, key: str) -> list[Window | None]:
    if spec is None or isinstance(spec, str):
        return [_window_or_always(spec, key)] * n
    if not isinstance(spec, Mapping) or not spec:
        raise ShiftError(
            f"{key}: expected null, 'always', 'HH:MM-HH:MM', {{client: window, default: window}} "
            f"or {{window: weight}}; got {spec!r}"
        )
    values = list(spec.values())
    if all(_is_weight(v) for v in values):
        return _mix(spec, n, seed, key)
    if all(v is None or isinstance(v, str) for v in values):
        return _per_client(spec, n, key)
    raise ShiftError(
        f"{key}: give either {{client: window, default: window}} (windows as values) or a mix "
        f"{{window: weight}} (numbers as values), not both"
    )


def _per_client(spec: Mapping, n: int, key: str) -> list[Window | None]:
    default = _window_or_always(spec.get("default"), f"{key}.default")
    windows: list[Window | None] = [default] * n
    for client, value in spec.items():
        if client == "default":
            continue
        text = str(client).strip()
        if isinstance(client, bool) or not text.isdigit():
            raise ShiftError(
                f"{key}.{client}: not a client id or 'default' (a mix is {{window: weight}})"
            )
        if int(text) >= n:
            raise ShiftError(f"{key}.{client}: no such client (ids 0..{n - 1})")
        windows[int(text)] = _window_or_always(value, f"{key}.{client}")
    return windows


def _mix(spec: Mapping, n: int, seed: int, key: str) -> list[Window | None]:
    options = [_window_or_always(window, f"{key}.{window}") for window in spec]
    weights = np.array([float(w) for w in spec.values()])
    for window, weight in zip(spec, weights, strict=True):
        if not (math.isfinite(weight) and weight >= 0):
            raise ShiftError(f"{key}.{window}: a weight must be a number >= 0, got {weight}")
    if weights.sum() <= 0:
        raise ShiftError(f"{key}: the weights sum to 0; give at least one positive weight")
    picks = np.random.default_rng(seed).choice(len(options), size=n, p=weights / weights.sum())
    return [options[int(i)] for i in picks]
