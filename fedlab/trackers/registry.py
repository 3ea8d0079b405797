"""The configured trackers of a run: found from ``trackers.<name>._target_``, built, and driven.

:class:`Trackers` is what the server app, the checkpoint and the record talk to: it loops over
the trackers, so none of them names one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedlab.config.schema import ConfigError
from fedlab.trackers.base import RoundContext, RunContext, Tracker, order

if TYPE_CHECKING:
    from fedlab.config.experiment import Experiment


@dataclass(frozen=True)
class TrackerSpec:
    """One ``trackers.<name>`` entry: its class and its options."""

    name: str
    cls: type[Tracker]
    options: dict[str, Any]


def tracker_class(target: Any, key: str) -> type[Tracker]:
    """The :class:`Tracker` subclass a dotted path names, or :class:`ConfigError` for ``key``."""
    from hydra.utils import get_class

    if not target:
        raise ConfigError(key, "missing: name a fedlab.trackers.base.Tracker subclass")
    try:
        cls = get_class(str(target))
    except Exception:
        raise ConfigError(key, f"cannot import '{target}'") from None
    if not (isinstance(cls, type) and issubclass(cls, Tracker)):
        raise ConfigError(key, f"'{target}' is not a fedlab Tracker")
    return cls


def tracker_specs(trackers: Mapping[str, Any]) -> list[TrackerSpec]:
    """The ``trackers`` config section as specs, in config order (the columns' order)."""
    specs = []
    for name, node in trackers.items():
        if node is None:  # `~trackers.carbon` or `trackers.carbon=null` removes one
            continue
        node = dict(node)
        cls = tracker_class(node.pop("_target_", None), f"trackers.{name}._target_")
        if cls.name != name:
            raise ConfigError(
                f"trackers.{name}", f"{cls.__name__} records itself as '{cls.name}': use that key"
            )
        specs.append(TrackerSpec(name, cls, node))
    try:
        order([spec.cls for spec in specs])  # type: ignore[arg-type]
    except ValueError as err:
        raise ConfigError("trackers", str(err)) from None
    return specs


def described(specs: list[TrackerSpec]) -> dict[str, str]:
    """Name -> class path, for ``results.json``: how reports find each tracker again."""
    return {s.name: f"{s.cls.__module__}.{s.cls.__qualname__}" for s in specs}


def columns(
    base: tuple[str, ...], specs: list[TrackerSpec], kind: str, exp: Experiment
) -> list[str]:
    """``base`` then every tracker's ``round`` or ``client`` columns for ``exp``, each once."""
    out = dict.fromkeys(base)
    for spec in specs:
        out.update(dict.fromkeys(spec.cls.columns(kind, exp)))
    return list(out)


class Trackers:
    """The active trackers of one run, in dependency order."""

    def __init__(self, specs: list[TrackerSpec], active: list[Tracker], exp: Experiment):
        self.specs = specs
        self.active = order(active)
        self._exp = exp

    @classmethod
    def build(cls, run: RunContext) -> Trackers:
        """Build every configured tracker that this experiment uses."""
        specs = tracker_specs(run.exp.cfg.trackers)
        active = [t for s in specs if (t := s.cls.build(run, **s.options)) is not None]
        return cls(specs, active, run.exp)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.active)

    @property
    def reply_metrics(self) -> dict[str, str]:
        """Client reply metric key -> ``clients.csv`` column, over every active tracker."""
        return {k: v for t in self.active for k, v in t.reply_metrics.items()}

    def sections(self) -> dict[str, Any]:
        """Every configured tracker's ``results.json`` section (so far)."""
        live = {t.name: t.summary() for t in self.active}
        return {s.name: live.get(s.name, s.cls.inactive_summary(self._exp)) for s in self.specs}

    def wrap_strategy(self, strategy: Any) -> Any:
        for tracker in self.active:
            strategy = tracker.wrap_strategy(strategy)
        return strategy

    def train_config(self) -> dict[str, Any]:
        return {k: v for t in self.active for k, v in t.train_config().items()}

    def start_round(self, server_round: int) -> None:
        for tracker in self.active:
            tracker.start_round(server_round)

    def end_round(self, ctx: RoundContext) -> None:
        """Let every tracker close the round; their columns land in ``ctx.row``."""
        for tracker in self.active:
            ctx.row.update(tracker.end_round(ctx))

    def console(self, row: Mapping[str, Any]) -> list[str]:
        return [text for t in self.active if (text := t.console(row))]

    def state_dict(self) -> dict[str, Any]:
        return {t.name: t.state_dict() for t in self.active}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for tracker in self.active:
            if tracker.name in state:  # a tracker added since the checkpoint starts afresh
                tracker.load_state_dict(state[tracker.name])

    def close(self) -> dict[str, Any]:
        """End every tracker; their final sections (an inactive one's as when inactive)."""
        final = {s.name: s.cls.inactive_summary(self._exp) for s in self.specs}
        for tracker in self.active:
            final[tracker.name] = tracker.close()
        return final

    def published(self, status: str) -> None:
        """The record and its reports are final: tell every tracker."""
        for tracker in self.active:
            tracker.published(status)
