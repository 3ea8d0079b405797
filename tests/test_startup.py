"""What a plain run's start-up imports and does (issue #22, "the fast path is the default
path"): no Ray, Qiskit, Opacus or MLflow in a run that uses none of them; the data prepared in
a forked child (:mod:`fedlab.background`) equal to the source and its errors the driver's own;
and the audit's drift figures independent of the order in which the clients' replies came."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fedlab.background import Background, can_fork
from fedlab.config.errors import ConfigError
from fedlab.trackers.audit.drift import DriftLedger

needs_fork = pytest.mark.skipif(not can_fork(), reason="no fork() on this platform")

#: Optional heavy packages a default run (privacy=none, tracking=none, no quantum model, no
#: Ray cluster) has no use for.
UNUSED = ("ray", "qiskit", "qiskit_machine_learning", "opacus", "mlflow")


def _modules_after_start(*overrides: str) -> dict[str, bool]:
    """In a fresh interpreter: compose the config, validate it, prepare the data the way
    ``fedlab-run`` does and build the trackers; which top-level packages are then loaded."""
    code = textwrap.dedent(f"""
        import json, sys, tempfile
        from pathlib import Path
        from hydra import compose, initialize_config_module
        from fedlab.config.experiment import Experiment
        from fedlab.config.schema import register_configs
        from fedlab.trackers.base import RunContext
        from fedlab.trackers.registry import Trackers
        register_configs()
        with initialize_config_module(config_module="fedlab.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides={list(overrides)!r})
        exp = Experiment.from_config(cfg)
        fed, _ = exp.prepare(exp.start_loading())
        with tempfile.TemporaryDirectory() as tmp:
            Trackers.build(RunContext(exp, fed, Path(tmp))).close()
        names = {[*UNUSED, "codecarbon", "sklearn", "datasets"]!r}
        print(json.dumps({{n: n in sys.modules for n in names}}))
    """)  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_fork
def test_a_default_run_imports_none_of_the_optional_heavy_packages() -> None:
    loaded = _modules_after_start(
        "carbon=off", "trackers.audit.fairness=false", "trackers.audit.explanations=false"
    )
    assert not any(loaded[name] for name in UNUSED), loaded
    assert not loaded["codecarbon"]  # carbon=off: no CodeCarbon either
    # the digits were loaded and partitioned in the child: its loaders never came here
    assert not loaded["sklearn"] and not loaded["datasets"], loaded


@needs_fork
def test_the_data_prepared_in_the_background_are_the_source_digits(compose_cfg) -> None:
    from sklearn.datasets import load_digits

    from fedlab.config.experiment import Experiment

    exp = Experiment.from_config(compose_cfg("num_clients=7", "partition=iid"))
    fed, _ = exp.prepare(exp.start_loading())
    digits = load_digits()
    source = {row.tobytes(): label for row, label in zip(digits.data, digits.target, strict=True)}
    pool = fed.pool.x.reshape(len(fed.pool), -1).astype(np.float64) * 16.0
    assert len(fed.pool) + len(fed.test) == len(digits.target) == 1797
    for row, label in zip(pool, fed.pool.y, strict=True):  # every example is a source row
        assert source[row.tobytes()] == label
    # every training example belongs to exactly one client, train and test parts disjoint
    held = np.concatenate([*fed.client_train, *fed.client_test])
    assert sorted(held.tolist()) == list(range(len(fed.pool)))


@needs_fork
def test_a_config_error_in_the_child_is_the_drivers_own_one_line_error(compose_cfg) -> None:
    from fedlab.config.experiment import Experiment

    exp = Experiment.from_config(compose_cfg("num_clients=2000", "partition=iid"))
    loading = exp.start_loading()
    assert loading is not None
    train = 1797 - int(np.ceil(0.2 * 1797))  # the default test_fraction, as sklearn rounds it
    with pytest.raises(ConfigError, match=rf"^num_clients: 2000 clients .* only {train} ") as err:
        exp.prepare(loading)
    assert err.value.key == "num_clients"


@needs_fork
def test_a_child_that_fails_or_dies_is_an_error_here() -> None:
    def missing() -> None:
        raise KeyError("no such split")

    with pytest.raises(KeyError, match="no such split"):
        Background(missing, "test").result()
    with pytest.raises(RuntimeError, match=r"^fedlab-test process died \(exit code 3\)"):
        Background(lambda: os._exit(3), "test").result()
    assert Background(lambda: sum(range(101)), "test").result() == 5050


def test_idle_children_run_on_idle_cycles_until_the_driver_waits_for_them() -> None:
    # work off the critical path (the picture, the closer) runs in SCHED_IDLE...
    child = Background(lambda: os.sched_getscheduler(0), "test", idle=True)
    while not child.ready():
        time.sleep(0.01)
    assert child.result() == os.SCHED_IDLE
    # ...until result() waits for it: then it runs as usual, where this user may raise it
    slow = Background(lambda: (time.sleep(0.5), os.sched_getscheduler(0))[1], "t", idle=True)
    may_raise = os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20
    assert slow.result() == (os.SCHED_OTHER if may_raise else os.SCHED_IDLE)
    assert Background(lambda: os.sched_getscheduler(0), "test").result() == os.SCHED_OTHER


def test_drift_figures_do_not_depend_on_the_order_replies_came_in() -> None:
    rounds = [{3: 0.1, 0: 0.7, 2: 1e-17, 1: 0.3}, {1: 0.2, 3: 0.9, 0: 1e16}]
    forward, backward = DriftLedger(), DriftLedger()
    for server_round, distances in enumerate(rounds, start=1):
        a = forward.end_round(server_round, distances, None)
        b = backward.end_round(server_round, dict(reversed(distances.items())), None)
        assert a == b
        values = [distances[pid] for pid in sorted(distances)]
        assert a["update_distance_mean"] == float(np.mean(values))
    assert forward.summary() == backward.summary()
    per_client: dict[int, float] = {}
    for distances in rounds:  # each client's sum in round order, then clients in id order
        for pid, d in distances.items():
            per_client[pid] = per_client.get(pid, 0.0) + d
    total = 0.0
    for pid in sorted(per_client):
        total += per_client[pid]
    assert forward.summary()["update_distance"]["mean"] == total / 7


def test_the_console_script_ends_at_once_with_everything_written(tmp_path) -> None:
    """``fedlab-run`` leaves through :func:`fedlab.cli._exit_now` (no interpreter teardown):
    exit code 0 and the whole of stdout, piped and so block-buffered, still arrive."""
    exe = os.path.join(os.path.dirname(sys.executable), "fedlab-run")
    result = subprocess.run([exe, "--cfg", "job"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    import yaml

    shown = yaml.safe_load(result.stdout)  # complete: it parses, up to its last key
    assert shown["num_clients"] == 10 and shown["trackers"]["audit"]["ig_steps"] == 32


def test_a_rerun_sweep_within_the_same_second_counts_its_skipped_runs(tmp_path, capsys) -> None:
    """With start-up this fast a rerun multirun can begin in the second the first one ended
    (``finished_at`` is to the second): the completed records it found are still the skipped
    ones, and a run it did (an attempt moved aside, run again) is not."""
    from omegaconf import OmegaConf

    from fedlab.cli import SweepSummary
    from fedlab.record.run_dir import now

    stamp = now()
    for name, status in (("0", "completed"), ("1", "completed"), ("2", "failed")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(
            json.dumps({"status": status, "finished_at": stamp})
        )
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    summary = SweepSummary()
    summary.on_multirun_start(config)
    # job 2 runs again and completes, in the same second
    (tmp_path / "2" / "results.json").write_text(
        json.dumps({"status": "completed", "finished_at": stamp})
    )
    summary.on_multirun_end(config)
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith("3 runs in " + str(tmp_path) + ", 2 skipped (already completed)")
    )


@needs_fork
def test_a_child_forked_before_its_work_imports_ahead_then_runs_what_it_is_sent() -> None:
    """``awaits=True``: the child imports first, then runs ``work(x)`` for the ``x`` that
    :meth:`Background.start` sends; one never started ends with :meth:`Background.cancel`."""
    import operator
    from functools import partial

    def imported(names: list[str]) -> list[bool]:
        return [name in sys.modules for name in names]

    warm = Background(imported, "test", imports=["colorsys", "no.such.module"], awaits=True)
    assert warm.start(["colorsys", "tabnanny"]) is None
    assert warm.result() == [True, "tabnanny" in sys.modules]  # what it was told, no more
    call = Background(operator.call, "test", awaits=True)
    call.start(partial(sum, range(101)))
    assert call.result() == 5050
    with pytest.raises(RuntimeError, match="awaits nothing, or was started already"):
        call.start(None)
    idle = Background(operator.call, "test", imports=["json"], awaits=True)
    idle.cancel()  # never given its work: it ends, and nothing waits for it
    assert not idle._process.is_alive()


def test_the_data_child_imports_what_the_configs_dataset_and_partitioner_need() -> None:
    from fedlab.data.partition import background_imports

    digits = {"_target_": "fedlab.data.datasets.sklearn.Digits"}
    dirichlet = {"_target_": "flwr_datasets.partitioner.DirichletPartitioner", "alpha": 0.5}
    assert background_imports(digits, dirichlet) == (
        "sklearn.datasets", "sklearn.model_selection", "flwr_datasets.partitioner", "datasets"
    )  # fmt: skip
    # a dataset that is not prepared in a child (a download, a generator), or a target that
    # does not resolve (validation reports it): no child
    synthetic = {"_target_": "fedlab.data.datasets.synthetic.Synthetic"}
    assert background_imports(synthetic, dirichlet) is None
    assert background_imports({"_target_": "no.such.Dataset"}, dirichlet) is None
    assert background_imports({}, dirichlet) is None


@needs_fork
def test_the_loader_sent_to_a_child_forked_before_validation_gives_the_same_data(
    compose_cfg,
) -> None:
    import operator

    from fedlab.config.experiment import Experiment

    exp = Experiment.from_config(compose_cfg("num_clients=7"))
    warm = Background(operator.call, "data", imports=["sklearn.datasets"], awaits=True)
    assert exp.start_loading(warm) is warm
    fed, _ = exp.prepare(warm)
    here = exp.load_data()
    assert np.array_equal(fed.pool.x, here.pool.x) and np.array_equal(fed.test.y, here.test.y)
    assert [a.tolist() for a in fed.client_train] == [a.tolist() for a in here.client_train]
    # an experiment whose data are not prepared in a child ends the one forked for it
    lazy = Experiment.from_config(compose_cfg("dataset=synthetic"))
    unused = Background(operator.call, "data", awaits=True)
    assert lazy.start_loading(unused) is None
    assert not unused._process.is_alive()


def test_seed_torch_draws_what_torch_manual_seed_draws() -> None:
    import torch

    from fedlab.fl.training import seed_torch

    torch.manual_seed(1234)
    expected = torch.rand(5), torch.randn(3), torch.randint(0, 100, (4,))
    torch.manual_seed(99)  # something else in between
    seed_torch(1234)
    drawn = torch.rand(5), torch.randn(3), torch.randint(0, 100, (4,))
    assert all(torch.equal(a, b) for a, b in zip(expected, drawn, strict=True))
