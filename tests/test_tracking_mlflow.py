"""``tracking=mlflow``: runs read back from a real MLflow store with ``MlflowClient``.

One tracked run that fails at round 3 and is resumed (so one fixture checks the resumed run's
single MLflow run and everything an MLflow run holds), one two-job multirun (a parent and its
children), a run against a server that is not there, the back-fill of the sweep into a new
store (and again: nothing twice), and the worker's answer to an unwritable store.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")

from mlflow import MlflowClient

EXE = Path(sys.executable).parent
PLUGINS = Path(__file__).resolve().parent / "plugins"
SMALL = ("simulation=inprocess", "carbon=off", "dataset=iris", "num_clients=3")


def _fedlab_run(*args: str, cwd: Path, env: dict[str, str] | None = None):
    full = {**os.environ, "PYTHONPATH": str(PLUGINS), **(env or {})}
    if not env:
        full.pop("WALLCLOCK_FAIL_AT_ROUND", None)
    return subprocess.run([str(EXE / "fedlab-run"), *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=600, check=False)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _numeric_columns(rows: list[dict[str, str]]) -> dict[str, list[tuple[int, float]]]:
    """Every column of ``rounds.csv`` but ``round`` as (round, value) for its non-empty,
    numeric cells: what the metric histories must be."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, text in row.items():
            if key == "round" or text == "":
                continue
            try:
                value = float(text)
            except ValueError:
                continue
            out.setdefault(key, []).append((int(row["round"]), value))
    return out


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return len(a) == len(b) and all(
        sa == sb and (va == vb or (math.isnan(va) and math.isnan(vb)))
        for (sa, va), (sb, vb) in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tracked run (with a user's tracker, tests/plugins/wallclock_tracker.py) that fails
    at round 3 of 4, after round 2's checkpoint, and is then resumed to the end."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp}/store/mlruns.db"
    (tmp / "store").mkdir()
    run_dir = tmp / "run"
    args = (*SMALL, "num_rounds=4", "tracking=mlflow", f"tracking.uri={uri}",
            "tracking.experiment=tests", "+trackers.wallclock._target_=wallclock_tracker."
            "WallClockTracker", f"hydra.run.dir={run_dir}")
    broken = _fedlab_run(*args, cwd=tmp, env={"WALLCLOCK_FAIL_AT_ROUND": "3"})
    assert broken.returncode == 1, broken.stderr[-3000:]
    first = json.loads((run_dir / "results.json").read_text())["tracking"]
    assert first["run_id"], first
    done = _fedlab_run(f"resume={run_dir}", cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning" not in done.stderr.lower(), done.stderr[-3000:]
    return run_dir, first["run_id"]


def _client(run_dir: Path) -> tuple[MlflowClient, dict[str, Any]]:
    section = json.loads((run_dir / "results.json").read_text())["tracking"]
    return MlflowClient(tracking_uri=section["uri"]), section


def test_a_resumed_run_is_one_mlflow_run_with_every_round_once(resumed) -> None:
    run_dir, first_id = resumed
    client, section = _client(run_dir)
    assert section["run_id"] == first_id and section["backend"] == "mlflow"
    assert {"uri", "experiment_id", "parent_run_id"} <= set(section)
    runs = client.search_runs([section["experiment_id"]])
    assert [r.info.run_id for r in runs] == [first_id]  # the failed attempt's run, continued
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["fedlab.status"] == "completed"
    expected = _numeric_columns(_rows(run_dir / "rounds.csv"))
    assert {"central_accuracy", "central_loss", "wall_s", "client_rounds"} <= set(expected)
    for key, values in expected.items():
        assert _same(_history(client, first_id, key), values), key
    assert [s for s, _ in _history(client, first_id, "central_accuracy")] == [0, 1, 2, 3, 4]
    results = json.loads((run_dir / "results.json").read_text())
    assert math.isclose(run.data.metrics["final/accuracy"], results["accuracy"])


def test_params_tags_and_artifacts(resumed) -> None:
    import yaml

    from fedlab.record.reader import cell, flatten

    run_dir, run_id = resumed
    client, _ = _client(run_dir)
    run = client.get_run(run_id)
    config = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert run.data.params == {k: cell(v) for k, v in config.items()}
    assert run.data.params["strategy.name"] == "fedavg" and run.data.params["num_rounds"] == "4"
    versions = json.loads((run_dir / "results.json").read_text())["versions"]
    tags = run.data.tags
    assert tags["fedlab.version"] == versions["fedlab"]
    assert tags.get("fedlab.git_commit") == versions["git_commit"]
    if versions["git_dirty"] is not None:
        assert tags["fedlab.git_dirty"] == str(versions["git_dirty"]).lower()
    assert (tags["fedlab.seed"], tags["fedlab.engine"]) == ("0", "inprocess")
    assert (tags["fedlab.dataset"], tags["fedlab.strategy"]) == ("iris", "fedavg")
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model_card.md", "curves.png", "rounds.csv", "results.json", "config.yaml",
            "model.safetensors"} <= artifacts
    assert "checkpoint.safetensors" not in artifacts
    card = (run_dir / "model_card.md").read_text()
    assert "## Experiment tracking" in card and run_id in card


def test_the_logged_model_loads_and_gives_the_recorded_accuracy(resumed, monkeypatch) -> None:
    import mlflow.pytorch
    import torch
    from omegaconf import OmegaConf

    from fedlab.config.experiment import Experiment
    from fedlab.config.schema import FedlabConfig

    monkeypatch.syspath_prepend(str(PLUGINS))  # the run's config names the plugin tracker
    run_dir, run_id = resumed
    client, section = _client(run_dir)
    tags = client.get_run(run_id).data.tags
    assert tags["fedlab.model_format"] == "pt2"  # loading it runs no pickled code
    mlflow.set_tracking_uri(section["uri"])
    model = mlflow.pytorch.load_model(tags["fedlab.model_uri"])
    raw = OmegaConf.merge(OmegaConf.structured(FedlabConfig),
                          OmegaConf.load(run_dir / "config.yaml"))
    fed, _ = Experiment.from_config(raw).prepare()
    with torch.no_grad():
        predicted = model(torch.from_numpy(fed.test.x)).argmax(dim=1).numpy()
    accuracy = float((predicted == fed.test.y).mean())
    assert accuracy == json.loads((run_dir / "results.json").read_text())["accuracy"]


def test_tag_run_tags_the_run_and_warns_without_a_store(resumed, caplog) -> None:
    from fedlab.trackers.tracking.mlflow import tag_run

    run_dir, run_id = resumed
    client, section = _client(run_dir)
    assert tag_run(section, {"gate.verdict": "pass"}) is True
    assert client.get_run(run_id).data.tags["gate.verdict"] == "pass"
    assert tag_run({**section, "uri": f"http://127.0.0.1:{_closed_port()}"}, {"x": "1"}) is False
    assert tag_run({}, {"x": "1"}) is False
    assert sum("cannot tag" in r.getMessage() for r in caplog.records) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("mlflow-sweep")
    uri = f"sqlite:///{tmp}/mlruns.db"
    sweep_dir = tmp / "multirun"
    result = _fedlab_run("-m", *SMALL, "num_rounds=2", "seed=0,1", "tracking=mlflow",
                         f"tracking.uri={uri}", "tracking.log_model=false",
                         f"hydra.sweep.dir={sweep_dir}", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with 2 children" in result.stdout, result.stdout[-2000:]
    return sweep_dir, uri


def test_a_multirun_is_a_parent_with_one_child_per_job(sweep) -> None:
    sweep_dir, uri = sweep
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fedlab").experiment_id])
    parents = [r for r in runs if r.data.tags.get("fedlab.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(r.data.tags["fedlab.seed"] for r in children) == ["0", "1"]
    assert len(runs) == 3 and parents[0].data.tags["fedlab.children"] == "2"
    for job in ("0", "1"):
        section = json.loads((sweep_dir / job / "results.json").read_text())["tracking"]
        assert section["parent_run_id"] == parent
    assert "multirun.yaml" in {a.path for a in client.list_artifacts(parent)}


def test_backfill_logs_a_sweep_once(sweep, tmp_path: Path, capsys) -> None:
    from fedlab.trackers.tracking.backfill import main

    sweep_dir, live_uri = sweep
    uri = f"sqlite:///{tmp_path}/backfill.db"
    main(["log", str(sweep_dir), "--uri", uri, "--experiment", "old", "--no-model"])
    assert "2 runs logged, 0 already there" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("old").experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if r.data.tags.get("fedlab.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    for child in children:
        expected = _numeric_columns(_rows(Path(child.data.tags["fedlab.run_dir"]) / "rounds.csv"))
        for key, values in expected.items():
            assert _same(_history(client, child.info.run_id, key), values), key
    main(["log", str(sweep_dir), "--uri", uri, "--experiment", "old"])
    assert "0 runs logged, 2 already there" in capsys.readouterr().out
    assert len(client.search_runs([experiment])) == 3
    main(["log", str(sweep_dir / "0"), "--uri", live_uri])  # tracked live: already there
    assert "0 runs logged, 1 already there" in capsys.readouterr().out


def test_backfill_refuses_bad_input_in_one_line(tmp_path: Path, capsys) -> None:
    from fedlab.trackers.tracking.backfill import main

    with pytest.raises(SystemExit) as exit_:
        main(["log", str(tmp_path / "nowhere")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedlab-mlflow: error: ") and "nowhere" in err[0]


def test_an_unreachable_server_is_one_warning_and_the_run_goes_on(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = _fedlab_run(*SMALL, "num_rounds=2", "tracking=mlflow",
                         f"tracking.uri=http://127.0.0.1:{_closed_port()}",
                         f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in (result.stdout + result.stderr).splitlines()
                if "cannot be used" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["rounds_completed"] == 2
    assert results["tracking"]["status"] == "unavailable"
    assert "fedlab-mlflow log" in results["tracking"]["warnings"][0]


def test_an_unwritable_store_is_reported_once_by_the_worker(tmp_path: Path) -> None:
    from fedlab.trackers.tracking.worker import serve

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    start = {"op": "start", "uri": f"sqlite:///{blocker}/mlruns.db", "experiment": "x",
             "run_dir": str(run_dir), "resume": False}
    events: list[dict[str, Any]] = []
    lines = [json.dumps(start), json.dumps({"op": "rounds", "through": 1}),
             json.dumps({"op": "publish", "status": "completed"})]
    serve(iter(line + "\n" for line in lines), events.append)
    assert [e["event"] for e in events] == ["error"] and events[0]["op"] == "start"
