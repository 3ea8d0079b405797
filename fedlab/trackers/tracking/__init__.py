"""Experiment tracking: every run also an MLflow run (``tracking=mlflow``, docs/tracking.md).

* :mod:`.mlflow`: the :class:`~fedlab.trackers.tracking.mlflow.MlflowTracker` (a tracker like
  any other, configured under ``trackers.tracking``) and :func:`~.mlflow.tag_run`;
* :mod:`.worker`: the process that talks to the store, so that MLflow's import, its database
  and a slow or unreachable server never hold up a round;
* :mod:`.store` and :mod:`.model`: what lands where (params, metrics, tags, artifacts, the
  model), shared by the live tracker and the back-fill, so both log a run the same way;
* :mod:`.sweep`: the Hydra callback that closes a multirun's parent run;
* :mod:`.backfill`: ``fedlab-mlflow log DIR...``, existing run directories into MLflow.

Nothing here imports ``mlflow`` at module level: a run without tracking never loads it.
"""
