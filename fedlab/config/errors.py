"""The one error every invalid configuration value becomes, and the checks that raise it.

``ConfigError(key, message)`` ends ``fedlab-run`` with ``fedlab-run: error: KEY: message`` and
exit code 2, before anything is written.
"""

from __future__ import annotations

import math


class ConfigError(ValueError):
    """An invalid configuration value; its message is the single line shown to the user."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, message)


def require_fraction(value: float, key: str, *, allow_zero: bool = False) -> None:
    """Check a fraction in (0, 1] (or [0, 1] when ``allow_zero``)."""
    low_ok = value >= 0 if allow_zero else value > 0
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    require(
        low_ok and value <= 1 and math.isfinite(value),
        key,
        f"must be in {interval}, got {value}",
    )


def require_choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    """Check that ``value`` is one of ``choices``."""
    require(value in choices, key, f"must be one of {', '.join(choices)}; got '{value}'")
