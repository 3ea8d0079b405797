"""The server pipeline end to end, in-process: schedule -> Grid wrapper -> Flower strategy ->
ClientApp -> record. (The same code under Ray is tested once in test_simulation.py.)"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlab.fl.client_app import build_client_app
from fedlab.fl.model import build_model
from fedlab.fl.schedule import Scheduler
from fedlab.record.run_dir import load_model, read_csv

SMALL = ("num_clients=4", "num_rounds=3", "model.hidden=[16]", "partition=iid")
STRATEGIES = [
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedavgm",
    "qfedavg",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
]


def _serialized_bytes(exp, fed) -> int:
    """The model as Flower serializes it: each tensor as an .npy buffer, plus its key."""
    model = build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
    total, raw = 0, 0
    for key, tensor in model.state_dict().items():
        buffer = io.BytesIO()
        np.save(buffer, tensor.numpy(), allow_pickle=False)
        total += len(buffer.getvalue()) + len(key)
        raw += tensor.numel() * tensor.element_size()
    assert raw < total < raw + 256 * len(model.state_dict())  # headers are small
    return total


def test_record_matches_an_independent_evaluation(run_inprocess) -> None:
    exp, fed, record, _ = run_inprocess(*SMALL)
    rounds = read_csv(record.dir / "rounds.csv")
    assert [int(r["round"]) for r in rounds] == [0, 1, 2, 3]
    # Recompute the final accuracy from the saved weights, independently of fedlab's loop.
    model = build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
    model.load_state_dict(load_model(record.dir / "model.safetensors"))
    with torch.no_grad():
        logits = model(torch.from_numpy(fed.test.x))
    accuracy = float((logits.argmax(1).numpy() == fed.test.y).mean())
    loss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(fed.test.y)))
    assert record.results["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert record.results["loss"] == pytest.approx(loss, rel=1e-6)
    assert float(rounds[-1]["central_accuracy"]) == pytest.approx(accuracy)
    assert accuracy > float(rounds[0]["central_accuracy"])  # it learned something


def test_bytes_are_model_size_times_messages(run_inprocess) -> None:
    exp, fed, record, grid = run_inprocess(*SMALL)
    size = _serialized_bytes(exp, fed)
    with_arrays = [m for m in grid.sent if m.metadata.message_type in ("train", "evaluate")]
    trains = sum(m.metadata.message_type == "train" for m in grid.sent)
    assert record.results["communication"]["bytes_down"] == size * len(with_arrays)
    assert record.results["communication"]["bytes_up"] == size * trains
    rows = read_csv(record.dir / "clients.csv")
    assert all(int(r["bytes_down"]) == size for r in rows)


def test_same_config_same_result_whatever_the_reply_order(run_inprocess) -> None:
    _, _, first, _ = run_inprocess(*SMALL, reverse=True)
    _, _, second, _ = run_inprocess(*SMALL, reverse=False)
    assert first.results["accuracy"] == second.results["accuracy"]
    assert first.results["loss"] == second.results["loss"]
    a, b = load_model(first.dir / "model.safetensors"), load_model(second.dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stragglers_and_failures_follow_the_seeded_schedule(run_inprocess) -> None:
    overrides = (
        "num_clients=10",
        "num_rounds=3",
        "model.hidden=[16]",
        "partition=iid",
        "strategy=fedprox",
        "client.local_epochs=4",
        "stragglers.fraction=0.5",
        "failures.rate=0.3",
    )
    exp, _, record, _ = run_inprocess(*overrides)
    rows = read_csv(record.dir / "clients.csv")
    rounds = read_csv(record.dir / "rounds.csv")[1:]
    for r in rounds:
        n = int(r["clients_sampled"])
        # FedProx's rule: active = round(n * (1 - drop_percent)); the rest straggle.
        assert int(r["clients_straggled"]) == n - round(n * 0.5)
        mine = [row for row in rows if row["round"] == r["round"] and row["phase"] == "train"]
        failed = [row for row in mine if row["status"] == "failed"]
        assert len(failed) == int(r["clients_failed"])
        assert all("injected failure" in row["error"] for row in failed)
        assert int(r["clients_succeeded"]) + len(failed) == int(r["clients_trained"]) == n
        ok_epochs = sorted(float(row["local_epochs"]) for row in mine if row["status"] == "ok")
        partial = [e for e in ok_epochs if e < 4]
        assert all(e in (1.0, 2.0, 3.0) for e in partial)  # FedProx: 1..E-1 epochs
    plan = exp.scheduler().plan(2)
    assert int(rounds[1]["clients_failed"]) == len(plan.failing)
    assert sum(int(r["clients_failed"]) for r in rounds) > 0  # 30% of 30 client-rounds


def test_fedavg_drops_stragglers(run_inprocess) -> None:
    _, _, record, grid = run_inprocess(
        "num_clients=10",
        "num_rounds=2",
        "model.hidden=[16]",
        "partition=iid",
        "stragglers.fraction=0.3",
    )
    rows = [r for r in read_csv(record.dir / "clients.csv") if r["phase"] == "train"]
    dropped = [r for r in rows if r["status"] == "dropped"]
    assert len(dropped) == 2 * (10 - round(10 * 0.7))
    assert all(int(r["bytes_down"]) == 0 for r in dropped)  # never sent anything
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(trains) == 2 * 7


def _bad_app(kind: str):
    def factory(spec):
        real = build_client_app(spec)
        app = ClientApp()
        app.query()(real)  # identify like a real client

        @app.train()
        def train(msg: Message, context) -> Message:
            state = msg.content["arrays"].to_torch_state_dict()
            if kind == "nan":
                state = {k: torch.full_like(v, math.nan) for k, v in state.items()}
            elif kind == "shape":
                key = next(iter(state))
                state[key] = torch.zeros(3, 3)
            elif kind == "raise":
                raise ValueError("client bug")
            metrics = MetricRecord({"num-examples": 10, "train_loss": 1.0})
            return Message(
                RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg
            )

        return app

    return factory


def test_malformed_updates_are_failures_and_left_out(run_inprocess) -> None:
    _, _, record, _ = run_inprocess(
        *SMALL,
        "dataset.client_test_fraction=0",
        app_override={1: _bad_app("nan"), 2: _bad_app("shape"), 3: _bad_app("raise")},
    )
    rows = {int(r["client"]): r for r in read_csv(record.dir / "clients.csv") if r["round"] == "1"}
    assert "NaN" in rows[1]["error"] and rows[1]["status"] == "failed"
    assert "shape" in rows[2]["error"] and rows[2]["status"] == "failed"
    assert "client bug" in rows[3]["error"] and rows[3]["status"] == "failed"
    assert rows[0]["status"] == "ok"
    weights = load_model(record.dir / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert record.results["accuracy"] > 0.3  # client 0 alone still trains a model


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_trains(run_inprocess, strategy: str) -> None:
    _, _, record, _ = run_inprocess(
        f"strategy={strategy}",
        "num_clients=7",
        "num_rounds=2",
        "model.hidden=[16]",
        "partition=iid",
    )
    rounds = read_csv(record.dir / "rounds.csv")
    assert int(rounds[-1]["clients_succeeded"]) == 7
    assert np.isfinite(record.results["loss"])
    assert float(rounds[-1]["central_loss"]) < float(rounds[0]["central_loss"])


def test_scheduler_is_shared_by_strategies() -> None:
    common = dict(
        seed=3,
        num_clients=30,
        fraction_train=0.34,
        min_train_clients=1,
        fraction_evaluate=0.0,
        local_epochs=20,
        straggler_fraction=0.5,
        failure_rate=0.0,
    )
    drop = Scheduler(straggler_policy="drop", **common)
    partial = Scheduler(straggler_policy="partial", **common)
    for r in range(1, 6):
        assert drop.plan(r).sampled == partial.plan(r).sampled
        assert drop.plan(r).stragglers == partial.plan(r).stragglers


def test_hybrid_quantum_model_trains_federatedly(run_inprocess) -> None:
    """model=qnn: the sandbox's hybrid QNN through the whole pipeline (3 clients, 2 rounds)."""
    _, _, record, _ = run_inprocess(
        "model=qnn",
        "dataset=iris",
        "dataset.binary=true",
        "num_clients=3",
        "num_rounds=2",
        "partition=iid",
        "client.lr=0.3",
        "client.local_epochs=5",
    )
    rounds = read_csv(record.dir / "rounds.csv")
    assert float(rounds[-1]["central_loss"]) < float(rounds[0]["central_loss"])
    assert float(rounds[-1]["central_accuracy"]) >= float(rounds[0]["central_accuracy"])
    assert record.results["accuracy"] >= 0.9


def test_clients_that_never_reply_are_failures(run_inprocess) -> None:
    _, _, record, _ = run_inprocess(*SMALL, drop={2})
    rows = [
        r
        for r in read_csv(record.dir / "clients.csv")
        if r["client"] == "2" and r["phase"] == "train"
    ]
    assert len(rows) == 3 and all(r["status"] == "failed" for r in rows)
    assert all(r["error"] == "no reply within 600 s" for r in rows)
    assert record.results["accuracy"] > 0.5  # the other clients carried the run


def test_a_crash_marks_the_record_failed_and_keeps_it(compose_cfg, tmp_path, monkeypatch) -> None:
    from fedlab.run import RunFailed, run_experiment

    def crash(*args, **kwargs):
        raise RuntimeError("the simulation engine broke")

    monkeypatch.setattr("fedlab.engines.simulation.simulate", crash)
    with pytest.raises(RunFailed, match="the simulation engine broke"):
        run_experiment(compose_cfg(*SMALL, "carbon=off"), tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed"
    assert results["error"] == "RuntimeError: the simulation engine broke"
    for name in ("config.yaml", "partition.png", "model_card.md"):
        assert (tmp_path / "run" / name).exists()


def test_clients_without_test_examples_are_not_asked_to_evaluate(run_inprocess) -> None:
    """1000 clients on 1437 examples: one or two each, none kept for testing on most."""
    _, fed, record, grid = run_inprocess("num_clients=1000", "num_rounds=1", "partition=iid",
                                         "strategy.fraction_train=0.01",
                                         "strategy.fraction_evaluate=0.01",
                                         "model.hidden=[8]")
    evaluated = [m for m in grid.sent if m.metadata.message_type == "evaluate"]
    holders = {pid for pid, idx in enumerate(fed.client_test) if len(idx)}
    assert all(grid_pid in holders for grid_pid in
               (int(r["client"]) for r in read_csv(record.dir / "clients.csv")
                if r["phase"] == "evaluate"))
    assert len(evaluated) == min(10, len(holders))
    assert record.results["rounds_completed"] == 1
