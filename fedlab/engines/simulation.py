"""Simulation: run the ServerApp and ClientApps on the engine ``simulation.backend`` names.

Each engine is one module of this package with a function of the same signature; adding one
is a module and an entry in :data:`fedlab.engines.registry.ENGINES` (and a
``conf/simulation/`` option).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING

from fedlab.engines.registry import ENGINES

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from fedlab.config.schema import SimulationConfig


def engine(backend: str) -> Callable[[ServerApp, ClientApp, int, SimulationConfig], None]:
    """The function that runs a simulation on ``backend``."""
    module, _, name = ENGINES[backend].partition(":")
    return getattr(import_module(module), name)


def simulate(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, sim: SimulationConfig
) -> None:
    """Run one simulation; a ServerApp exception is re-raised."""
    engine(sim.backend)(server_app, client_app, num_clients, sim)
