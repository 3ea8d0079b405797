"""Lineage: content hashes of everything a run's model came from, and ``fedlab-lineage``.

A run writes ``lineage.json`` when its record closes (and again when a resumed run closes):
one entry per stage of the chain dataset -> partition -> config -> code -> checkpoint ->
model -> metrics -> results, each with a sha256 and a chain link (the sha256 of the previous
link and this stage's hash), and a ``digest`` over the whole document. ``results.json``
points to it (``lineage``: the digest and the dataset, partition and model hashes) and the
model card quotes the digest.

What is hashed as a *file* and what as a *value*, and why:

* files in the run directory (re-hashed by ``fedlab-lineage RUN_DIR``, in milliseconds):
  ``partition.json`` (each client's train and test indices into the dataset's training
  pool, written once when the run starts), ``config.yaml``, ``checkpoint.safetensors`` (the
  last round's: every round overwrites it, so earlier ones cannot be checked later),
  ``model.safetensors``, ``rounds.csv`` and ``clients.csv``;
* values: the dataset's arrays (train pool x/y/users and the central test x/y, sha256 over a
  canonical layout: dtype, shape, C-order bytes) are not copied into the run directory, so
  they are checked only by re-deriving them from ``config.yaml`` (``--data``, which also
  re-derives the partition); the code (git commit and the sha256 of ``git diff HEAD`` of
  the checkout, which cannot be re-derived at all: it is evidence, not a check); and the
  values of ``results.json`` a release decision reads (final metrics, every tracker's
  section), hashed one by one so an edited number is named. ``results.json`` itself is not
  hashed as a file: reports add to it later (``gate``), as they rewrite the model card.

The digest detects a hand-edited ``lineage.json`` and ``results.json``'s copy of it detects
one edited consistently; someone who rewrites both can forge a chain. That needs a signature
(or the digest kept outside the run directory: an MLflow run, a release note), not a hash.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedlab.config.errors import ConfigError
from fedlab.record.run_dir import RESULTS, now, write_json, write_text

if TYPE_CHECKING:
    from fedlab.data.partition import FederatedData

SCHEMA = "fedlab.lineage/1"
FILE = "lineage.json"
PARTITION = "partition.json"
PARTITION_SCHEMA = "fedlab.partition/1"
#: The run-directory files hashed, by stage (an absent file is recorded as null).
STAGE_FILES: Mapping[str, tuple[str, ...]] = {
    "partition": (PARTITION,),
    "config": ("config.yaml",),
    "checkpoint": ("checkpoint.safetensors",),
    "model": ("model.safetensors",),
    "metrics": ("rounds.csv", "clients.csv"),
}
#: ``results.json`` keys hashed besides the trackers' sections.
RESULT_KEYS = (
    "status", "rounds_completed", "num_rounds", "seed", "accuracy", "loss",
    "federated_accuracy", "federated_loss", "experiment", "communication", "versions",
)
#: Where a dataset's examples come from, when not from fedlab's own code: the sklearn
#: loaders read files shipped inside scikit-learn, the Hugging Face one the ``datasets`` cache.
SOURCE_PACKAGES: Mapping[str, str] = {
    "fedlab.data.datasets.sklearn": "scikit-learn",
    "fedlab.data.datasets.huggingface": "datasets",
}
#: How the model card quotes the digest; ``fedlab-lineage`` reads it back with this pattern.
CARD_DIGEST = "Lineage digest (sha256): `{}`"
_CARD_PATTERN = re.compile(r"Lineage digest \(sha256\): `([0-9a-f]{64})`")


class LineageError(ValueError):
    """Not something to verify (no run record, no lineage at all): bad input, exit 2."""


# --------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as ``write_json`` stores it (NaN and infinities null, tuples lists), so a
    hash made before writing equals one made from the file read back."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


def canonical(value: Any) -> bytes:
    """The canonical JSON bytes of ``value``: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        _plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def value_sha256(value: Any) -> str:
    """sha256 of a JSON value in its canonical form (independent of how it was indented)."""
    return hashlib.sha256(canonical(value)).hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's dtype (with byte order), shape and C-order bytes: equal arrays
    hash equally whatever their memory layout, and a reshaped or recast one does not."""
    contiguous = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{contiguous.dtype.str}|{list(array.shape)}|".encode())
    digest.update(contiguous.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def file_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes (hashlib reads it in chunks), or None when it is absent."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _link(previous: str, stage: str, sha: str | None) -> str:
    return hashlib.sha256(f"{previous}|{stage}|{sha}".encode()).hexdigest()


# --------------------------------------------------------------------------------------
# The dataset and the partition
# --------------------------------------------------------------------------------------


def dataset_arrays(fed: FederatedData) -> dict[str, dict[str, Any]]:
    """The hash, dtype and shape of every array of the dataset behind ``fed``."""
    recipe = getattr(fed, "recipe", None)  # a generated federation names what makes its pool
    if callable(recipe):
        arrays = {**recipe(), "test.x": fed.test.x, "test.y": fed.test.y}
    else:
        arrays = {
            "pool.x": fed.pool.x, "pool.y": fed.pool.y, "test.x": fed.test.x, "test.y": fed.test.y
        }
        if fed.pool.users is not None:
            arrays["pool.users"] = fed.pool.users
    return {
        name: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": array_sha256(a)}
        for name, a in arrays.items()
    }


def dataset_sha256(arrays: Mapping[str, Mapping[str, Any]]) -> str:
    """The dataset's identity: its arrays' hashes (two runs with equal ones saw equal data)."""
    return value_sha256({name: entry["sha256"] for name, entry in arrays.items()})


def partition_sha256(train: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> str:
    """The partition's identity: every client's train and test indices, as int64 arrays."""
    as_int = [np.asarray(i, dtype=np.int64) for i in (*train, *test)]
    return value_sha256([array_sha256(a) for a in as_int])


def write_partition(run_dir: Path, fed: FederatedData, partitioner: Mapping[str, Any]) -> Path:
    """Write ``partition.json``: each client's indices into the training pool, one client a
    line (readable and diffable; JSON rather than ``.npz`` because zip entries carry
    timestamps, so equal partitions would not give equal files)."""
    arrays = dataset_arrays(fed)
    head = {
        "schema": PARTITION_SCHEMA,
        "dataset": fed.name,
        "dataset_sha256": dataset_sha256(arrays),
        "partitioner": _plain(dict(partitioner)),
        "pool_size": fed.pool_size,
        "num_clients": fed.num_clients,
        "sha256": partition_sha256(fed.client_train, fed.client_test),
    }
    clients = [
        json.dumps({"client": pid, "train": train.tolist(), "test": test.tolist()})
        for pid, (train, test) in enumerate(zip(fed.client_train, fed.client_test, strict=True))
    ]
    text = json.dumps(head, indent=2)[:-2] + ',\n  "clients": [\n    '
    path = run_dir / PARTITION
    write_text(path, text + ",\n    ".join(clients) + "\n  ]\n}\n")
    return path


def read_partition(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The (train, test) indices of every client in a ``partition.json``; ValueError if it is
    not one."""
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("schema") != PARTITION_SCHEMA:
        raise ValueError(f"not a {PARTITION_SCHEMA} file")
    clients = doc.get("clients")
    if not isinstance(clients, list):
        raise ValueError("no 'clients' list")
    return (
        [np.asarray(c["train"], dtype=np.int64) for c in clients],
        [np.asarray(c["test"], dtype=np.int64) for c in clients],
    )


def check_resumable(run_dir: Path, fed: FederatedData) -> None:
    """Refuse to resume a run on data other than its own: the data prepared again from
    ``config.yaml`` must give the partition (and dataset) the run recorded. A library update
    that changed a dataset would otherwise splice two experiments into one record."""
    problems = []
    path = run_dir / PARTITION
    if path.is_file():
        try:
            recorded = partition_sha256(*read_partition(path))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError("resume", f"{path}: unreadable ({err})") from None
        if recorded != partition_sha256(fed.client_train, fed.client_test):
            problems.append(f"the clients' indices differ from {PARTITION}")
    stage = stage_map(read_lineage(run_dir) or {}).get("dataset")
    if stage and stage.get("sha256") != dataset_sha256(dataset_arrays(fed)):
        problems.append(f"the dataset's arrays differ from those {FILE} records")
    if problems:
        raise ConfigError(
            "resume",
            f"{run_dir}: the data prepared again from config.yaml are not the run's own "
            f"({'; '.join(problems)}); start a new run",
        )


# --------------------------------------------------------------------------------------
# Writing the lineage
# --------------------------------------------------------------------------------------


def _dataset_stage(fed: FederatedData, dataset_cfg: Mapping[str, Any]) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    source = str(dataset_cfg.get("_target_", ""))
    packages = ["fedlab", *([p] if (p := SOURCE_PACKAGES.get(source.rpartition(".")[0])) else [])]
    versions = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    arrays = dataset_arrays(fed)
    settings = {k: v for k, v in dataset_cfg.items() if k != "_target_"}
    return {
        "stage": "dataset", "sha256": dataset_sha256(arrays), "name": fed.name,
        "source": source, "version": versions, "settings": _plain(settings), "arrays": arrays,
    }


def _code_stage(versions: Mapping[str, Any], resumed_with: list[dict[str, Any]]) -> dict[str, Any]:
    code = {k: versions.get(k) for k in ("fedlab", "git_commit", "git_dirty", "git_diff_sha256")}
    return {"stage": "code", "sha256": value_sha256([code, resumed_with]), **code,
            "resumed_with": resumed_with}


def write_lineage(
    run_dir: Path,
    fed: FederatedData,
    dataset_cfg: Mapping[str, Any],
    results: Mapping[str, Any],
    sections: Mapping[str, Any],
    resumed_code: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``lineage.json`` for the record as it closes; returns ``results.json``'s pointer.

    ``results`` is the record so far and ``sections`` the final fields about to be merged
    into it (status, the trackers' sections that are final now); both are hashed value by
    value. ``resumed_code``: the git state of the process resuming the run (appended to the
    code stage, so a run finished by other code says so).
    """
    previous = stage_map(read_lineage(run_dir) or {}).get("code") or {}
    resumed_with = list(previous.get("resumed_with") or [])
    if resumed_code is not None:
        resumed_with.append({"at": now(), **dict(resumed_code)})
    final = {**results, **sections}
    values = {
        key: value_sha256(final.get(key)) for key in (*RESULT_KEYS, *sections) if key in final
    }
    partition_files = {name: file_sha256(run_dir / name) for name in STAGE_FILES["partition"]}
    stages = [
        _dataset_stage(fed, dataset_cfg),
        {"stage": "partition", "sha256": partition_sha256(fed.client_train, fed.client_test),
         "num_clients": fed.num_clients, "files": partition_files},
        _file_stage(run_dir, "config"),
        _code_stage(results.get("versions") or {}, resumed_with),
        {**_file_stage(run_dir, "checkpoint"), "round": results.get("rounds_completed")},
        _file_stage(run_dir, "model"),
        _file_stage(run_dir, "metrics"),
        {"stage": "results", "sha256": value_sha256(values), "file": RESULTS, "values": values},
    ]
    link = ""
    for stage in stages:
        link = stage["chain"] = _link(link, stage["stage"], stage["sha256"])
    doc: dict[str, Any] = {
        "schema": SCHEMA, "algorithm": "sha256", "written_at": now(),
        "status": final.get("status"), "rounds_completed": final.get("rounds_completed"),
        "head": link, "stages": stages,
    }
    doc["digest"] = value_sha256(doc)
    write_json(run_dir / FILE, doc)
    by_stage = {s["stage"]: s["sha256"] for s in stages}
    return {"file": FILE, "digest": doc["digest"], "dataset": by_stage["dataset"],
            "partition": by_stage["partition"], "model": by_stage["model"]}


def _file_stage(run_dir: Path, stage: str) -> dict[str, Any]:
    files = {name: file_sha256(run_dir / name) for name in STAGE_FILES[stage]}
    sha = next(iter(files.values())) if len(files) == 1 else value_sha256(files)
    return {"stage": stage, "sha256": sha, "files": files}


def read_lineage(run_dir: Path) -> dict[str, Any] | None:
    """``lineage.json`` as written, or None when it is absent or unreadable (reports show
    what there is; :func:`verify` is the check)."""
    try:
        doc = json.loads((run_dir / FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def stage_map(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A lineage document's stages by name, in chain order (empty when it has none)."""
    stages = doc.get("stages")
    if not isinstance(stages, list):
        return {}
    return {s["stage"]: s for s in stages if isinstance(s, dict) and "stage" in s}


def card_digest_line(digest: str) -> str:
    """The model card's line quoting the digest (``fedlab-lineage`` checks it)."""
    return CARD_DIGEST.format(digest)


# --------------------------------------------------------------------------------------
# Verifying
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One comparison against the lineage: a stage's file or value, and what was found."""

    stage: str
    subject: str
    ok: bool
    message: str
    file: bool = False  # a run-directory file re-hashed (not a value or a re-derivation)


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` checked, in chain order, up to and including the first failure."""

    lineage: dict[str, Any] | None
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)


def short(sha: Any) -> str:
    """A hash as printed: its first 12 hex digits (``absent`` for a file that was not)."""
    return f"{sha[:12]}…" if isinstance(sha, str) else "absent"


def _lineage_checks(run_dir: Path, results: Mapping[str, Any]) -> Iterable[Check]:
    """The lineage document itself: present, well-formed, matching its digest and
    ``results.json``'s copy of the digest."""
    pointer = results.get("lineage") if isinstance(results.get("lineage"), dict) else None
    path = run_dir / FILE
    if not path.is_file():
        yield Check("lineage", FILE, False, f"{FILE}: missing, but {RESULTS} records lineage "
                    f"digest {short(pointer and pointer.get('digest'))}")
        return
    try:
        doc = json.loads(path.read_text())
        ok = isinstance(doc, dict) and doc.get("schema") == SCHEMA and "digest" in doc
    except (OSError, ValueError) as err:
        yield Check("lineage", FILE, False, f"{FILE}: malformed ({str(err).splitlines()[0]})")
        return
    if not ok or not stage_map(doc):
        yield Check("lineage", FILE, False, f"{FILE}: malformed (not a {SCHEMA} document)")
        return
    actual = value_sha256({k: v for k, v in doc.items() if k != "digest"})
    if actual != doc["digest"]:
        yield Check("lineage", FILE, False, f"{FILE}: its content no longer matches its own "
                    f"digest {short(doc['digest'])} (now {short(actual)}): edited by hand")
    elif pointer is None:
        yield Check("lineage", FILE, False, f"{FILE}: {RESULTS} has no lineage entry for it")
    elif pointer.get("digest") != doc["digest"]:
        yield Check("lineage", FILE, False, f"{FILE}: digest {short(doc['digest'])} differs "
                    f"from the {short(pointer.get('digest'))} that {RESULTS} records")
    else:
        yield Check("lineage", FILE, True, f"digest {short(doc['digest'])}")


def _stage_checks(run_dir: Path, stage: Mapping[str, Any], results: Mapping[str, Any],
                  derived: Mapping[str, str] | None) -> Iterable[Check]:
    name = str(stage["stage"])
    if derived is not None and name in derived:
        if derived[name] != stage.get("sha256"):
            yield Check(name, name, False, f"{name}: re-derived from config.yaml it hashes to "
                        f"{short(derived[name])}, the lineage records "
                        f"{short(stage.get('sha256'))}")
            return
        yield Check(name, name, True, "re-derived from config.yaml")
    for file, sha in (stage.get("files") or {}).items():
        now_sha = file_sha256(run_dir / file)
        if now_sha != sha:
            what = "missing" if now_sha is None else (
                "present but absent when the lineage was written" if sha is None
                else f"sha256 {short(now_sha)}, the lineage records {short(sha)}")
            yield Check(name, file, False, f"{file}: {what}: changed after the run")
            return
        yield Check(name, file, True, short(sha), file=True)
    for key, sha in (stage.get("values") or {}).items():
        if key not in results or value_sha256(results[key]) != sha:
            gone = "is gone" if key not in results else "changed"
            yield Check(name, f"{RESULTS}:{key}", False,
                        f"{RESULTS}: '{key}' {gone} since the lineage was written")
            return
    if stage.get("values"):
        yield Check(name, RESULTS, True, f"{len(stage['values'])} values")


def _card_check(run_dir: Path, digest: str) -> Iterable[Check]:
    path = run_dir / "model_card.md"
    if not path.is_file():
        return
    quoted = _CARD_PATTERN.search(path.read_text())
    if quoted is None:
        return  # a card made by other tools, or before lineage: nothing it claims
    ok = quoted.group(1) == digest
    message = "quotes this digest" if ok else (
        f"model_card.md: quotes lineage digest {short(quoted.group(1))}, not this run's "
        f"{short(digest)}: written for another record")
    yield Check("card", "model_card.md", ok, message)


def verify(
    run_dir: Path, rederive: Callable[[Path], Mapping[str, str]] | None = None
) -> Verification:
    """Check ``run_dir`` against its lineage, in chain order, stopping at the first mismatch.

    ``rederive``: a function giving the ``dataset`` and ``partition`` hashes of the data
    prepared again from the run's ``config.yaml`` (``fedlab-lineage --data``; called only once
    ``config.yaml`` is known to be intact). Raises :class:`LineageError` when
    ``run_dir`` is no run record or has no lineage at all (made before fedlab wrote one).
    """
    try:
        results = json.loads((run_dir / RESULTS).read_text())
    except (OSError, ValueError) as err:
        raise LineageError(f"{run_dir}: not a run record ({RESULTS}: {err})") from None
    if not isinstance(results, dict):
        raise LineageError(f"{run_dir / RESULTS}: not a run record")
    if "lineage" not in results and not (run_dir / FILE).exists():
        raise LineageError(f"{run_dir}: no lineage recorded (a record from before fedlab wrote "
                           f"{FILE}, or a run that has not closed yet)")
    checks = list(_lineage_checks(run_dir, results))
    if not checks[-1].ok:
        return Verification(None, tuple(checks))
    doc = json.loads((run_dir / FILE).read_text())
    stages = stage_map(doc)
    derived = None
    if rederive is not None:  # it reads config.yaml: that must be the run's own first
        for check in _stage_checks(run_dir, stages.get("config") or {}, results, None):
            if not check.ok:
                return Verification(doc, (*checks, check))
        derived = rederive(run_dir)
    for stage in stages.values():
        for check in _stage_checks(run_dir, stage, results, derived):
            checks.append(check)
            if not check.ok:
                return Verification(doc, tuple(checks))
    checks.extend(_card_check(run_dir, doc["digest"]))
    return Verification(doc, tuple(checks))
