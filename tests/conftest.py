"""Shared fixtures: Hydra's compose API over the installed ``fedlab.conf`` package."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from fedlab.config.schema import register_configs
from fedlab.engines.inprocess import InProcessGrid as _InProcessGrid


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


class InProcessGrid(_InProcessGrid):
    """fedlab's in-process Grid with test hooks: replies in reverse order (as if Ray finished
    them in another order), shuffled non-contiguous node ids, per-partition ClientApps
    (``app_override``), partitions whose train replies never arrive (``drop``: a timeout), and
    a log of every message sent."""

    def __init__(
        self, client_app, num_clients: int, app_override=None, reverse=True, drop=()
    ) -> None:
        import numpy as np

        node_ids = 1000 + 7 * np.random.default_rng(0).permutation(num_clients)
        super().__init__(client_app, num_clients, node_ids)
        self.app_override = app_override or {}
        self.sent: list = []
        self.reverse = reverse
        self.drop = set(drop)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            self.sent.append(msg)
            pid = int(self.contexts[msg.metadata.dst_node_id].node_config["partition-id"])
            if pid in self.drop and msg.metadata.message_type == "train":
                continue
            replies.append(self.reply(msg, self.app_override.get(pid)))
        return list(reversed(replies)) if self.reverse else replies


@pytest.fixture()
def run_inprocess(compose_cfg, tmp_path):
    """Run a whole experiment in-process; returns (experiment, record, grid)."""
    from fedlab.config.experiment import Experiment
    from fedlab.fl.client_app import build_client_app
    from fedlab.fl.client_state import STATE_DIR
    from fedlab.fl.server_app import run_server
    from fedlab.record.run_dir import RunRecord
    from fedlab.run import _client_spec, open_record
    from fedlab.trackers.base import RunContext
    from fedlab.trackers.registry import Trackers

    def _run(
        *overrides: str,
        app_override=None,
        run_dir=None,
        reverse=True,
        carbon=False,
        drop=(),
        resume=None,
    ):
        """``resume``: a run dir to continue from its checkpoint, as ``fedlab-run resume=``;
        ``carbon``: measure the host with CodeCarbon (off by default: it costs a second)."""
        if not carbon:
            overrides = ("carbon.enabled=false", *overrides)
        exp = Experiment.from_config(compose_cfg(*overrides))
        fed, _ = exp.prepare()
        path = tmp_path / f"fed-{len(list(tmp_path.iterdir()))}.npz"
        fed.save(path)
        state_dir = Path(resume or run_dir or tmp_path / f"run-{len(list(tmp_path.iterdir()))}")
        spec = replace(_client_spec(exp, path, state_dir / STATE_DIR), torch_threads=1)
        grid = InProcessGrid(
            build_client_app(spec),
            exp.cfg.num_clients,
            {k: v(spec) for k, v in (app_override or {}).items()},
            reverse,
            drop,
        )
        saved = None
        if resume is not None:
            from fedlab.record import checkpoint

            saved = checkpoint.load(resume)
            fresh = open_record(exp, resume)
            record = RunRecord.resume(
                resume, saved.server_round, fresh.round_columns, fresh.client_columns
            )
        else:
            record = open_record(exp, state_dir)
            record.start("{}", {"rounds_completed": 0})
        trackers = Trackers.build(RunContext(exp, fed, record.dir))
        run_server(grid, exp, fed, record, trackers, saved)
        record.update(**trackers.close())
        return exp, fed, record, grid

    return _run


SMALL_RUN = ("dataset=iris", "num_clients=3", "num_rounds=2", "simulation=inprocess", "carbon=off")


@pytest.fixture(scope="session")
def small_run(compose_cfg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small completed run (``SMALL_RUN``), shared read-only: tests that change it work
    on :func:`small_run_copy`."""
    from fedlab.run import run_experiment

    path = tmp_path_factory.mktemp("small") / "run"
    run_experiment(compose_cfg(*SMALL_RUN), path, list(SMALL_RUN))
    return path


@pytest.fixture()
def small_run_copy(small_run: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`small_run`."""
    import shutil

    target = tmp_path / "run"
    shutil.copytree(small_run, target)
    return target
