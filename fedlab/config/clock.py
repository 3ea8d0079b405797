"""The schema of the ``clock`` group: the run's dated simulated clock and when its rounds run.

Rounds take place on a simulated clock that starts at ``clock.start`` (UTC) and advances by each
round's duration: the simulated devices' time where ``devices`` is configured, else
``round_hours``. A temporal policy (:mod:`fedlab.fl.shifting`) may make a round wait for a
cleaner hour: ``immediate`` never waits (the clock as it always was), ``deadline`` defers rounds
to the lowest-carbon forecast slots so that training ends within ``deadline_hours``,
``threshold`` runs a round only when the forecast is at or below ``threshold_g_per_kwh``.
``availability`` gives clients windows in local time (phones idle and charging 22:00-06:00):
a round samples only clients available at its start, and waits until enough are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedlab.config.errors import ConfigError, require, require_choice

#: The temporal policies (:class:`fedlab.fl.shifting.TemporalPolicy`).
POLICIES = ("immediate", "deadline", "threshold")
#: Whose forecast a temporal policy minimises: the grids of the clients a round would train
#: (the population, or those carbon-aware selection would pick) or the simulation host's.
SIGNALS = ("clients", "host")


def parse_utc(text: Any, key: str = "clock.start") -> float:
    """An ISO 8601 UTC date-time (``2020-06-15T10:30:00Z``) as POSIX seconds, or a
    :class:`ConfigError` naming ``key`` (:func:`fedlab.trackers.carbon.traces.parse_utc`, the
    one rule: a time without an offset or in another zone is refused)."""
    from fedlab.trackers.carbon.traces import parse_utc as parse

    try:
        return parse(str(text))
    except ValueError as err:
        raise ConfigError(key, f"{err}; e.g. 2020-06-15T10:30:00Z") from None


def format_utc(epoch_s: float) -> str:
    """POSIX seconds as ``2020-06-15T10:30:00Z`` (the traces' own rule,
    :func:`fedlab.trackers.carbon.traces.format_utc`)."""
    from fedlab.trackers.carbon.traces import format_utc as render

    return render(epoch_s)


@dataclass
class ClockConfig:
    """When the simulated rounds happen (the ``clock`` group; ``clock=immediate`` by default).

    ``start`` null keeps the clock undated (seconds since the run's start, as fedlab always
    had); hourly traces (``carbon.intensity=trace``), availability windows and any policy but
    ``immediate`` need a date. ``signal`` says whose forecast a policy minimises.
    """

    start: str | None = None
    round_hours: float = 1.0  # a round's duration without simulated devices
    policy: str = "immediate"
    deadline_hours: float | None = None  # all rounds end within this many hours of `start`
    interruptible: bool = True  # False: the rounds run as one block, only its start moves
    threshold_g_per_kwh: float | None = None
    max_wait_hours: float = 168.0  # threshold without a deadline: the longest wait
    signal: str = "clients"
    availability: Any = None  # null | "22:00-06:00" | {client: window, default: w} | {w: weight}
    timezone: str | None = None  # availability's local zone; null: each client region's own
    target_accuracy: float | None = None  # the record says when central accuracy reached it

    def __post_init__(self) -> None:
        if self.start is not None:
            parse_utc(self.start)
        positive = math.isfinite(self.round_hours) and self.round_hours > 0
        require(positive, "clock.round_hours", f"must be > 0 hours, got {self.round_hours}")
        require_choice(self.policy, "clock.policy", POLICIES)
        require_choice(self.signal, "clock.signal", SIGNALS)
        if self.target_accuracy is not None:
            ok = 0 < self.target_accuracy <= 1
            require(ok, "clock.target_accuracy", f"must be in (0, 1], got {self.target_accuracy}")
        for key in ("deadline_hours", "threshold_g_per_kwh", "max_wait_hours"):
            value = getattr(self, key)
            ok = value is None or (math.isfinite(value) and value > 0)
            require(ok, f"clock.{key}", f"must be > 0 or null, got {value}")
        if self.policy == "deadline":
            require(self.deadline_hours is not None, "clock.deadline_hours",
                    "clock.policy=deadline needs a deadline, e.g. clock.deadline_hours=48")
        if self.policy == "threshold":
            require(self.threshold_g_per_kwh is not None, "clock.threshold_g_per_kwh",
                    "clock.policy=threshold needs a threshold in gCO2e/kWh, e.g. 200")
        dated_only = {
            "clock.policy": self.policy != "immediate",
            "clock.availability": self.availability is not None,
        }
        for key, used in dated_only.items():
            if used and self.start is None:
                raise ConfigError(key, "needs a dated clock: set clock.start, e.g. "
                                  "clock.start=2020-06-15T10:30:00Z")

    @property
    def start_epoch(self) -> float | None:
        """``start`` as POSIX seconds (None for an undated clock)."""
        return None if self.start is None else parse_utc(self.start)

    @property
    def round_s(self) -> float:
        """A round's duration in seconds without simulated devices."""
        return self.round_hours * 3600.0
