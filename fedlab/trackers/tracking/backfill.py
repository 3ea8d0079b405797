"""``fedlab-mlflow log DIR...``: existing run directories into MLflow, a sweep as a parent
run with its children, so studies run before ``tracking=mlflow`` are not second-class.

Everything comes from the run directory, read by :mod:`fedlab.record.reader` (the reader
every report uses), and is logged by :mod:`.store`, as a live run logs it: the same params,
metric histories (timestamps: the record's start plus each round's ``elapsed_s``), tags,
artifacts and model. The model needs the dataset's input shape, which a record does not hold:
the dataset is loaded again from ``config.yaml`` (once per dataset setting); where it cannot
be (an offline machine without the Hugging Face cache), the model is left out, with a note.

Idempotent: a run whose directory (``fedlab.run_key``) and final content
(``fedlab.content``: a hash of ``results.json`` and ``rounds.csv``) are already in the
experiment, logged live or by an earlier back-fill, is skipped; a record that changed since
(resumed, extended) is logged as a new run and the old one tagged ``fedlab.superseded_by``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from fedlab.config.tracking import TrackingConfig
from fedlab.record.reader import ReadError, Run, find_run_dirs, load_run, natural_key
from fedlab.trackers.tracking import model as tracked_model
from fedlab.trackers.tracking import store

PROG = "fedlab-mlflow"


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    defaults = TrackingConfig()
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    log = commands.add_parser("log", help="log run directories (or sweeps of them) into MLflow")
    log.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR_OR_SWEEP_DIR")
    log.add_argument("--uri", default=defaults.uri,
                     help=f"MLflow tracking URI (default: {defaults.uri})")
    log.add_argument("--experiment", default=defaults.experiment,
                     help=f"MLflow experiment (default: {defaults.experiment})")
    log.add_argument("--no-model", action="store_true", help="leave the final model out")
    log.add_argument("--no-artifacts", action="store_true", help="leave the files out")
    return parser


def sweep_of(run_dir: Path) -> Path | None:
    """The Hydra sweep directory ``run_dir`` is a job of (the nearest of its three parents
    holding ``multirun.yaml``), or None for a single run."""
    for parent in list(run_dir.parents)[:3]:
        if (parent / "multirun.yaml").is_file():
            return parent
    return None


def plan(paths: Sequence[Path]) -> list[tuple[Path | None, list[Run]]]:
    """Every record under ``paths``, read first (a bad one ends the command before anything
    is logged), grouped by sweep; single runs under None."""
    groups: dict[Path | None, list[Run]] = {}
    for run_dir in find_run_dirs(list(paths)):
        groups.setdefault(sweep_of(run_dir), []).append(load_run(run_dir))
    return sorted(groups.items(), key=lambda kv: natural_key(kv[0] or Path("")))


def _ms(iso: Any) -> int | None:
    try:
        return int(datetime.fromisoformat(str(iso)).timestamp() * 1000) if iso else None
    except ValueError:
        return None


class Backfill:
    """Logs records into one experiment of one store."""

    def __init__(self, uri: str, experiment: str, *, model: bool, artifacts: bool) -> None:
        self.uri = uri
        self.client = store.open_client(uri)
        self.experiment_id = store.experiment_id(self.client, experiment, uri)
        self.model, self.artifacts = model, artifacts
        self._shapes: dict[str, tuple[tuple[int, ...], int]] = {}

    def log_run(self, run: Run, parent_id: str | None) -> tuple[str, bool]:
        """Log ``run`` unless it is there already; (MLflow run id, whether logged now)."""
        digest = store.content_digest(run.path)
        earlier = store.find_runs(self.client, self.experiment_id, "fedlab.run_key",
                                  store.key_of(run.path))
        for found in earlier:
            if found.data.tags.get("fedlab.content") == digest:
                return found.info.run_id, False
        tags = store.run_tags(run) | {"fedlab.backfilled": "true"}
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run_id = self.client.create_run(
            self.experiment_id, start_time=_ms(run.results.get("started_at")), tags=tags,
            run_name=store.run_name(run),
        ).info.run_id
        store.log_params(self.client, run_id, store.run_params(run))
        store.log_rounds(self.client, run_id,
                         store.round_metrics(run.rounds, -1, None, store.record_stamp(run)))
        end = _ms(run.results.get("finished_at"))
        store.log_summary(self.client, run_id, run, end or int(time.time() * 1000))
        if self.artifacts:
            store.log_record_files(self.client, run_id, run.path)
        final = {"fedlab.content": digest}
        if self.model and (run.path / "model.safetensors").is_file():
            final |= self._log_model(run, run_id)
        store.set_tags(self.client, run_id, final)  # the content marker last: a run cut
        for found in earlier:  # short is not taken for a logged one by the next back-fill
            store.set_tags(self.client, found.info.run_id, {"fedlab.superseded_by": run_id})
        self.client.set_terminated(run_id, store.MLFLOW_STATUS.get(run.status, "FINISHED"),
                                   end_time=end)
        return run_id, True

    def _log_model(self, run: Run, run_id: str) -> dict[str, str]:
        try:
            spec = _model_spec(run)
            input_shape, num_classes = self._shape(run)
            model = tracked_model.final_model(run.path, spec, input_shape, num_classes)
            uri, fmt = tracked_model.log_model(self.uri, run_id, model, input_shape,
                                       int(run.results.get("rounds_completed") or 0))
        except Exception as err:  # the rest of the record is logged anyway
            text = str(err).strip().splitlines()
            print(f"{PROG}: note: {run.path}: model not logged ({type(err).__name__}: "
                  f"{text[0] if text else ''})")
            return {}
        return {"fedlab.model_uri": uri, "fedlab.model_format": fmt}

    def _shape(self, run: Run) -> tuple[tuple[int, ...], int]:
        """The dataset's input shape and class count, loaded again from ``config.yaml``."""
        from fedlab.config.experiment import Experiment

        raw = _raw_config(run)
        key = json.dumps(_plain(raw.dataset), sort_keys=True)
        if key not in self._shapes:
            exp = Experiment.from_config(raw)
            central = exp.dataset.load(exp.cfg.seed)
            self._shapes[key] = (tuple(central.input_shape), int(central.num_classes))
        return self._shapes[key]

    def log_sweep(self, sweep_dir: Path) -> str:
        return store.ensure_parent(self.client, self.experiment_id, sweep_dir, self.uri,
                                   record=False)


def _raw_config(run: Run) -> Any:
    from omegaconf import OmegaConf

    from fedlab.config.schema import FedlabConfig

    return OmegaConf.merge(OmegaConf.structured(FedlabConfig),
                           OmegaConf.load(run.path / "config.yaml"))


def _plain(node: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def _model_spec(run: Run) -> dict[str, Any]:
    spec = _plain(_raw_config(run).model)
    assert isinstance(spec, dict)
    return spec


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``fedlab-mlflow``)."""
    from importlib.util import find_spec

    args = _parser().parse_args(argv)
    try:
        groups = plan(args.paths)
    except ReadError as err:
        fail(str(err))
    if find_spec("mlflow") is None:
        fail("mlflow is not installed here: pip install 'fedlab[tracking]'")
    uri = store.normalize_uri(args.uri)
    with store.bounded_http():
        try:
            backfill = Backfill(uri, args.experiment, model=not args.no_model,
                                artifacts=not args.no_artifacts)
        except Exception as err:  # any store failure here is the --uri's
            fail(f"--uri: cannot use the MLflow store {uri} ({_reason(err)})")
        logged = skipped = 0
        for sweep_dir, runs in groups:
            try:
                parent = backfill.log_sweep(sweep_dir) if sweep_dir else None
                for run in runs:
                    run_id, new = backfill.log_run(run, parent)
                    logged, skipped = logged + new, skipped + (not new)
                    what = "logged" if new else "skipped (already logged)"
                    print(f"{PROG}: {what}: {run.path} -> run {run_id}"
                          + (f" (sweep run {parent})" if parent else ""))
                if parent:
                    store.close_parent(backfill.client, parent, sweep_dir)
            except Exception as err:  # one line, what is logged stays logged
                fail(f"{sweep_dir or 'run'}: logging stopped ({_reason(err)}); "
                     f"{logged} runs logged so far, rerun to continue", 1)
    print(f"{PROG}: {logged} runs logged, {skipped} already there, experiment "
          f"'{args.experiment}' in {uri} (browse: mlflow ui --backend-store-uri {uri})")


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


if __name__ == "__main__":
    main()
