"""The Hydra callback that ends a multirun's MLflow parent run.

A sweep is one parent run with a child per job. The parent is made by the first job that
tracks (:func:`fedlab.trackers.tracking.store.ensure_parent`, under a lock on the sweep
directory, so parallel launchers agree on one), not here at the sweep's start: a sweep whose
first job is refused leaves no empty parent behind, and a sweep that tracks only some jobs
(``tracking=none,mlflow``) still gets one. The jobs write where it is into
``mlflow_parent.json`` in the sweep directory; at the end of the multirun this callback
counts the children, logs ``multirun.yaml`` and marks the parent finished. A store that
cannot be reached is a warning, never a failed sweep.
"""

from __future__ import annotations

from logging import getLogger
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fedlab.trackers.tracking.store import bounded_http, close_parent, open_client, read_parents

log = getLogger("fedlab")


class MlflowSweep(Callback):
    """Hydra callback (``hydra.callbacks.mlflow_sweep``); does nothing without a parent."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        for parent in read_parents(sweep_dir):
            try:
                with bounded_http():
                    children = close_parent(open_client(parent["uri"]), parent["run_id"],
                                            sweep_dir)
            except Exception as err:  # the sweep's records are complete anyway
                text = str(err).strip().splitlines()
                log.warning("fedlab: warning: tracking: cannot end the sweep's MLflow run %s at "
                            "%s (%s)", parent["run_id"], parent["uri"], text[0] if text else err)
                continue
            print(f"fedlab: multirun: MLflow run {parent['run_id']} with {children} children "
                  f"({parent['uri']})")
