"""``fedlab-run resume=DIR num_rounds=N``: a finished run extended to N rounds equals one run
of N rounds from the start (accuracy, loss, epsilon); the record says it was extended; an
extension that would change what already happened is refused. Also the record's provenance
(``versions``, ``startup_s``), written by the same entry point."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import pytest

from fedlab.config.schema import ConfigError
from fedlab.run import run_experiment

BASE = ("simulation=inprocess", "carbon=off", "num_clients=4", "model.hidden=[16]",
        "strategy=fedadam", "privacy=local", "client.local_epochs=1")


def _run(compose_cfg, run_dir: Path, *overrides: str) -> dict:
    return run_experiment(compose_cfg(*BASE, *overrides), run_dir, list(overrides))


def test_extending_a_finished_run_equals_the_longer_run(compose_cfg, tmp_path: Path) -> None:
    short = tmp_path / "short"
    first = _run(compose_cfg, short, "num_rounds=2")
    assert first["status"] == "completed" and first["rounds_completed"] == 2
    extended = run_experiment(compose_cfg(f"resume={short}", "num_rounds=4"), short,
                              [f"resume={short}", "num_rounds=4"])
    straight = _run(compose_cfg, tmp_path / "long", "num_rounds=4")
    assert extended["status"] == "completed" and extended["rounds_completed"] == 4
    assert (extended["accuracy"], extended["loss"]) == (straight["accuracy"], straight["loss"])
    assert extended["privacy"]["epsilon"] == straight["privacy"]["epsilon"]
    assert [(e["from_rounds"], e["to_rounds"]) for e in extended["extended"]] == [(2, 4)]
    assert extended["num_rounds"] == 4 and "num_rounds: 4" in (short / "config.yaml").read_text()
    # Extended and finished again: nothing more to resume without a larger num_rounds.
    with pytest.raises(ConfigError, match=r"resume: .* completed run of 4 rounds"):
        run_experiment(compose_cfg(f"resume={short}"), short, [f"resume={short}"])
    with pytest.raises(ConfigError, match="num_rounds: a resumed run can only grow"):
        run_experiment(compose_cfg(f"resume={short}", "num_rounds=3"), short,
                       [f"resume={short}", "num_rounds=3"])


def test_an_extension_that_would_change_the_planned_noise_is_refused(
    compose_cfg, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    _run(compose_cfg, run_dir, "num_rounds=1", "privacy.target_epsilon=8")
    before = (run_dir / "results.json").read_text()
    with pytest.raises(ConfigError, match=r"num_rounds: cannot extend .*target_epsilon=8\.0"):
        run_experiment(compose_cfg(f"resume={run_dir}", "num_rounds=3"), run_dir,
                       [f"resume={run_dir}", "num_rounds=3"])
    assert (run_dir / "results.json").read_text() == before  # nothing written


def test_versions_name_the_checkout_and_the_host_and_startup_is_measured(
    compose_cfg, tmp_path: Path
) -> None:
    import os
    import time

    import psutil

    started = psutil.Process().create_time()
    before = time.time() - started
    results = _run(compose_cfg, tmp_path / "run", "num_rounds=1", "privacy=none")
    after = time.time() - started
    versions = results["versions"]
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert versions["git_commit"] == head and isinstance(versions["git_dirty"], bool)
    assert versions["python"] == platform.python_version()
    assert versions["cpu_cores"] == os.cpu_count() and versions["os"] == platform.platform()
    assert versions["cpu"]
    # startup_s: from this (pytest) process's start to round 1's start, which lies between
    # the process's age when the run began and when it ended
    assert before <= results["startup_s"] <= after
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["startup_s"] == results["startup_s"]
