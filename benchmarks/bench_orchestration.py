"""Orchestration overhead, memory and start-up of fedlab runs (issue "Fast on one machine").

* overhead: a whole ``fedlab-run`` (Flower simulation on Ray) against the floor, a plain
  PyTorch loop doing the same local training work in one process (same data, partitions,
  sampled clients, local epochs, FedAvg, central evaluation), side by side in one invocation;
  total and steady-state per-round ratios, for three ways of running the simulation: Flower's
  own engine (``FEDLAB_FLOWER_ENGINE=1``), fedlab's engine changes (the default), and the
  same on an already running Ray head (``simulation=ray_cluster``: no Ray start-up per run),
  and fedlab's serial in-process backend (``simulation=inprocess``: no Ray at all).
* memory: peak resident memory of the whole process tree (driver, Ray daemons, client actors)
  for 10, 100 and 1000 simulated clients.
* start-up: ``fedlab-run --help`` and ``fedlab-run --cfg job``.

Run from the repository root:  .venv/bin/python benchmarks/bench_orchestration.py
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from hydra import compose, initialize_config_module

from fedlab.config.experiment import Experiment
from fedlab.config.schema import register_configs
from fedlab.fl.model import build_model
from fedlab.fl.training import evaluate, make_optimizer, seed_for, train
from fedlab.record.run_dir import read_csv

EXE = Path(sys.executable).parent / "fedlab-run"


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="fedlab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def floor(overrides: list[str]) -> tuple[float, list[float]]:
    """The same FedAvg training as plain PyTorch in this process: (total s, per-round s)."""
    started = time.perf_counter()
    exp = Experiment.from_config(compose_cfg(*overrides))
    fed, _ = exp.prepare()
    cfg, scheduler = exp.cfg, exp.scheduler()
    torch.set_num_threads(1)
    torch.manual_seed(seed_for(cfg.seed, 0))
    global_model = build_model(cfg.model, fed.input_shape, fed.num_classes)
    rounds = []
    # Plain PyTorch: one module per client copied from the global one (no Hydra, no Flower
    # records); what a hand-written loop would do.
    for server_round in range(1, cfg.num_rounds + 1):
        t0 = time.perf_counter()
        plan = scheduler.plan(server_round)
        states, weights = [], []
        for pid, epochs in sorted(plan.epochs.items()):
            data, _ = fed.client(pid)
            model = copy.deepcopy(global_model)
            c = cfg.client
            optimizer = make_optimizer(
                model.parameters(), c.optimizer, c.lr, c.momentum, c.weight_decay
            )
            generator = torch.Generator().manual_seed(seed_for(cfg.seed, server_round, pid, 2))
            train(
                model,
                data,
                epochs=epochs,
                batch_size=c.batch_size,
                optimizer=optimizer,
                generator=generator,
            )
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            weights.append(len(data))
        total = sum(weights)
        global_model.load_state_dict(
            {
                k: sum(w * s[k] for w, s in zip(weights, states, strict=True)) / total
                for k in states[0]
            }
        )
        evaluate(global_model, fed.test)
        rounds.append(time.perf_counter() - t0)
    return time.perf_counter() - started, rounds


class TreeMemory:
    """Peak resident memory of a process and all its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = 0
            with contextlib.suppress(psutil.Error):  # processes come and go
                for p in [self.root, *self.root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
            self.peak = max(self.peak, rss)
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def fedlab_run(overrides: list[str], env: dict | None = None) -> tuple[float, list[float], int]:
    """A real ``fedlab-run`` in a subprocess: (total s, per-round s, peak tree RSS bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(EXE), *overrides, f"hydra.run.dir={run_dir}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        memory = TreeMemory(process.pid)
        _, stderr = process.communicate()
        total = time.perf_counter() - started
        peak = memory.stop()
        if process.returncode != 0:
            raise RuntimeError(stderr[-2000:])
        rounds = [float(r["duration_s"]) for r in read_csv(run_dir / "rounds.csv")[1:]]
    return total, rounds, peak


@contextlib.contextmanager
def ray_head(num_cpus: int):
    """A Ray head on this machine (``ray start --head --block``), stopped on exit; yields its
    address. Its own temp dir and process group: no other Ray on the machine sees or loses it.
    """
    temp_dir = tempfile.mkdtemp(prefix="fl-ray-", dir="/tmp")
    ports: list[int] = []
    while len(ports) < 3:  # outside Ray's worker port range 10002-19999
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            if not 10000 <= s.getsockname()[1] < 20000:
                ports.append(s.getsockname()[1])
    log = Path(temp_dir) / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            [str(EXE.parent / "ray"), "start", "--head", "--block", f"--port={ports[0]}",
             f"--ray-client-server-port={ports[1]}", f"--dashboard-agent-listen-port={ports[2]}",
             f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={temp_dir}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        )  # fmt: skip
    try:
        while "Ray runtime started" not in log.read_text():
            if head.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.5)
        yield f"127.0.0.1:{ports[0]}"
    finally:
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def steady(rounds: list[float]) -> float:
    """Median per-round time, leaving out the first two (actor warm-up)."""
    return statistics.median(rounds[2:] if len(rounds) > 4 else rounds)


def timed(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([str(EXE), *args], capture_output=True, check=True)
    return time.perf_counter() - started


def floor_process(overrides: list[str]) -> float:
    """Wall seconds of the floor as a fresh process (interpreter, imports, data, training),
    to set against a whole ``fedlab-run``, which pays the same start-up."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--floor-only", json.dumps(overrides)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--floor-only", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    register_configs()
    if args.floor_only:
        floor(json.loads(args.floor_only))
        return
    # Federated evaluation is off: the floor evaluates centrally only, as the server does.
    common = [
        "carbon=off",
        "num_rounds=20",
        "client.local_epochs=1",
        "strategy.fraction_evaluate=0",
    ]
    settings = {
        "10 clients x 20 rounds (all)": ["num_clients=10", *common],
        "100 clients x 20 rounds (10%)": [
            "num_clients=100",
            "strategy.fraction_train=0.1",
            "partition=iid",
            *common,
        ],
    }
    print(
        "| setting | engine | floor total s (in / as a process) | fedlab total s "
        "| total ratio (in / process) | floor round ms | fedlab round ms | steady-state ratio "
        "| peak memory GiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with ray_head(os.cpu_count() or 1) as address:
        engines = {
            "Flower's": ([], {"FEDLAB_FLOWER_ENGINE": "1"}),
            "fedlab's": ([], {}),
            "fedlab's, running Ray head": (
                ["simulation=ray_cluster", f"simulation.ray_address={address}"],
                {},
            ),
            "fedlab in-process (no Ray)": (["simulation=inprocess"], {}),
        }
        for name, overrides in settings.items():
            f_total, f_rounds = floor(overrides)
            f_process = floor_process(overrides)
            for engine, (extra, env) in engines.items():
                r_total, r_rounds, peak = fedlab_run([*overrides, *extra], env)
                print(
                    f"| {name} | {engine} | {f_total:.1f} / {f_process:.1f} | {r_total:.1f} | "
                    f"{r_total / f_total:.1f}x / {r_total / f_process:.1f}x | "
                    f"{1000 * steady(f_rounds):.0f} | "
                    f"{1000 * steady(r_rounds):.0f} | "
                    f"{steady(r_rounds) / steady(f_rounds):.1f}x | {peak / 2**30:.2f} |",
                    flush=True,
                )
    if not args.skip_memory:
        print("\n| simulated clients | per round | peak memory of the process tree GiB | total s |")
        print("|---:|---:|---:|---:|")
        for n in (10, 100, 1000):
            overrides = [
                f"num_clients={n}",
                "num_rounds=2",
                "carbon=off",
                "partition=iid",
                f"strategy.fraction_train={min(1.0, 10 / n)}",
                f"strategy.fraction_evaluate={min(1.0, 10 / n)}",
            ]
            total, _, peak = fedlab_run(overrides)
            print(f"| {n} | {min(n, 10)} | {peak / 2**30:.2f} | {total:.1f} |")
    print("\n| command | seconds |")
    print("|---|---:|")
    for label, cmd in (
        ("--help", ["--help"]),
        ("--cfg job", ["--cfg", "job"]),
    ):
        times = sorted(timed(*cmd) for _ in range(3))
        print(f"| `fedlab-run {label}` | {times[1]:.2f} |")


if __name__ == "__main__":
    main()
