"""Per-client state across rounds and restarts, personalized evaluation, honest costs and
the combinations fedlab refuses, for the stateful algorithms (fedlab.fl.algorithms)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_simulation import _checkpoint_round

from fedlab.config.errors import ConfigError
from fedlab.fl.client_state import ClientStateStore

EXE = Path(sys.executable).parent / "fedlab-run"
SMALL = ("dataset=digits", "num_clients=4", "num_rounds=3", "model.hidden=[16]",
         "strategy.fraction_train=0.5")


def _rows(run_dir: Path, phase: str) -> list[dict[str, str]]:
    with (run_dir / "clients.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["phase"] == phase]


def test_store_reads_the_newest_version_before_the_round_and_keeps_two(tmp_path) -> None:
    store = ClientStateStore(tmp_path)
    assert store.load(3, before_round=5) == {}
    for r in (1, 4, 6):
        store.save(3, r, {"c": torch.full((2,), float(r))})
    assert sorted(p.name for p in (tmp_path / "3").iterdir()) == ["4.safetensors", "6.safetensors"]
    assert store.load(3, before_round=6)["c"].tolist() == [4.0, 4.0]  # round 6 redone: reads 4
    assert store.load(3, before_round=7)["c"].tolist() == [6.0, 6.0]
    assert store.clients() == [3]
    (tmp_path / "3" / ".7.safetensors.0a1b2c.safetensors").write_bytes(b"")  # a killed write
    assert store.load(3, before_round=9)["c"].tolist() == [6.0, 6.0]


@pytest.mark.parametrize("strategy", ["scaffold", "ditto"])
def test_killed_and_resumed_run_ends_identical(tmp_path, run_inprocess, strategy) -> None:
    """SIGKILL during a run, `fedlab-run resume=DIR`: the same final model, the same
    clients' state files and the same accuracies as the run never interrupted."""
    args = [*SMALL, "num_rounds=40", f"strategy={strategy}", "simulation=inprocess",
            "carbon=off", "~trackers.audit"]
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [str(EXE), *args, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while _checkpoint_round(run_dir / "checkpoint.safetensors") < 3:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
    done = subprocess.run([str(EXE), f"resume={run_dir}"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["status"] == "completed" and len(resumed["resumed"]) == 1

    _, _, never, _ = run_inprocess(*args[:-2])
    assert resumed["accuracy"] == never.results["accuracy"]
    assert resumed["personalized_accuracy"] == never.results["personalized_accuracy"]
    ours, theirs = (load_file(str(d / "model.safetensors")) for d in (run_dir, never.dir))
    assert all(np.array_equal(ours[k], theirs[k]) for k in theirs)
    for pid in ClientStateStore(never.dir / "client_state").clients():
        newest = max((never.dir / "client_state" / str(pid)).iterdir(), key=lambda p: int(p.stem))
        mine = load_file(str(run_dir / "client_state" / str(pid) / newest.name))
        ref = load_file(str(newest))
        assert all(np.array_equal(mine[k], ref[k]) for k in ref), (pid, newest.name)


def test_personalized_accuracy_is_recorded_per_client_and_summarised(run_inprocess) -> None:
    """Fine-tuning changes what each client evaluates; the summary is the clients' own
    figures (mean, worst 10 %, spread), recomputed here from clients.csv."""
    _, _, record, _ = run_inprocess(*SMALL, "strategy=finetune")
    rows = [r for r in _rows(record.dir, "evaluate") if int(r["round"]) == 3]
    personal = sorted(float(r["personal_accuracy"]) for r in rows)
    global_ = [float(r["accuracy"]) for r in rows]
    assert personal != sorted(global_)  # the fine-tuned models differ from the global one
    section = record.results["personalized_accuracy"]
    assert section["clients"] == len(rows) == 4
    assert section["mean"] == pytest.approx(np.mean(personal))
    assert section["worst_10pct"] == pytest.approx(personal[0])  # ceil(0.1 * 4) = 1 client
    assert section["std"] == pytest.approx(np.std(personal))
    assert section["global"]["mean"] == pytest.approx(np.mean(global_))
    last = record.rounds[-1]
    weights = [int(r["num_examples"]) for r in rows]
    accs = [float(r["personal_accuracy"]) for r in rows]
    assert last["personalized_accuracy"] == pytest.approx(np.average(accs, weights=weights))


def test_extra_bytes_are_metered(run_inprocess) -> None:
    """SCAFFOLD sends its control variate both ways (twice FedAvg's training bytes); FedPer
    uploads only the base (the model's bytes minus its head's)."""
    def train_bytes(*overrides: str) -> tuple[int, int]:
        _, _, record, _ = run_inprocess(*SMALL, *overrides)
        rows = [r for r in _rows(record.dir, "train") if r["status"] == "ok"]
        return int(rows[0]["bytes_down"]), int(rows[0]["bytes_up"])

    down, up = train_bytes("strategy=fedavg", "client.momentum=0.0")
    assert train_bytes("strategy=scaffold") == (2 * down, 2 * up)
    from flwr.app import ArrayRecord

    from fedlab.fl.model import MLP

    weights = MLP((64,), 10, hidden=[16]).state_dict()  # digits: 64 features, 10 classes
    base = ArrayRecord({k: v for k, v in weights.items() if not k.startswith("net.3.")})
    assert up == ArrayRecord(weights).count_bytes()
    assert train_bytes("strategy=fedper") == (down, base.count_bytes())  # the head stays


@pytest.mark.parametrize(
    ("overrides", "key", "needle"),
    [
        (["strategy=scaffold", "privacy=central"], "strategy.aggregate", "central DP cannot"),
        (["strategy=scaffold", "privacy=local"], "privacy.mode", "control variates"),
        (["strategy=fedbn"], "model.norm", "use model.norm=batch"),
        (["strategy=fednova", "client=adam"], "client.optimizer", "use sgd"),
        (["strategy=fedper", "strategy.client_update.personal_layers=9"],
         "strategy.client_update.personal_layers", "must be in 1..1"),
        (["model.norm=batch", "privacy=local"], "model", "BatchNorm"),
        (["strategy=ditto", "strategy.client_update.lam=-1"], "strategy.client_update", "lam"),
    ],
)
def test_undefined_combinations_are_refused_before_anything_is_written(
    tmp_path, compose_cfg, overrides, key, needle
) -> None:
    from fedlab.run import run_experiment

    with pytest.raises(ConfigError) as err:
        run_experiment(compose_cfg(*SMALL, *overrides), tmp_path / "run")
    assert err.value.key == key and needle in str(err.value)
    assert not (tmp_path / "run").exists()
