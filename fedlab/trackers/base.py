"""The tracker interface: one seam for everything a run measures or keeps.

Privacy accounting, carbon accounting and simulated devices are trackers, and so is anything a
researcher adds later (``trackers.<name>._target_`` in the config names a :class:`Tracker`
subclass; no edit under ``fedlab/``). The server app, the checkpoint, the record's schema, the
console line, the model card and ``fedlab-compare`` loop over the configured trackers and never
name one. A tracker says what it can do by what it declares:

* ``round_columns`` / ``client_columns``: the columns it adds to ``rounds.csv`` /
  ``clients.csv`` (in the schema whether or not the tracker is active in a run, so every record
  of one configuration has the same header);
* ``reply_metrics``: client reply metric keys it wants copied into ``clients.csv`` columns;
* ``after``: the trackers whose round results it reads (carbon reads the device clock), so
  they run first;
* ``objectives``: the numbers it offers ``fedlab-compare`` (:class:`Objective`);
* hooks with defaults that do nothing: :meth:`prepare`, :meth:`initial_columns`,
  :meth:`start_round`, :meth:`end_round`,
  :meth:`wrap_strategy`, :meth:`train_config`, :meth:`console`, :meth:`final_fragment`,
  :meth:`final_note`, :meth:`close`, :meth:`published`;
* :meth:`summary` (its ``results.json`` section) and :meth:`state_dict` /
  :meth:`load_state_dict` (its part of the checkpoint, as Opacus's accountants do);
* :meth:`card_section`, the model card's section, :meth:`run_panels` and :meth:`run_figures`,
  its pictures, all written from the record alone.

Why fedlab writes this interface itself: Flower's strategies and mods see messages, not a
run (no round-end hook with the whole round's client rows, no checkpoint or record); CodeCarbon
and Opacus each measure one thing. The interface is the small piece that joins them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from fedlab.config.experiment import Experiment
    from fedlab.data.partition import FederatedData
    from fedlab.fl.grid import RoundTally
    from fedlab.fl.schedule import Scheduler
    from fedlab.record.reader import Run
    from fedlab.reports.comparison import Comparison


class StopRun(Exception):
    """Raised by a tracker's hook to end the run early with a status of its own.

    A privacy budget about to be exceeded ends the run as ``budget_exhausted``, a diverging loss
    as ``diverged``: the record keeps every round completed so far, the checkpoint of the last
    one, and says why in ``stopped`` (status, reason, round). Raise it from
    :meth:`Tracker.end_round` (after a round, which is then recorded) or
    :meth:`Tracker.start_round` (before the next round trains).
    """

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Objective:
    """A number a tracker offers ``fedlab-compare``: where it lives in ``results.json``.

    ``paths`` are summed (bytes down + up); ``front`` makes it a cost that accuracy is traded
    against (a Pareto front and its plot, ``pareto_<front>.png``).
    """

    name: str  # column in comparison.csv
    paths: tuple[tuple[str, ...], ...]
    direction: Literal["min", "max"] = "min"
    unit: str = ""
    header: str = ""  # column in the printed table ("" keeps it out of the table)
    front: str = ""  # the front's name, "" for none
    axis: str = ""  # the front's axis label
    fmt: str = ".3g"  # format spec, or "bytes"
    optional: bool = False  # in the printed table only when some run records it
    measured: bool = False  # a noisy measurement (host energy), not a deterministic model


@dataclass
class RunContext:
    """What a tracker is built from: the validated experiment, its data, the run directory."""

    exp: Experiment
    fed: FederatedData
    run_dir: Path


@dataclass
class RoundContext:
    """A round as trackers see it when it ends.

    ``tally.rows`` are the round's ``clients.csv`` rows (trackers add their client columns to
    them in place); ``row`` is the round's ``rounds.csv`` row so far (trackers that run earlier
    have added theirs); ``clock`` is the seeded schedule, whose ``round_start_s`` and
    ``phases_s`` give the round's place on the simulated clock; ``arrays`` is the new global
    model (``tally.updates`` holds the clients' updates it was aggregated from).
    """

    server_round: int
    tally: RoundTally
    clock: Scheduler
    row: dict[str, Any]
    arrays: ArrayRecord | None = None


class Tracker:
    """Base class of everything a run measures; subclasses override what they need."""

    #: Section name in ``results.json`` and key in the checkpoint (the config's key).
    name: ClassVar[str] = ""
    round_columns: ClassVar[tuple[str, ...]] = ()
    client_columns: ClassVar[tuple[str, ...]] = ()
    #: Client reply metric key -> ``clients.csv`` column (copied by the Grid).
    reply_metrics: ClassVar[Mapping[str, str]] = {}
    after: ClassVar[tuple[str, ...]] = ()
    objectives: ClassVar[tuple[Objective, ...]] = ()
    #: Module holding the report-side functions ``card_section(run)``, ``run_panels(run)`` and
    #: ``comparison_figures(comparison)`` (any of them), imported only when a report is made:
    #: so a run never imports plotting code, and a tracker need not repeat the delegation.
    report_module: ClassVar[str] = ""
    #: Whether :meth:`close` may run in a child, on that child's copy of this tracker (forked
    #: as the rounds start where they leave a core idle, else at the close), given this one's
    #: :meth:`closing_state` at the end: for a close that costs seconds of imports and compute
    #: (the audit of the final model) and reads nothing else that changed during the run. A
    #: child forked ahead imports :meth:`imports` while the rounds run
    #: (:meth:`fedlab.trackers.registry.Trackers.fork_closer`).
    closes_apart: ClassVar[bool] = False

    @classmethod
    def columns(cls, kind: Literal["round", "client"], exp: Experiment) -> tuple[str, ...]:
        """The columns this tracker adds to ``rounds.csv`` or ``clients.csv`` in ``exp``: its
        ``round_columns`` / ``client_columns``, plus any that depend on the config (one per
        region, say). Every record of one configuration has the same header."""
        return tuple(getattr(cls, f"{kind}_columns"))

    @classmethod
    def check(cls, exp: Experiment) -> None:
        """Validate the experiment's settings for this tracker before anything is written
        (raise :class:`fedlab.config.schema.ConfigError` naming the key)."""

    @classmethod
    def prepare(cls, exp: Experiment, fed: FederatedData) -> list[str]:
        """Settle data-dependent settings once the data are partitioned, before the record is
        written (the noise for a target epsilon, say); returns warnings to show the user."""
        return []

    @classmethod
    def imports(cls, exp: Experiment) -> tuple[str, ...]:
        """Modules this tracker will import during the run (at its close, say), in order:
        ``fedlab-run`` imports them while a child prepares the data and it would otherwise
        wait, one after another until the data arrive (so list a large one in steps)."""
        return ()

    @classmethod
    def build(cls, run: RunContext, **options: Any) -> Tracker | None:
        """The tracker for this run, or None when the experiment does not use it.

        ``options`` are the keys of ``trackers.<name>`` besides ``_target_``.
        """
        return cls(**options)

    @classmethod
    def inactive_summary(cls, exp: Experiment) -> Any:
        """The ``results.json`` section of a run that does not use this tracker."""
        return None

    # -- during the run -------------------------------------------------------------------

    def wrap_strategy(self, strategy: Any) -> Any:
        """The strategy the server runs (a DP wrapper around it, say); default unchanged."""
        return strategy

    def train_config(self) -> dict[str, Any]:
        """Entries added to every client's training instructions."""
        return {}

    def initial_columns(self) -> dict[str, Any]:
        """Columns of round 0's row (the initial model, before any client trained)."""
        return {}

    def start_round(self, server_round: int) -> None:
        """``server_round`` begins (called after the previous round was recorded)."""

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        """The round ended: add client columns to ``ctx.tally.rows``; return round columns."""
        return {}

    def console(self, row: Mapping[str, Any]) -> str | None:
        """A fragment of the round's progress line (``row`` is its ``rounds.csv`` row)."""
        return None

    def final_fragment(self, section: Any) -> str | None:
        """A fragment of the run's closing console line, from its final section."""
        return None

    def final_note(self, section: Any) -> str | None:
        """A console line of its own after the closing line (the privacy guarantee, say)."""
        return None

    def summary(self) -> Any:
        """The tracker's ``results.json`` section so far."""
        return None

    def close(self) -> Any:
        """The run ended (whatever its status): release resources; return the final
        ``results.json`` section (default: :meth:`summary`). Called once."""
        return self.summary()

    def closing_state(self) -> Any:
        """What a copy of this tracker made before the rounds needs to :meth:`close` as this
        one would (``closes_apart``; sent through a pipe, so picklable): default, its
        :meth:`state_dict`."""
        return self.state_dict()

    def restore_closing_state(self, state: Any) -> None:
        """Take :meth:`closing_state` from the tracker that ran the rounds."""
        self.load_state_dict(state)

    def published(self, status: str) -> None:
        """The record is final (``results.json`` says ``status``) and its reports are written
        (model card, curves): for a tracker that ships the record elsewhere (an experiment
        tracker). Called once, after :meth:`close`, whatever the status."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for the checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict` of a checkpoint."""

    # -- reports (from the record alone) ---------------------------------------------------

    @classmethod
    def _report(cls, function: str, default: Any, *args: Any) -> Any:
        """Call ``function`` of :attr:`report_module`, or return ``default`` without one."""
        if not cls.report_module:
            return default
        found = getattr(import_module(cls.report_module), function, None)
        return default if found is None else found(*args)

    @classmethod
    def card_section(cls, run: Run) -> str | None:
        """The model card's section for this tracker (markdown), or None for none."""
        return cls._report("card_section", None, run)

    @classmethod
    def run_panels(cls, run: Run) -> list[Panel]:
        """Extra panels of the run's ``curves.png`` (accuracy on the device clock, say)."""
        return cls._report("run_panels", [], run)

    @classmethod
    def run_figures(cls, run: Run) -> dict[str, Any]:
        """Pictures of their own for the run directory: file stem -> matplotlib Figure (a
        dated run's carbon timeline, say); drawn from the record when the run ends."""
        return cls._report("run_figures", {}, run)

    @classmethod
    def comparison_figures(cls, comparison: Comparison) -> dict[str, Any]:
        """``fedlab-compare`` figures of this tracker: file stem -> matplotlib Figure, or a
        string saying why it was not drawn."""
        return cls._report("comparison_figures", {}, comparison)


class LedgerTracker(Tracker):
    """A tracker whose numbers live in a ledger object with ``summary()``, ``state_dict()``
    and ``load_state_dict()`` (as the built-in ones do): the record and the checkpoint get the
    ledger's."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger

    def summary(self) -> Any:
        return self.ledger.summary()

    def state_dict(self) -> dict[str, Any]:
        return self.ledger.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ledger.load_state_dict(state)


@dataclass(frozen=True)
class Panel:
    """One panel of a run's curves: named series of (x, y) points."""

    title: str
    xlabel: str
    ylabel: str
    series: tuple[tuple[str, tuple[float, ...], tuple[float, ...]], ...]


def order(trackers: Sequence[Any]) -> list[Any]:
    """``trackers`` in an order where each runs after the trackers it declares in ``after``
    (a stable topological sort: otherwise config order). A name not configured is ignored:
    carbon runs without devices too."""
    by_name = {t.name: t for t in trackers}
    done: dict[str, Tracker] = {}
    visiting: set[str] = set()

    def visit(tracker: Tracker) -> None:
        if tracker.name in done:
            return
        if tracker.name in visiting:
            raise ValueError(f"trackers: '{tracker.name}' depends on itself through 'after'")
        visiting.add(tracker.name)
        for dep in tracker.after:
            if dep in by_name:
                visit(by_name[dep])
        visiting.discard(tracker.name)
        done[tracker.name] = tracker

    for tracker in trackers:
        visit(tracker)
    return list(done.values())
