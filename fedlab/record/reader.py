"""The run record as reports read it: the one reader behind ``fedlab-compare``, its plots,
``curves.png`` and the model card.

Reports are made from run directories only (README, "The run record"), so they can be redone
long after a run, on any machine, and never disagree with it. Reading in one place keeps
that promise checkable: one parser for ``results.json``, ``config.yaml``, ``rounds.csv`` and
``clients.csv``, one notion of a missing value (:func:`number`), and one way back from a
record to the trackers that wrote it (:attr:`Run.trackers`), which is how reports show
every tracker's numbers without naming any.

This module is below :mod:`fedlab.reports` (reports import it, never the reverse), and the
trackers' own report code may import it too.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fedlab.record.run_dir import RESULTS, SCHEMA, read_csv

if TYPE_CHECKING:
    from fedlab.trackers.base import Tracker

#: Short names for ``--by``/``--filter``: the experiment summary in ``results.json``.
EXPERIMENT_PREFIX = "experiment."

#: The trackers of a record written before ``results.json`` named them (no ``trackers``
#: key): fedlab's built-ins, in the order of the default config, so that an old record reads
#: exactly as it did when it was made.
BUILTIN_TRACKERS: Mapping[str, str] = {
    "privacy": "fedlab.trackers.privacy.tracker.PrivacyTracker",
    "carbon": "fedlab.trackers.carbon.tracker.CarbonTracker",
    "devices": "fedlab.trackers.devices.tracker.DevicesTracker",
}


class ReadError(ValueError):
    """A path holds no usable run record; the message names the file and the reason."""


# --------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------


def number(value: Any) -> float | None:
    """A record value or CSV cell as a float; None for empty, null, non-numeric or NaN.

    CSV cells are strings and an absent measurement is an empty cell or a JSON null: every
    report must treat all of these as "not recorded", never as zero.
    """
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


def shown(value: Any, spec: str = ".4f") -> str:
    """A record value as a report prints it: formatted with ``spec``, or ``n/a`` when the
    record has none (a report must not invent a zero)."""
    v = number(value)
    return "n/a" if v is None else format(v, spec)


def cell(value: Any) -> str:
    """A config value as text: lists and dicts in compact JSON, None empty."""
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``{"client": {"lr": 0.1}}`` -> ``{"client.lr": 0.1}``).

    Lists and empty dicts stay values: a list of hidden sizes is one setting, not several.
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def natural_key(path: Path) -> list[Any]:
    """Sort key putting Hydra job ``10`` after ``9``, not after ``1``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


# --------------------------------------------------------------------------------------
# Trackers named by a record
# --------------------------------------------------------------------------------------


@cache
def tracker_class(path: str) -> type[Tracker] | None:
    """The :class:`~fedlab.trackers.base.Tracker` subclass at dotted ``path``, or None.

    A record outlives the code that wrote it (a user's tracker module not installed here, a
    class renamed since): its reports then go without that tracker's sections, with one
    warning, rather than not at all. Cached: a sweep names the same classes in every run.
    """
    from fedlab.trackers.base import Tracker

    parts = str(path).split(".")
    cls: Any = None
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
        try:
            cls = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        except Exception:  # the module is there but fails to import: the same for a report
            break
        try:
            for name in parts[split:]:
                cls = getattr(cls, name)
        except AttributeError:
            cls = None
        break
    if cls is None:
        warnings.warn(f"tracker {path} cannot be imported: its reports are left out", stacklevel=2)
        return None
    if not (isinstance(cls, type) and issubclass(cls, Tracker)):
        warnings.warn(f"{path} is not a fedlab Tracker: left out of the reports", stacklevel=2)
        return None
    return cls


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run directory as its record describes it.

    ``results`` and ``config`` are read at once (every report needs them); ``clients.csv``,
    which can be large, only when :attr:`clients` is first used.
    """

    path: Path
    results: dict[str, Any]
    config: dict[str, Any]  # flattened config.yaml
    rounds: list[dict[str, str]]
    label: str = ""

    @property
    def status(self) -> str:
        """The record's status (``completed``, ``failed``, ``interrupted``, ``running``)."""
        return str(self.results.get("status") or "unknown")

    @property
    def completed(self) -> bool:
        """Whether the run finished all its rounds: only those enter fronts and means."""
        return self.status == "completed"

    @cached_property
    def clients(self) -> list[dict[str, str]]:
        """The rows of ``clients.csv`` (none when the record has no such file)."""
        path = self.path / "clients.csv"
        return read_csv(path) if path.is_file() else []

    def section(self, name: str) -> dict[str, Any]:
        """A section of ``results.json`` (a tracker's, ``communication``, ...); empty when the
        record has none or it is null (a tracker that was off)."""
        value = self.results.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def tracker_paths(self) -> dict[str, str]:
        """Tracker name -> class path, as ``results.json`` names them in config order; the
        built-ins for a record made before it did."""
        named = self.results.get("trackers")
        if not isinstance(named, Mapping):
            return dict(BUILTIN_TRACKERS)
        return {str(k): str(v) for k, v in named.items() if v}

    @cached_property
    def trackers(self) -> list[type[Tracker]]:
        """The tracker classes that wrote this record, in its order; a class that cannot be
        imported here is left out (see :func:`tracker_class`)."""
        classes = (tracker_class(path) for path in self.tracker_paths.values())
        return [cls for cls in classes if cls is not None]

    def value(self, key: str) -> Any:
        """The value of a ``--by``/``--filter`` key: ``experiment.<name>`` from the experiment
        summary, else a dotted ``config.yaml`` key, else a dotted ``results.json`` key; None
        if absent."""
        if key.startswith(EXPERIMENT_PREFIX):
            return (self.results.get("experiment") or {}).get(key[len(EXPERIMENT_PREFIX) :])
        if key in self.config:
            return self.config[key]
        return flatten(self.results).get(key)

    def round_values(self, column: str) -> tuple[list[int], list[float]]:
        """Rounds that have ``column`` in ``rounds.csv``, and the values there."""
        pairs = [(number(r.get("round")), number(r.get(column))) for r in self.rounds]
        kept = [(int(r), v) for r, v in pairs if r is not None and v is not None]
        return [r for r, _ in kept], [v for _, v in kept]


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Run directories at or under ``paths`` (those holding ``results.json``), each once.

    A path that is not a run directory is searched recursively (a Hydra multirun directory,
    or any folder of runs). Raises :class:`ReadError` for a path that holds no run.
    """
    found: dict[Path, None] = {}
    for path in paths:
        if not path.is_dir():
            raise ReadError(f"{path}: no such directory")
        if (path / RESULTS).is_file():
            candidates = [path]
        else:
            candidates = sorted((p.parent for p in path.rglob(RESULTS)), key=natural_key)
        if not candidates:
            raise ReadError(f"{path}: no run found (no {RESULTS} in it or below it)")
        found.update((c.resolve(), None) for c in candidates)
    return list(found)


def load_run(run_dir: Path) -> Run:
    """Read one run's record; raises :class:`ReadError` if ``results.json`` is unusable."""
    try:
        results = json.loads((run_dir / RESULTS).read_text())
    except (OSError, ValueError) as err:
        raise ReadError(f"{run_dir / RESULTS}: unreadable ({err})") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise ReadError(f"{run_dir / RESULTS}: not a {SCHEMA} run record")
    config_path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    except yaml.YAMLError as err:
        raise ReadError(f"{config_path}: unreadable ({err})".splitlines()[0]) from None
    rounds_path = run_dir / "rounds.csv"
    rounds = read_csv(rounds_path) if rounds_path.is_file() else []
    return Run(run_dir, results, flatten(config or {}), rounds)


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Every run under ``paths``, labelled by its path relative to their common folder."""
    runs = [load_run(d) for d in find_run_dirs(paths)]
    if len(runs) == 1:
        runs[0].label = runs[0].path.name
        return runs
    common = Path(os.path.commonpath([r.path for r in runs]))
    for run in runs:
        run.label = str(run.path.relative_to(common))
    return runs


def distinguishing_overrides(runs: Sequence[Run], *, seed: bool = True) -> list[str]:
    """Per run, the overrides it was started with that not every one of ``runs`` shares
    (Hydra's own left out, and the seed unless ``seed``): what tells a run of a sweep apart
    in a user's words (``strategy=fedprox seed=1``) where its label is a job number."""
    skip = ("hydra.",) if seed else ("hydra.", "seed=")
    typed = [[o for o in r.results.get("overrides") or [] if not o.startswith(skip)] for r in runs]
    shared = set.intersection(*(set(t) for t in typed)) if typed else set()
    return [" ".join(o for o in t if o not in shared) for t in typed]
