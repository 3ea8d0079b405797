"""Shared fixtures: Hydra's compose API over the installed ``fedlab.conf`` package."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from fedlab.config import register_configs


@pytest.fixture(scope="session", autouse=True)
def _quiet_flower() -> None:
    """Flower's INFO chatter (strategy summaries) as fedlab-run shows it: not at all."""
    from fedlab.console import setup_logging

    setup_logging()


@pytest.fixture(scope="session")
def compose_cfg() -> Callable[..., DictConfig]:
    """``compose_cfg("strategy=fedprox", ...)`` -> the composed config, as fedlab-run sees it."""
    register_configs()

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_module(config_module="fedlab.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


class InProcessGrid:
    """A serial, in-process stand-in for Flower's simulation Grid, for unit tests only.

    Each message is handled by calling the ClientApp directly with the node's Context, and a
    raised exception becomes an error reply, as Flower's engine does. It lets the server side
    (schedule, Grid wrapper, strategies, record) be tested in a second instead of starting Ray.
    """

    def __init__(
        self, client_app, num_clients: int, app_override=None, reverse=True, drop=()
    ) -> None:
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        # Flower's runtime sets the identity of the ServerApp process before messages are made.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        self.client_app = client_app
        self.app_override = app_override or {}
        # Node ids are arbitrary in Flower (random); use a shuffled, non-contiguous set.
        import numpy as np

        node_ids = 1000 + 7 * np.random.default_rng(0).permutation(num_clients)
        self.contexts = {
            int(node): Context(
                run_id=1,
                node_id=int(node),
                node_config={"partition-id": pid, "num-partitions": num_clients},
                state=RecordDict(),
                run_config={},
            )
            for pid, node in enumerate(node_ids)
        }
        self.sent: list = []
        self.reverse = reverse
        self.drop = set(drop)  # partitions whose replies never arrive (a timeout)

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error, Message

        replies = []
        for msg in messages:
            self.sent.append(msg)
            context = self.contexts[msg.metadata.dst_node_id]
            pid = int(context.node_config["partition-id"])
            if pid in self.drop and msg.metadata.message_type == "train":
                continue
            app = self.app_override.get(pid, self.client_app)
            try:
                replies.append(app(msg, context))
            except Exception as err:  # Flower turns a client exception into an error reply
                replies.append(Message(Error(code=2, reason=repr(err)), reply_to=msg))
        return list(reversed(replies)) if self.reverse else replies


@pytest.fixture()
def run_inprocess(compose_cfg, tmp_path):
    """Run a whole experiment in-process; returns (experiment, record, grid)."""
    from fedlab.client_app import ClientSpec, build_client_app
    from fedlab.experiment import Experiment
    from fedlab.record import RunRecord
    from fedlab.server_app import run_server

    def _run(
        *overrides: str,
        app_override=None,
        run_dir=None,
        reverse=True,
        carbon=False,
        drop=(),
        resume=None,
    ):
        """``resume``: a run dir to continue from its checkpoint, as ``fedlab-run resume=``."""
        exp = Experiment.from_config(compose_cfg(*overrides))
        fed, _ = exp.prepare()
        path = tmp_path / f"fed-{len(list(tmp_path.iterdir()))}.npz"
        fed.save(path)
        spec = ClientSpec(str(path), dict(exp.cfg.model), exp.cfg.seed, 1)
        grid = InProcessGrid(
            build_client_app(spec),
            exp.cfg.num_clients,
            {k: v(spec) for k, v in (app_override or {}).items()},
            reverse,
            drop,
        )
        saved = None
        if resume is not None:
            from fedlab import checkpoint

            saved = checkpoint.load(resume)
            record = RunRecord.resume(resume, saved.server_round)
        else:
            record = RunRecord(run_dir or tmp_path / f"run-{len(list(tmp_path.iterdir()))}")
            record.start("{}", {"rounds_completed": 0})
        tracker = exp.carbon_tracker(fed, record.dir) if carbon else None
        run_server(grid, exp, fed, record, tracker, saved)
        if tracker is not None:
            record.update(carbon=tracker.summary(tracker.stop()))
        return exp, fed, record, grid

    return _run
