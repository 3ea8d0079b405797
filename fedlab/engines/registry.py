"""The engines by name, imported by nothing heavy: the config schema checks
``simulation.backend`` against it, :mod:`fedlab.engines.simulation` runs what it names."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

#: ``simulation.backend`` -> "module:function" running one simulation (imported on use, so a
#: run in-process never imports Ray).
ENGINES: dict[str, str] = {
    "ray": "fedlab.engines.ray:run_on_ray",
    "inprocess": "fedlab.engines.inprocess:run_inprocess",
    "pool": "fedlab.engines.pool:run_pool",
    # picks one of the above for the machine and says why (fedlab/engines/auto.py)
    "auto": "fedlab.engines.auto:run_auto",
}


def engine(backend: str) -> Callable[..., None]:
    """The function that runs a simulation on ``backend`` (its module imported now)."""
    module, _, name = ENGINES[backend].partition(":")
    return getattr(import_module(module), name)
