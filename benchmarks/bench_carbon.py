"""Overhead of carbon tracking on run time (goal: under 2%).

A fixed CPU-bound workload (an MLP trained with SGD on synthetic data, the same number
of steps every time) runs as ``--rounds`` rounds, once bare and once the way a fedlab
run measures it: one HostTracker (CodeCarbon OfflineEmissionsTracker, one task per
round), the process's CPU time around each round's work (``time.process_time``, what a
client reports), and a CarbonLedger row per round. The two modes alternate for
``--repeats`` pairs (so drift on a shared machine hits both) and the medians are compared.

Reported separately:

* ``end_to_end``: medians of the rounds' wall time in both modes and the median of the
  per-pair ratios (tracked / bare - 1); the same for the process CPU time (which other
  load on a shared machine disturbs much less than wall time); and the in-situ overhead:
  wall time of the tracked rounds outside the training work itself, over that work.
  On a shared, loaded machine the wall-time ratios are noisy: read them with the rest;
* ``micro``: the tracker's costs measured directly, which noise cannot hide or inflate
  much: the fixed cost of one round boundary (median of many empty rounds: four
  CodeCarbon task calls), the CPU time CodeCarbon's 1 Hz power-sampling thread uses per
  second, and one ledger row for 10 clients; from them, the overhead bound for rounds of
  1, 10 and 60 s;
* ``setup_s`` / ``stop_s``: the tracker's fixed cost per run (constructor with its
  hardware probe, ~1-2 s the first time in a process and cached after; stop with its CSV
  writes), to be compared with a run's total length (a Flower simulation's start-up
  alone is ~10 s).

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_carbon.py [--rounds 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from fedlab.trackers.carbon.host import HostTracker
from fedlab.trackers.carbon.ledger import CarbonLedger


def make_workload(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A model and data whose training cost is fixed by the number of steps."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4096, 256, generator=gen)
    y = torch.randint(0, 10, (4096,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    return model, x, y


def train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """``steps`` SGD steps of batch 128; returns the last loss (keeps the work live)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    loss = torch.tensor(0.0)
    for step in range(steps):
        lo = (step * 128) % (len(x) - 128)
        opt.zero_grad()
        loss = loss_fn(model(x[lo : lo + 128]), y[lo : lo + 128])
        loss.backward()
        opt.step()
    return float(loss.detach())


def run_bare(rounds: int, steps: int) -> dict[str, float]:
    model, x, y = make_workload(0)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        train_steps(model, x, y, steps)
    return {"rounds_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def run_tracked(rounds: int, steps: int, run_dir: Path) -> dict[str, float]:
    model, x, y = make_workload(0)
    t_setup = time.perf_counter()
    tracker = HostTracker(run_dir, "FRA", measure_power_secs=15)
    ledger = CarbonLedger(["FRA"], "FRA")
    setup_s = time.perf_counter() - t_setup
    work_s = 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    for rnd in range(1, rounds + 1):
        with tracker.round(f"round_{rnd}") as measurement:
            cpu0, t_work = time.process_time(), time.perf_counter()
            train_steps(model, x, y, steps)
            work_s += time.perf_counter() - t_work
            cpu_s = time.process_time() - cpu0
        ledger.record_round(
            rnd,
            window=(time.perf_counter() - t0,) * 2,
            client_cpu_s={0: cpu_s},
            bytes_by_client={0: (10**6, 10**6)},
            host=measurement,
            power=tracker.power_model,
        )
    rounds_s = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    t_stop = time.perf_counter()
    result = tracker.stop()
    stop_s = time.perf_counter() - t_stop
    return {
        "rounds_s": rounds_s,
        "cpu_s": cpu_s,
        "work_s": work_s,
        "setup_s": setup_s,
        "stop_s": stop_s,
        "energy_kwh": result.total.energy_kwh,
    }


def micro(run_dir: Path, empty_rounds: int, sleep_s: float) -> dict[str, float]:
    """Direct measurements of the tracker's own costs."""
    tracker = HostTracker(run_dir, "FRA", measure_power_secs=15)
    boundaries = []
    for rnd in range(empty_rounds):
        t0 = time.perf_counter()
        with tracker.round(f"empty_{rnd}"):
            pass
        boundaries.append(time.perf_counter() - t0)
    # CPU the process burns while the main thread sleeps inside a round: CodeCarbon's
    # power-sampling thread (psutil readings once a second).
    c0 = time.process_time()
    with tracker.round("sleeping"):
        time.sleep(sleep_s)
    tracked_cpu = time.process_time() - c0
    tracker.stop()
    c0 = time.process_time()
    time.sleep(sleep_s)
    bare_cpu = time.process_time() - c0
    monitor_cpu_per_s = max(tracked_cpu - bare_cpu, 0.0) / sleep_s

    ledger = CarbonLedger(["FRA", "DEU"] * 5, "FRA")
    reading = tracker.rounds[0]
    row_costs = []
    for rnd in range(1, 51):
        t0 = time.perf_counter()
        ledger.record_round(
            rnd,
            window=(float(rnd), float(rnd + 1)),
            client_cpu_s={c: 1.0 for c in range(10)},
            bytes_by_client={c: (10**6, 10**6) for c in range(10)},
            host=reading,
            power=tracker.power_model,
            server_cpu_s=0.1,
        )
        row_costs.append(time.perf_counter() - t0)
    boundary = statistics.median(boundaries)
    row = statistics.median(row_costs)
    return {
        "round_boundary_s_median": round(boundary, 5),
        "round_boundary_s_min": round(min(boundaries), 5),
        "monitor_thread_cpu_s_per_s": round(monitor_cpu_per_s, 5),
        "ledger_row_10_clients_s_median": round(row, 6),
        **{
            f"overhead_pct_bound_round_{t}s": round(
                100 * (boundary + row + monitor_cpu_per_s * t) / t, 3
            )
            for t in (1, 10, 60)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200, help="SGD steps per round")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    run_bare(1, 20)  # warm torch up so the first timed mode is not penalised
    bare: list[dict[str, float]] = []
    tracked: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            order = ("bare", "tracked") if rep % 2 == 0 else ("tracked", "bare")
            for mode in order:
                if mode == "bare":
                    bare.append(run_bare(args.rounds, args.steps))
                else:
                    tracked.append(run_tracked(args.rounds, args.steps, Path(tmp) / f"r{rep}"))
        micro_report = micro(Path(tmp) / "micro", empty_rounds=50, sleep_s=3.0)

    med_bare = statistics.median(r["rounds_s"] for r in bare)
    med_tracked = statistics.median(r["rounds_s"] for r in tracked)
    pairs = list(zip(bare, tracked, strict=True))
    pair_pct = [100 * (t["rounds_s"] / b["rounds_s"] - 1) for b, t in pairs]
    cpu_pct = [100 * (t["cpu_s"] / b["cpu_s"] - 1) for b, t in pairs]
    # Wall time a tracked round spends outside the training work: the tracker in situ.
    in_situ_pct = [100 * (t["rounds_s"] - t["work_s"]) / t["work_s"] for t in tracked]
    setups = [r["setup_s"] for r in tracked]
    setup_cached = statistics.median(setups[1:] or setups)
    report = {
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "end_to_end": {
            "bare_rounds_s": [round(r["rounds_s"], 4) for r in bare],
            "tracked_rounds_s": [round(r["rounds_s"], 4) for r in tracked],
            "median_bare_s": round(med_bare, 4),
            "median_tracked_s": round(med_tracked, 4),
            "overhead_pct_of_medians": round(100 * (med_tracked - med_bare) / med_bare, 2),
            "overhead_pct_median_of_pairs": round(statistics.median(pair_pct), 2),
            "cpu_overhead_pct_median_of_pairs": round(statistics.median(cpu_pct), 2),
            "in_situ_overhead_pct_median": round(statistics.median(in_situ_pct), 3),
        },
        "micro": micro_report,
        "setup_s_first": round(setups[0], 3),
        "setup_s_median_cached": round(setup_cached, 3),
        "stop_s_median": round(statistics.median(r["stop_s"] for r in tracked), 4),
        "energy_kwh_median": statistics.median(r["energy_kwh"] for r in tracked),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
