"""The in-process engine: Flower's ServerApp and ClientApp called serially in this process,
without Ray (``simulation=inprocess``)."""

from __future__ import annotations

from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedlab.config.schema import SimulationConfig


class InProcessGrid:
    """A Flower Grid that runs every ClientApp call serially in this process.

    Flower's only simulation backend is Ray, whose fixed costs (starting its daemons, client
    actors importing torch and Flower, an actor call per message) dominate small studies on
    one machine: about 13 s per run and 2-3 ms per message here. This Grid hands each message
    to the ClientApp directly, with the node's Context, and turns a raised exception into an
    error reply as Flower's engine does; the ServerApp, strategies, DP wrappers and record are
    the same objects. Every draw is seeded from (seed, round, client), so a run gives the same
    numbers as on Ray (tests/test_simulation.py compares them). Clients run one after another
    and a hung client cannot be timed out (``round_timeout_s`` does not apply).
    """

    def __init__(self, client_app: ClientApp, num_clients: int, node_ids: Any = None) -> None:
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        # Flower's runtime sets the identity of the ServerApp process before messages are made.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        self.client_app = client_app
        # Flower gives nodes arbitrary ids; so does this Grid (fedlab maps them by handshake).
        ids = range(1, num_clients + 1) if node_ids is None else node_ids
        self.contexts = {
            int(node): Context(
                run_id=1,
                node_id=int(node),
                node_config={"partition-id": pid, "num-partitions": num_clients},
                state=RecordDict(),
                run_config={},
            )
            for pid, node in enumerate(ids)
        }

    def get_node_ids(self) -> list[int]:
        """Every simulated node."""
        return list(self.contexts)

    def reply(self, msg: Any, client_app: ClientApp | None = None) -> Any:
        """The ClientApp's (or ``client_app``'s) reply to ``msg``; an error reply if it raised."""
        from flwr.app import Error, Message

        context = self.contexts[msg.metadata.dst_node_id]
        try:
            return (client_app or self.client_app)(msg, context)
        except Exception as err:  # Flower turns a client exception into an error reply
            return Message(Error(code=2, reason=repr(err)), reply_to=msg)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        """Run each message's ClientApp call now; return the replies."""
        return [self.reply(msg) for msg in messages]


def run_in_process(server_app: ServerApp, grid: Any) -> None:
    """Run ``server_app`` over ``grid`` in this process (no Ray, no threads)."""
    from flwr.app import Context, RecordDict

    server_app(
        grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    )


def run_inprocess(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, sim: SimulationConfig
) -> None:
    """Run one simulation in this process; a ServerApp exception propagates as raised."""
    run_in_process(server_app, InProcessGrid(client_app, num_clients))
