"""Flower's simulation engine (Ray) with resources that fit the machine, and two fixed costs of
flwr 1.42's engine removed (:func:`speed_up_engine`)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from queue import Queue
from typing import Any

import flwr
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedlab.config.schema import SimulationConfig

log = logging.getLogger("fedlab")

# The engine loop below replaces a function of flwr 1.42's simulation engine: only that series
# is known to match it. Another Flower version runs its own loop unchanged.
PATCHED_FLWR_SERIES = "1.42."
_engine_poll_s = 0.1  # set by simulate() from simulation.pull_interval_s
_flower_engine: dict[str, Any] = {}  # Flower's own loop and backend, to put back


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
    if sim.ray_address is not None:
        # An existing cluster ("auto", "host:6379" or "ray://host:10001"): ray.init connects
        # instead of starting Ray, and its nodes' `ray start --num-cpus` set the cores.
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


def _add_messages_to_queue(
    state: Any, queue: Queue, nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """flwr 1.42's ``vce_api.add_messages_to_queue`` with a configurable wait.

    Flower's loop asks the LinkState for one message per node (``get_message_ins``, which
    scans every stored message under a lock), then waits a hard-coded 0.1 s. That wait delays
    every message to the clients by 50 ms on average, once per train and once per evaluate
    phase, whatever the work. This loop waits ``simulation.pull_interval_s`` instead, and
    first reads which nodes have undelivered messages from the in-memory store (a cheap,
    unlocked snapshot used only as a hint), so that a short wait does not turn the per-node
    scan into a busy loop with hundreds of nodes. Delivery itself still goes through Flower's
    ``get_message_ins`` (locking, TTL checks, marking messages delivered), in node order.
    """
    store = getattr(state, "message_ins_store", None)  # InMemoryLinkState only
    while not f_stop.is_set():
        if store is None:
            nodes: Any = nodes_mapping.keys()
        else:
            waiting = {
                m.metadata.dst_node_id for m in list(store.values()) if not m.metadata.delivered_at
            }
            nodes = [node for node in nodes_mapping if node in waiting] if waiting else ()
        for node_id in nodes:
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        f_stop.wait(_engine_poll_s)


def _fedlab_ray_backend() -> type:
    """flwr 1.42's RayBackend, sending the ClientApp to the actors once instead of per message,
    and keeping the driver's SIGTERM handler (ray.init replaces it).

    Flower passes the ClientApp factory as an argument of every actor call, so the driver
    cloudpickles the ClientApp (closures included, ~9 kB) once per client per phase (about
    1-2 ms each on this machine, on the driver's critical path). Stored once with ``ray.put``,
    each call carries a reference that Ray resolves to the same factory in the actor.
    """
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    class FedlabRayBackend(RayBackend):
        fedlab = True

        def init_ray(self, backend_config: Any) -> None:
            # ray.init installs a SIGTERM handler in the driver (sys.exit, then Ray's own
            # abort): put back the program's, which ends the run as `interrupted`.
            handler = signal.getsignal(signal.SIGTERM)
            super().init_ray(backend_config)
            if threading.current_thread() is threading.main_thread() and handler is not None:
                signal.signal(signal.SIGTERM, handler)

        def build(self, app_fn: Any) -> None:
            super().build(app_fn)
            self.app_fn = ray.put(app_fn)

        def terminate(self) -> None:
            # Flower terminates the backend in a `finally`; ended by Ctrl-C or a terminating
            # signal (still propagating here), its client threads may still be inside Ray
            # calls, and shutting Ray down under them crashed the driver (SIGSEGV, or "the
            # core worker has already been shutdown", exit 1) in 3 to 4 of 12 SIGTERMs here,
            # before the record said interrupted. Ray is left up: the run then leaves with
            # os._exit (fedlab.cli), and Ray's processes die with the driver (Ray starts them
            # fate-sharing: PR_SET_PDEATHSIG on Linux, else its reaper process).
            if isinstance(sys.exc_info()[1], KeyboardInterrupt):
                return
            super().terminate()

    return FedlabRayBackend


def speed_up_engine(poll_s: float) -> bool:
    """Remove two fixed costs of Flower's simulation engine from every round.

    flwr 1.42 exposes no setting for either, so fedlab replaces two module-level names that
    the engine looks up each time it starts: ``vce_api.add_messages_to_queue`` (a loop that
    hands messages to the clients every 0.1 s; fedlab's waits ``poll_s``, see
    :func:`_add_messages_to_queue`) and ``raybackend.RayBackend`` (a subclass that sends the
    ClientApp to the actors once, see :func:`_fedlab_ray_backend`). Only for the flwr 1.42
    series, whose source both were checked against; with any other version, or with the
    environment variable ``FEDLAB_FLOWER_ENGINE=1`` (to compare, or to rule fedlab out when
    debugging the engine), Flower's own engine runs and this returns False.
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    global _engine_poll_s
    if not _flower_engine:
        _flower_engine.update(loop=vce_api.add_messages_to_queue, backend=raybackend.RayBackend)
    if os.environ.get("FEDLAB_FLOWER_ENGINE") == "1" or not flwr.__version__.startswith(
        PATCHED_FLWR_SERIES
    ):
        vce_api.add_messages_to_queue = _flower_engine["loop"]
        raybackend.RayBackend = _flower_engine["backend"]
        return False
    _engine_poll_s = poll_s
    vce_api.add_messages_to_queue = _add_messages_to_queue
    if not getattr(raybackend.RayBackend, "fedlab", False):
        raybackend.RayBackend = _fedlab_ray_backend()
    return True


def run_on_ray(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, sim: SimulationConfig
) -> None:
    """Run one simulation on Ray; a ServerApp exception is re-raised by Flower."""
    from flwr.simulation import run_simulation

    quiet_environment()
    speed_up_engine(sim.pull_interval_s)
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
