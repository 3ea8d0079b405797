"""The final global model as an MLflow PyTorch model (see :mod:`.store` for the rest).

``pt2`` (``torch.export``) first: loading it runs no pickled code, as fedlab's safetensors
files; a model ``torch.export`` cannot trace (a hybrid quantum layer, say) is pickled instead.
The first export in a process costs seconds of imports, paid ahead by :func:`warm_up` while
the run trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


def final_model(run_dir: Path, spec: Mapping[str, Any], input_shape: Sequence[int],
                num_classes: int) -> Any:
    """The model the config names with the run's final weights (``model.safetensors``)."""
    from fedlab.fl.model import build_model
    from fedlab.record.run_dir import load_model

    model = build_model(dict(spec), tuple(input_shape), num_classes)
    model.load_state_dict(load_model(run_dir / "model.safetensors"))
    return model.eval()


def _example(input_shape: Sequence[int]) -> Any:
    """The input example MLflow infers the signature from and ``torch.export`` traces with:
    zeros of the input's shape (a batch of 2, so the batch dimension stays dynamic); never
    real examples, which would put data into the tracking store."""
    import numpy as np

    return np.zeros((2, *input_shape), dtype=np.float32)


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent ``log_model`` reads the process-wide tracking URI: set it for the
    call, and put the previous one back."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_model(uri: str, run_id: str, model: Any, input_shape: Sequence[int],
              step: int) -> tuple[str, str]:
    """Log ``model`` to the run; returns (model URI, format). ``pt2`` first; a model
    ``torch.export`` cannot trace (a hybrid quantum layer, say) is pickled instead.
    Requirements are given, not inferred: MLflow's inference imports the model in a
    subprocess, seconds at the end of every run."""
    import mlflow.pytorch
    import torch

    requirements = [f"torch=={torch.__version__}"]
    common = {"name": "model", "run_id": run_id, "step": step}
    with _tracking_uri(uri):
        try:
            info = mlflow.pytorch.log_model(
                model, input_example=_example(input_shape), pip_requirements=requirements,
                serialization_format="pt2", **common,
            )
            return info.model_uri, "pt2"
        except Exception:  # any export failure: the pickled format still loads
            from importlib.metadata import version

            info = mlflow.pytorch.log_model(
                model, pip_requirements=[*requirements, f"fedlab=={version('fedlab')}"],
                serialization_format="pickle", **common,
            )
            return info.model_uri, "pickle"


def warm_up(spec: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> None:
    """Save an untrained model of the run's architecture to a temporary directory: the
    first ``torch.export`` in a process imports seconds of code, paid here while the run
    trains instead of after its last round."""
    import tempfile

    import mlflow.pytorch

    import fedlab.reports.metrics  # noqa: F401 - imported for the summary, ahead of time
    from fedlab.fl.model import build_model

    with tempfile.TemporaryDirectory(prefix="fedlab-mlflow-") as tmp, contextlib.suppress(
        Exception  # only a head start: the real log reports any failure
    ):
        model = build_model(dict(spec), tuple(input_shape), num_classes).eval()
        mlflow.pytorch.save_model(model, str(Path(tmp) / "m"), serialization_format="pt2",
                                  input_example=_example(input_shape))


