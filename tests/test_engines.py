"""The engines without Ray: the default choice (``simulation=auto``), the process pool's
numbers against the in-process engine's, and the pool's faults (a worker killed mid-round, a
client hung past the round timeout). Ray against in-process is tested in test_simulation.py."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlab.config.schema import ConfigError, SimulationConfig
from fedlab.engines import auto
from fedlab.engines.pool import PoolGrid
from fedlab.record.run_dir import read_csv

QUIET = ("trackers.audit.fairness=false", "trackers.audit.explanations=false")
TINY = ("dataset=iris", "num_clients=3", "num_rounds=2", "carbon=off", "client.local_epochs=1")


# --- auto's rule -------------------------------------------------------------------------


def _choose(sim: SimulationConfig, clients: int = 10, cores: int = 2, **kw):
    kw.setdefault("can_fork", True)
    kw.setdefault("memory", (256 * 2**30, 2**30))  # room for 204 workers
    return auto.choose(sim, clients, cores=cores, **kw)


def test_auto_picks_ray_only_for_a_cluster_or_gpus() -> None:
    choice = _choose(SimulationConfig(ray_address="10.0.0.1:6379"))
    assert choice.backend == "ray" and "simulation.ray_address=10.0.0.1:6379" in choice.reason
    assert not choice.trains_here  # Ray's actors import everything afresh
    assert _choose(SimulationConfig(client_gpus=0.5)).backend == "ray"
    # one machine, many cores: still no Ray
    choice = _choose(SimulationConfig(), clients=100, cores=64)
    assert (choice.backend, choice.workers) == ("pool", 64) and choice.trains_here
    assert choice.line().startswith("engine pool (64 workers): 64 cores on one machine")


def test_auto_sizes_the_pool_by_cores_clients_and_memory() -> None:
    assert _choose(SimulationConfig(), clients=3, cores=8).workers == 3  # no idle workers
    # 10 GiB available, 4 GiB per worker copy: 0.8 * 10 // 4 = 2 workers, said so
    choice = _choose(SimulationConfig(), cores=8, memory=(10 * 2**30, 4 * 2**30))
    assert choice.workers == 2 and "memory-bound" in choice.reason
    assert _choose(SimulationConfig(workers=3), cores=2).workers == 3  # asked for: as asked
    # a pool of one is no pool
    for kw in ({"cores": 1}, {"clients": 1}, {"can_fork": False}):
        choice = _choose(SimulationConfig(), **kw)
        assert (choice.backend, choice.workers) == ("inprocess", 1), kw
    assert "no fork()" in _choose(SimulationConfig(), can_fork=False).reason
    assert "1 core" in _choose(SimulationConfig(), cores=1).reason


def test_auto_keeps_small_clients_in_process_and_asks_only_when_it_matters() -> None:
    def never() -> float:
        raise AssertionError("the estimate is not needed for this choice")

    small = _choose(SimulationConfig(), work=lambda: 0.5e-3)
    assert (small.backend, small.workers) == ("inprocess", 1)
    assert "small clients (~0.5 ms of compute a message, estimated; under 2 ms" in small.reason
    assert _choose(SimulationConfig(), work=lambda: 5e-3).backend == "pool"
    # a cluster, GPUs, one core or workers asked for decide without the estimate
    assert _choose(SimulationConfig(ray_address="10.0.0.1:6379"), work=never).backend == "ray"
    assert _choose(SimulationConfig(), cores=1, work=never).backend == "inprocess"
    assert _choose(SimulationConfig(workers=2), work=never).backend == "pool"


def test_client_work_prices_the_rounds_flops_as_computed_by_hand(compose_cfg, monkeypatch) -> None:
    """With the per-operation and per-step prices at zero, the estimate is FLOPs alone: the
    MLP 64-128-10's forward pass is 2 (64 * 128 + 128 * 10) = 18,944 FLOPs an example, a
    training step 3x that per example of the batch, over the mean client's split."""
    import math

    from fedlab.config.experiment import Experiment
    from fedlab.fl.model import build_model

    monkeypatch.setattr(auto, "OP_S", 0.0)
    monkeypatch.setattr(auto, "STEP_S", 0.0)
    overrides = ("num_clients=20", "partition=iid", "strategy.fraction_train=0.25",
                 "strategy.fraction_evaluate=0.5", "client.local_epochs=2", "client.batch_size=16")
    exp = Experiment.from_config(compose_cfg(*overrides))
    fed, _ = exp.prepare()
    model = build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
    forward = 2 * (64 * 128 + 128 * 10)
    train = np.mean([len(i) for i in fed.client_train])  # 1437 / 20 * 0.8, about 57
    test = np.mean([len(i) for i in fed.client_test])
    steps = math.ceil(train / 16) * 2
    train_s, test_s = steps * 3 * 16 * forward / auto.FLOP_RATE, test * forward / auto.FLOP_RATE
    expected = (5 * train_s + 10 * test_s) / 15  # 5 trained, 10 evaluated
    assert auto.client_work(exp, fed, model) == pytest.approx(expected, rel=1e-12)
    assert model.training  # left as it was found


def test_a_named_engine_is_said_as_asked_for() -> None:
    choice = auto.decide(SimulationConfig(backend="inprocess"), 10)
    assert choice.line() == "engine inprocess: asked for (simulation.backend=inprocess)"
    with pytest.raises(ConfigError, match=r"simulation\.workers: must be >= 1"):
        SimulationConfig(workers=0)


def test_the_default_config_is_auto_and_the_presets_keep_their_engines(compose_cfg) -> None:
    assert compose_cfg().simulation.backend == "auto"
    assert compose_cfg("simulation=local").simulation.backend == "ray"
    assert compose_cfg("simulation=ray_cluster").simulation.backend == "ray"
    assert compose_cfg("simulation=inprocess").simulation.backend == "inprocess"
    assert compose_cfg("simulation=pool").simulation.backend == "pool"


# --- the pool against the in-process engine, whole runs -----------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """One tiny run per engine: the default (a pool of 2 on a 2-core machine), a pool of 3
    (one worker per client: another assignment of clients to workers), in-process. The
    model card's audit is off: it is the same code on every engine and costs seconds."""
    from hydra import compose, initialize_config_module

    from fedlab.config.schema import register_configs
    from fedlab.run import run_experiment

    register_configs()
    out = {}
    for name, extra in {
        "default": [],
        "pool3": ["simulation=pool", "simulation.workers=3"],
        "inprocess": ["simulation=inprocess"],
    }.items():
        with initialize_config_module(config_module="fedlab.conf", version_base="1.3"):
            raw = compose(config_name="config", overrides=[*TINY, *QUIET, *extra])
        run_dir = tmp_path_factory.mktemp(name)
        out[name] = run_experiment(raw, run_dir) | {"dir": run_dir}
    return out


def test_every_engine_gives_bit_identical_accuracy_and_loss(runs) -> None:
    reference = runs["inprocess"]
    for name in ("default", "pool3"):
        run = runs[name]
        assert run["status"] == "completed", name
        assert (run["accuracy"], run["loss"]) == (reference["accuracy"], reference["loss"]), name
        assert (run["federated_accuracy"], run["federated_loss"]) == (
            reference["federated_accuracy"], reference["federated_loss"]
        ), name
        # every client's reported train loss too, whichever worker trained it
        ours = {(r["round"], r["client"], r["phase"]): r.get("train_loss")
                for r in read_csv(run["dir"] / "clients.csv")}  # fmt: skip
        theirs = {(r["round"], r["client"], r["phase"]): r.get("train_loss")
                  for r in read_csv(reference["dir"] / "clients.csv")}  # fmt: skip
        assert ours == theirs, name


def test_the_default_engine_line_is_said_once(runs, caplog) -> None:
    sim = SimulationConfig()
    with caplog.at_level("INFO", logger="fedlab"):
        auto.announce(sim, 3)
        assert auto.resolve(sim, 3).backend in ("pool", "inprocess")
    said = [r.getMessage() for r in caplog.records if "engine " in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("fedlab: engine ")


# --- the pool's faults --------------------------------------------------------------------


def _fault_app() -> ClientApp:
    """Partition 1 kills its worker (SIGKILL), partition 2 hangs; the others answer their
    partition id as arrays (through shared memory) and count their calls in the Context."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        pid = int(context.node_config["partition-id"])
        mode = msg.content["config"].get("fault", "")
        if pid == 1 and mode:
            os.kill(os.getpid(), signal.SIGKILL)
        if pid == 2 and mode:
            time.sleep(60)
        calls = int(context.state["calls"]["n"]) + 1 if "calls" in context.state else 1
        context.state["calls"] = ConfigRecord({"n": calls})
        content = RecordDict({
            "arrays": ArrayRecord({"w": Array(np.full((64, 32), pid, dtype=np.float32))}),
            "metrics": MetricRecord({"pid": pid, "pids": os.getpid(), "calls": calls}),
        })  # fmt: skip
        return Message(content, reply_to=msg)

    return app


def _round(grid: PoolGrid, fault: bool, timeout: float) -> dict[int, Message]:
    messages = [
        Message(RecordDict({
            "arrays": ArrayRecord({"w": Array(np.zeros((64, 32), dtype=np.float32))}),
            "config": ConfigRecord({"fault": "yes" if fault else ""}),
        }), dst_node_id=node, message_type="train")
        for node in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(messages, timeout=timeout)
    pid = {node: int(c.node_config["partition-id"]) for node, c in grid.contexts.items()}
    return {pid[r.metadata.src_node_id]: r for r in replies}


def test_a_killed_or_hung_worker_is_an_error_reply_and_is_replaced() -> None:
    grid = PoolGrid(_fault_app(), 4, workers=2)
    try:
        started = time.monotonic()
        replies = _round(grid, fault=True, timeout=3.0)
        took = time.monotonic() - started
        assert sorted(replies) == [0, 1, 2, 3]  # every client answered, two with errors
        assert "SIGKILL" in replies[1].error.reason and "died" in replies[1].error.reason
        assert "no reply within 3 s" in replies[2].error.reason
        assert 3.0 <= took < 10, took  # the round timeout, not the client's 60 s
        for pid in (0, 3):
            arrays = replies[pid].content["arrays"]["w"].numpy()
            assert arrays.shape == (64, 32) and (arrays == pid).all()  # via shared memory
        assert grid.replaced == 2 and all(w.process.is_alive() for w in grid.workers)
        # the run goes on: the replacements serve the next round, the Context state survives
        again = _round(grid, fault=False, timeout=30.0)
        assert all(not r.has_error() for r in again.values()) and len(again) == 4
        assert int(again[0].content["metrics"]["calls"]) == 2
        assert int(again[2].content["metrics"]["calls"]) == 1  # its first call never came back
    finally:
        grid.close()
    assert not grid.workers


def test_a_client_hung_past_the_round_timeout_is_recorded_as_failed(
    compose_cfg, tmp_path: Path
) -> None:
    """A whole run on the pool in which partition 1 hangs in round 1: that client is failed
    in clients.csv, and the run completes with the others."""
    from fedlab.config.experiment import Experiment
    from fedlab.fl.client_app import build_client_app
    from fedlab.fl.server_app import run_server
    from fedlab.run import _client_spec, open_record
    from fedlab.trackers.base import RunContext
    from fedlab.trackers.registry import Trackers

    exp = Experiment.from_config(
        compose_cfg(*TINY, "simulation=pool", "simulation.round_timeout_s=4")
    )
    fed, _ = exp.prepare()
    fed.save(tmp_path / "fed.npz")
    real = build_client_app(_client_spec(exp, tmp_path / "fed.npz", tmp_path / "state"))
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        if int(context.node_config["partition-id"]) == 1 and msg.content["config"][
            "server-round"
        ] == 1:
            time.sleep(60)
        return real(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context) -> Message:
        return real(msg, context)

    @app.query()
    def query(msg: Message, context) -> Message:
        return real(msg, context)

    record = open_record(exp, tmp_path / "run")
    record.start("{}", {"rounds_completed": 0})
    trackers = Trackers.build(RunContext(exp, fed, record.dir))
    grid = PoolGrid(app, exp.cfg.num_clients, workers=2)
    try:
        run_server(grid, exp, fed, record, trackers, None)
    finally:
        grid.close()
    record.update(**trackers.close())
    assert record.results["rounds_completed"] == 2 and grid.replaced == 1
    rows = read_csv(record.dir / "clients.csv")
    hung = [r for r in rows if r["round"] == "1" and r["client"] == "1" and r["phase"] == "train"]
    assert len(hung) == 1 and hung[0]["status"] == "failed"
    assert "round_timeout_s" in hung[0]["error"]
    ok = [r for r in rows if r["round"] == "2" and r["phase"] == "train"]
    assert {r["status"] for r in ok} == {"ok"} and len(ok) == 3
    assert json.loads((record.dir / "results.json").read_text())["rounds_completed"] == 2


def test_evaluations_sharing_one_module_give_what_a_fresh_module_gives(
    compose_cfg, tmp_path: Path
) -> None:
    """Clients evaluate in one module per process (fedlab.fl.client_app._reader); messages
    with different global models, interleaved across clients and after a training message,
    each give the figures of a fresh model holding that message's weights (the module is not
    reloaded for the same bytes again, and is for a model differing in one weight)."""
    import torch

    from fedlab.config.experiment import Experiment
    from fedlab.engines.inprocess import InProcessGrid
    from fedlab.fl.client_app import build_client_app
    from fedlab.fl.model import build_model
    from fedlab.fl.training import evaluate
    from fedlab.run import _client_spec

    exp = Experiment.from_config(compose_cfg(*TINY))
    fed, _ = exp.prepare()
    fed.save(tmp_path / "fed.npz")
    grid = InProcessGrid(
        build_client_app(_client_spec(exp, tmp_path / "fed.npz", tmp_path / "state")), 3
    )
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(build_model(exp.cfg.model, fed.input_shape, fed.num_classes))
    models.append(copy.deepcopy(models[0]))  # model 0 with a single weight changed
    with torch.no_grad():
        next(models[2].parameters()).view(-1)[0] += 1e-3
    config = {"server-round": 1, "local-epochs": 1.0, "lr": 0.1, "batch-size": 8,
              "optimizer": "sgd", "momentum": 0.0, "weight-decay": 0.0}  # fmt: skip

    def send(kind: str, which: int, node: int) -> Message:
        content = RecordDict({"arrays": ArrayRecord(models[which].state_dict()),
                              "config": ConfigRecord(config)})  # fmt: skip
        reply = grid.reply(Message(content, dst_node_id=node, message_type=kind))
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        return reply

    got = {}
    sequence = [("evaluate", 0, 1), ("evaluate", 1, 2), ("train", 1, 3),
                ("evaluate", 1, 1), ("evaluate", 0, 2), ("evaluate", 0, 1),
                ("evaluate", 2, 1), ("evaluate", 0, 3)]  # fmt: skip
    for kind, which, node in sequence:
        reply = send(kind, which, node)
        if kind == "evaluate":
            metrics = reply.content["metrics"]
            got.setdefault((which, node), []).append((metrics["loss"], metrics["accuracy"]))
    for (which, node), figures in got.items():
        fresh = build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
        fresh.load_state_dict(models[which].state_dict())
        expected = evaluate(fresh, fed.client(node - 1)[1])
        assert all(f == expected for f in figures), (which, node, figures, expected)


def test_the_cores_the_rounds_leave_idle(monkeypatch) -> None:
    """Where work forked beside the rounds (the audit's imports) costs the clients nothing:
    in-process clients leave every core but one; a pool as large as the machine, none."""
    monkeypatch.setattr(auto, "usable_cores", lambda: 4)
    assert auto.Choice("inprocess", 1, "").spare_cores == 3
    assert auto.Choice("pool", 2, "").spare_cores == 1
    assert auto.Choice("pool", 4, "").spare_cores == 0
    assert auto.Choice("ray", 0, "").spare_cores == 0
    monkeypatch.setattr(auto, "usable_cores", lambda: 1)
    assert auto.Choice("inprocess", 1, "").spare_cores == 0


def test_the_grid_sends_the_longest_jobs_first_and_returns_replies_by_partition() -> None:
    """Examples x epochs decide the send order (LPT: the pool's workers end the round
    sooner); what the strategy gets back stays sorted by partition id."""
    from fedlab.engines.inprocess import InProcessGrid
    from fedlab.fl.grid import FedlabGrid
    from fedlab.fl.schedule import Scheduler

    served: list[int] = []
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        served.append(int(context.node_config["partition-id"]))
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    sizes = {0: 10, 1: 50, 2: 30, 3: 5, 4: 20}
    scheduler = Scheduler(
        seed=0, num_clients=5, fraction_train=1.0, min_train_clients=1, fraction_evaluate=0.0,
        local_epochs=2, straggler_fraction=0.0, straggler_policy="drop", failure_rate=0.0,
    )  # fmt: skip
    grid = FedlabGrid(
        InProcessGrid(app, 5, node_ids=[50, 40, 30, 20, 10]), scheduler,
        examples=lambda pid, phase: sizes[pid],
    )  # fmt: skip
    grid.connect(5, timeout_s=5)
    nodes = grid.view(1, "train").get_node_ids()
    messages = [
        Message(RecordDict({
            "arrays": ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))}),
            "config": ConfigRecord({"server-round": 1}),
        }), dst_node_id=node, message_type="train")
        for node in nodes
    ]  # fmt: skip
    replies = grid.send_and_receive(messages)
    assert served == [1, 2, 4, 0, 3]  # longest first (equal epochs: by examples)
    assert [grid.partition_of[r.metadata.src_node_id] for r in replies] == [0, 1, 2, 3, 4]
