"""Simulation: run the ServerApp and ClientApp on Flower's simulation engine (Ray)."""

from __future__ import annotations

import logging
import os
import warnings

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedlab.config import SimulationConfig


def backend_config(sim: SimulationConfig) -> dict:
    """Flower's ``backend_config`` for the Ray backend.

    ``client_cpus`` decides how many client actors run at once (cores / client_cpus). Ray's
    dashboard is off and actor output is not forwarded to the driver: clients report through
    their replies, and errors come back as error replies that fedlab records.
    """
    init_args: dict = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "configure_logging": True,
    }
    if sim.ray_num_cpus is not None:
        init_args["num_cpus"] = sim.ray_num_cpus
    if sim.ray_address is not None:  # an existing Ray cluster ("auto" or "ray://host:10001")
        init_args["address"] = sim.ray_address
    return {
        "client_resources": {"num_cpus": sim.client_cpus, "num_gpus": sim.client_gpus},
        "init_args": init_args,
    }


def quiet_environment() -> None:
    """Environment settings that must precede Ray's start-up."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def simulate(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, sim: SimulationConfig
) -> None:
    """Run one simulation; a ServerApp exception is re-raised by Flower."""
    from flwr.simulation import run_simulation

    quiet_environment()
    with warnings.catch_warnings():
        # flwr 1.42 marks run_simulation deprecated in favour of `flwr run` against a
        # SuperLink; it remains the programmatic entry point fedlab pins (see the guide).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_clients,
            backend_config=backend_config(sim),
        )
