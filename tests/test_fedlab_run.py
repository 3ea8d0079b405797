"""``fedlab-run`` as a user meets it: help, --cfg job, and bad input that ends in one line,
exit code 2, no traceback, and an existing record left untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedlab.cli import condense

EXE = Path(sys.executable).parent / "fedlab-run"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _fingerprint(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture()
def finished_run(tmp_path: Path) -> Path:
    """A directory holding a completed run's record (which nothing may touch)."""
    run = tmp_path / "done"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"status": "completed", "accuracy": 0.93}))
    (run / "rounds.csv").write_text("round,central_accuracy\n0,0.1\n1,0.93\n")
    (run / "config.yaml").write_text("seed: 0\n")
    return run


def test_help_lists_the_groups(tmp_path: Path) -> None:
    result = _run("--help", cwd=tmp_path)
    assert result.returncode == 0
    for group in ("dataset:", "partition:", "model:", "strategy:", "client:", "simulation:",
                  "privacy:", "carbon:"):
        assert group in result.stdout


def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = _run("strategy=fedprox", "num_clients=30", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0
    assert "num_clients: 30" in result.stdout and "FedProx" in result.stdout
    assert not list(tmp_path.iterdir())  # printing the config writes nothing


BAD = [
    (["strategy=nope"], "strategy: unknown option 'nope'; allowed: bulyan"),
    (["dataset=imagenet"], "dataset: unknown option 'imagenet'"),
    (["num_clients=0"], "num_clients: must be >= 1"),
    (["num_clients=abc"], "num_clients: expected integer, got 'abc'"),
    (["num_clients=5000"], "num_clients: 5000 clients but dataset 'digits' has only 1437"),
    (["strategy.fraction_train=1.5"], "strategy.fraction_train: must be in (0, 1]"),
    (["partition.alpha=0"], "partition.alpha: must be > 0"),
    (["client.lr=fast"], "client.lr: expected float, got 'fast'"),
    (["no_such_key=1"], "no_such_key: unknown key"),
    (["privacy=central", "strategy=krum"],
     "strategy.aggregate: central DP cannot be combined with 'krum'"),
    (["carbon.country=XYZ"], "carbon.country:"),
    (["dataset=synthetic", "partition=natural", "num_clients=10", "dataset.num_users=30"],
     "num_clients: partition=natural gives one client per user"),
    (["partition=natural"], "partition: natural partitioning needs user ids"),
    (["privacy=local", "privacy.delta=2"], "privacy.delta: delta must be in the open interval"),
    (["privacy=local", "privacy.noise_multiplier=-1"], "privacy.noise_multiplier:"),
    (["carbon.pue=0.5"], "carbon.pue: must be >= 1"),
    (["simulation.client_cpus=0"], "simulation.client_cpus: must be > 0"),
    (["failures.rate=1.5"], "failures.rate: must be in [0, 1)"),
    (["stragglers.fraction=1"], "stragglers.fraction: must be in [0, 1)"),
    (["client.batch_size=0"], "client.batch_size: must be >= 1"),
    (["model.hidden=[0]"], "model: hidden layer sizes must be >= 1, got [0]"),
    (["dataset.test_fraction=0"], "dataset.test_fraction: must be in (0, 1)"),
    (["devices.mix=tablet"], "devices.mix: unknown 'tablet'; choose from"),
    (["devices.deadline_s=1"], "devices.deadline_s: needs devices to time the clients"),
    (["-m", "--cfg", "job"], "Only one of --run, --multirun, --cfg"),
]


@pytest.mark.parametrize(("args", "expected"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line(args: list[str], expected: str, finished_run: Path) -> None:
    before = _fingerprint(finished_run)
    target = finished_run.parent / "new"
    result = _run(*args, f"hydra.run.dir={target}", cwd=finished_run.parent)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedlab-run: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert _fingerprint(finished_run) == before
    assert not (target / "results.json").exists()  # nothing was started


def test_a_used_run_directory_is_refused(finished_run: Path) -> None:
    before = _fingerprint(finished_run)
    result = _run(f"hydra.run.dir={finished_run}", cwd=finished_run.parent)
    assert result.returncode == 2
    assert "already holds another run's record (status: completed)" in result.stderr
    assert _fingerprint(finished_run) == before


def test_condense_keeps_unknown_messages() -> None:
    assert condense("Some new Hydra error\n\nSet the environment variable HYDRA_FULL_ERROR=1") \
        == "Some new Hydra error"


def test_rerun_of_an_unfinished_attempt_moves_it_aside(tmp_path: Path, compose_cfg) -> None:
    from omegaconf import OmegaConf

    from fedlab.record.lifecycle import claim

    cfg = compose_cfg("num_rounds=1")
    text = OmegaConf.to_yaml(cfg, resolve=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(text)
    (run / "results.json").write_text(json.dumps({"status": "interrupted"}))
    (run / "rounds.csv").write_text("round\n0\n")
    assert claim(run, text) is None  # run it again ...
    kept = run / "attempts" / "1"  # ... after keeping the old attempt
    assert json.loads((kept / "results.json").read_text())["status"] == "interrupted"
    assert (kept / "rounds.csv").read_text() == "round\n0\n"
    assert sorted(p.name for p in run.iterdir()) == ["attempts"]
    (run / "results.json").write_text(json.dumps({"status": "completed", "accuracy": 1.0}))
    (run / "config.yaml").write_text(text)
    assert claim(run, text) == {"status": "completed", "accuracy": 1.0}  # skipped


def test_resume_refuses_what_it_cannot_continue(finished_run: Path) -> None:
    before = _fingerprint(finished_run)
    done = _run(f"resume={finished_run}", cwd=finished_run.parent)
    assert done.returncode == 2 and "holds a completed run of 10 rounds; nothing to resume" in (
        done.stderr)
    changed = _run(f"resume={finished_run}", "seed=3", cwd=finished_run.parent)
    assert changed.returncode == 2
    assert "resume: a resumed run keeps its own config (only num_rounds may grow); remove " \
        "seed=3" in changed.stderr
    longer = _run(f"resume={finished_run}", "num_rounds=20", cwd=finished_run.parent)
    assert longer.returncode == 2 and "has no checkpoint" in longer.stderr
    assert _fingerprint(finished_run) == before


def test_default_run_directory_is_outputs_date_time() -> None:
    """Without hydra.run.dir the run goes to ./outputs/<date>/<time> (resume=null); a run
    rejected there leaves nothing (the next test)."""
    import re

    from hydra import compose, initialize_config_module

    from fedlab.config.schema import register_configs

    register_configs()
    with initialize_config_module(config_module="fedlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
        assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", cfg.hydra.run.dir)


def test_a_rejected_run_leaves_no_directory_behind(tmp_path: Path) -> None:
    """Hydra makes outputs/<date>/<time> before fedlab sees the config; a rejected run removes
    it again (nine empty folders in one trial before), and never a directory that was there."""
    result = _run("num_clients=0", cwd=tmp_path)
    assert result.returncode == 2 and not list(tmp_path.iterdir())
    sweep = _run("-m", "num_clients=0", "hydra.sweep.dir=multirun/x", cwd=tmp_path)
    assert sweep.returncode == 2 and not list(tmp_path.iterdir())
    kept = tmp_path / "kept"
    kept.mkdir()
    assert _run("num_clients=0", f"hydra.run.dir={kept}", cwd=tmp_path).returncode == 2
    assert kept.is_dir()  # it existed before: not ours to remove


def test_an_unwritable_run_directory_is_one_line_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    result = _run(f"hydra.run.dir={tmp_path / 'a_file' / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fedlab-run: error: hydra.run.dir: cannot create or write {tmp_path}/a_file/run: "
        "Not a directory; choose a writable directory"]


def test_qnn_on_binary_iris_from_the_readme_runs(tmp_path: Path) -> None:
    """`fedlab-run model=qnn dataset=iris dataset.binary=true` used to end in "partition: The
    max number of attempts (10) was reached": iris now recommends 3 clients (and small batches),
    and the partition error names num_clients and a value that works."""
    run_dir = tmp_path / "run"
    result = _run("model=qnn", "dataset=iris", "dataset.binary=true", "num_rounds=2",
                  "simulation=inprocess", "carbon=off", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["accuracy"] >= 0.9
    assert results["recommended"]["settings"]["num_clients"]["applied"] is True
    too_many = _run("dataset=iris", "dataset.binary=true", "num_clients=10", cwd=tmp_path)
    assert too_many.returncode == 2
    assert too_many.stderr.startswith("fedlab-run: error: num_clients: the partition cannot give "
                                      "each of 10 clients enough of the 70 training examples; "
                                      "num_clients=4 works")
