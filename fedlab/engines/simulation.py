"""Simulation: run the ServerApp and ClientApps on the engine ``simulation.backend`` names
(``auto``, the default, picks one for the machine: :mod:`fedlab.engines.auto`).

Each engine is one module of this package with a function of the same signature; adding one
is a module and an entry in :data:`fedlab.engines.registry.ENGINES` (and a
``conf/simulation/`` option).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from fedlab.engines import registry
from fedlab.engines.auto import resolve

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from fedlab.config.schema import SimulationConfig


def engine(backend: str) -> Callable[[ServerApp, ClientApp, int, SimulationConfig], None]:
    """The function that runs a simulation on ``backend``."""
    return registry.engine(backend)


def simulate(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, sim: SimulationConfig
) -> None:
    """Run one simulation on the engine the config names or ``auto`` picks (the choice said
    on the console, once); a ServerApp exception is re-raised."""
    choice = resolve(sim, num_clients)
    chosen = replace(sim, backend=choice.backend, workers=choice.workers or sim.workers)
    engine(choice.backend)(server_app, client_app, num_clients, chosen)
