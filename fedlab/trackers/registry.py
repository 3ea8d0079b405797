"""The configured trackers of a run: found from ``trackers.<name>._target_``, built, and driven.

:class:`Trackers` is what the server app, the checkpoint and the record talk to: it loops over
the trackers, so none of them names one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from logging import getLogger
from typing import TYPE_CHECKING, Any

from fedlab.config.schema import ConfigError
from fedlab.trackers.base import RoundContext, RunContext, Tracker, order

if TYPE_CHECKING:
    from fedlab.background import Background
    from fedlab.config.experiment import Experiment

log = getLogger("fedlab")


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


def _close_apart(trackers: list[Tracker], states: dict[str, Any]) -> dict[str, Any]:
    """In :meth:`Trackers.fork_closer`'s child: close its copies of ``trackers`` as the
    driver's would, given their closing states."""
    final = {}
    for tracker in trackers:
        tracker.restore_closing_state(states[tracker.name])
        final[tracker.name] = tracker.close()
    return final


class Trackers:
    """The active trackers of one run, in dependency order."""

    def __init__(self, specs: list[TrackerSpec], active: list[Tracker], exp: Experiment):
        self.specs = specs
        self.active = order(active)
        self._exp = exp
        self._closer: Background | None = None

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

    def fork_closer(self, ahead: bool = True) -> None:
        """Fork the child that will close the trackers that close apart (``closes_apart``):
        forked ``ahead``, as the rounds start where they leave a core idle, it imports what
        their close needs meanwhile, at low priority (it must not take the rounds' core);
        :meth:`close` forks it itself otherwise, at the driver's priority (the driver then
        waits for it), and runs theirs there while the driver closes the rest and draws the
        pictures. Not where this platform does not fork, nor once Ray runs in this process
        (a fork of its threads and sockets is not safe)."""
        from fedlab.background import Background, can_fork

        apart = [t for t in self.active if t.closes_apart]
        if not apart or not can_fork() or "ray" in sys.modules:
            return
        imports = [m for t in apart for m in type(t).imports(self._exp)]
        self._closer = Background(
            partial(_close_apart, apart), "closer", imports, awaits=True, idle=ahead
        )

    def close(self, meanwhile: Callable[[], None] | None = None) -> dict[str, Any]:
        """End every tracker; their final sections (an inactive one's as when inactive).

        The trackers that close apart are closed by :meth:`fork_closer`'s child, sent their
        :meth:`~fedlab.trackers.base.Tracker.closing_state` first, while this process closes
        the others and then runs ``meanwhile()`` (the run's pictures); a tracker whose child
        is gone (killed, out of memory) is closed here, with a warning, so the record still
        gets its section.
        """
        final = {s.name: s.cls.inactive_summary(self._exp) for s in self.specs}
        if self._closer is None:  # not forked ahead: now, to work while the rest closes
            self.fork_closer(ahead=False)
        closer, self._closer = self._closer, None
        apart = [t for t in self.active if t.closes_apart] if closer is not None else []
        if closer is not None:
            closer.start({t.name: t.closing_state() for t in apart})
        try:
            for tracker in self.active:
                if tracker not in apart:
                    final[tracker.name] = tracker.close()
            if meanwhile is not None:
                meanwhile()
        finally:
            if closer is not None:
                try:
                    final.update(closer.result())
                except Exception as err:
                    log.warning("fedlab: warning: closing in a child failed (%s); here", err)
                    final.update({t.name: t.close() for t in apart})
        return final

    def published(self, status: str) -> None:
        """The record and its reports are final: tell every tracker."""
        for tracker in self.active:
            tracker.published(status)
