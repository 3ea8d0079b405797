"""``fedlab-lineage RUN_DIR [--data]``: print a run's lineage chain and verify it.

The hashing and the checks are :mod:`fedlab.record.lineage`'s; this is the command: the chain
as a table (each stage's hash, whether it was checked and held), one line naming the first
file or value that no longer matches (exit 1), and ``--data``, which prepares the data again
from the run's ``config.yaml`` to check the dataset and partition hashes too. It lives apart
from the record package because re-deriving the data needs the experiment (fedlab.config),
which the record's own modules never import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from fedlab.config.errors import ConfigError
from fedlab.record.lineage import (
    FILE,
    PARTITION,
    LineageError,
    Verification,
    dataset_arrays,
    dataset_sha256,
    partition_sha256,
    short,
    stage_map,
    verify,
)
from fedlab.record.run_dir import RESULTS

PROG = "fedlab-lineage"


def rederive(run_dir: Path) -> dict[str, str]:
    """The dataset and partition hashes of the data prepared again from ``config.yaml``
    (loading and partitioning the dataset as the run did: seconds, a download for a Hub
    dataset that is not cached)."""
    from omegaconf import OmegaConf

    from fedlab.config.experiment import Experiment
    from fedlab.config.schema import FedlabConfig

    raw = OmegaConf.merge(
        OmegaConf.structured(FedlabConfig), OmegaConf.load(run_dir / "config.yaml")
    )
    fed = Experiment.from_config(raw).load_data()  # type: ignore[arg-type]
    return {
        "dataset": dataset_sha256(dataset_arrays(fed)),
        "partition": partition_sha256(fed.client_train, fed.client_test),
    }


def describe(stage: Mapping[str, Any]) -> str:
    """One stage of the chain in words."""
    name = stage["stage"]
    if name == "dataset":
        version = ", ".join(f"{k} {v}" for k, v in (stage.get("version") or {}).items())
        arrays = len(stage.get("arrays") or {})
        return f"{stage.get('name')} ({stage.get('source')}; {version}; {arrays} arrays)"
    if name == "partition":
        return f"{stage.get('num_clients')} clients' train/test indices ({PARTITION})"
    if name == "code":
        commit = stage.get("git_commit")
        text = f"fedlab {stage.get('fedlab')}, git {commit[:12] if commit else 'n/a'}"
        if stage.get("git_dirty"):
            text += f" + uncommitted diff {short(stage.get('git_diff_sha256'))}"
        if stage.get("resumed_with"):
            text += f", resumed {len(stage['resumed_with'])} time(s)"
        return text
    if name == "checkpoint":
        return f"checkpoint.safetensors after round {stage.get('round')}"
    if name == "results":
        return f"{len(stage.get('values') or {})} values of {RESULTS}"
    return ", ".join(stage.get("files") or {})


def chain_lines(run_dir: Path, result: Verification) -> list[str]:
    """The printout: a header, then one line per stage with its hash and verdict (``ok``,
    ``FAIL``, or ``-``: not checked, because it holds no file or an earlier stage failed)."""
    doc = result.lineage
    if doc is None:
        return []
    lines = [
        f"lineage of {run_dir} ({FILE}, digest {short(doc.get('digest'))}, written "
        f"{doc.get('written_at')}, status {doc.get('status')})"
    ]
    checked: dict[str, bool] = {}
    for check in result.checks:
        checked[check.stage] = checked.get(check.stage, True) and check.ok
    for i, stage in enumerate(stage_map(doc).values()):
        verdict = {True: "ok", False: "FAIL"}.get(checked.get(stage["stage"]), "-")  # type: ignore[arg-type]
        lines.append(
            f"  {'   ' if i == 0 else '-> '}{stage['stage']:<10} {short(stage.get('sha256')):<14}"
            f" {verdict:<4} {describe(stage)}"
        )
    if any(stage not in checked for stage in stage_map(doc)):
        lines.append("     (-: recorded, not re-checked: the dataset is re-derived only with "
                     "--data, the code not at all)")
    if "card" in checked:
        lines.append(f"     {'card':<10} {'':<14} {'ok' if checked['card'] else 'FAIL':<4} "
                     "model_card.md quotes the digest")
    return lines


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage: errors must stay one line."""

    def error(self, message: str) -> NoReturn:
        raise LineageError(message)


def parser() -> argparse.ArgumentParser:
    """The command line of ``fedlab-lineage``."""
    p = _Parser(
        prog=PROG,
        description="Print a run's lineage (dataset -> partition -> config -> code -> "
        "checkpoint -> model -> metrics -> results) and verify the run directory against it.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a fedlab run directory")
    p.add_argument(
        "--data",
        action="store_true",
        help="also prepare the data again from config.yaml and check the dataset and "
        "partition hashes (loads the dataset)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: 0 verified, 1 a mismatch (the first, named), 2 bad input."""
    try:
        args = parser().parse_args(argv)
        result = verify(args.run_dir, rederive if args.data else None)
    except (LineageError, ConfigError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    for line in chain_lines(args.run_dir, result):
        print(line)
    if (failure := result.failure) is not None:
        print(f"{PROG}: error: {failure.message}", file=sys.stderr)
        return 1
    files = sum(1 for c in result.checks if c.file)
    again = "; dataset and partition re-derived from config.yaml" if args.data else ""
    print(f"{PROG}: verified: {files} files and the recorded values match {FILE}{again}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
