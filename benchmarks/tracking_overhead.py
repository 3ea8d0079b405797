"""Overhead of ``tracking=mlflow`` on the default run (goal: under 3 %).

The default experiment (digits, 10 clients, MLP, FedAvg, 10 rounds) runs as
``fedlab-run simulation=inprocess carbon=off``, bare and with ``tracking=mlflow`` into a
SQLite store in a temporary directory, alternating for ``--repeats`` pairs (so drift on a
shared machine hits both modes alike). Each mode is timed three ways:

* ``process_s``: the whole ``fedlab-run`` process, start to exit (what a user waits for; the
  tracked run includes the end-of-run wait for the store: summary, artifacts, the model);
* ``duration_s``: the record's own ``duration_s`` (the rounds and the closing of the record,
  through ``close()``): what tracking may add to the training itself;
* ``cpu_s``: the ``fedlab-run`` process's CPU time (the MLflow worker, which it does not
  wait for once the record is logged, is not in it), which other load on a shared machine
  disturbs less than wall time.

Reported: the median of each in both modes and the median of the per-pair ratios
(tracked / bare - 1). The store is new for the first tracked run (MLflow creates its tables,
once per store) and reused after, as a user's ``mlruns.db`` is; ``--fresh-store`` gives each
tracked run a new one.

``FEDLAB_MLFLOW_TRACE=FILE`` in the environment makes the worker write where its time goes.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/tracking_overhead.py [--repeats 5] [--rounds 10]
        [--no-model] [--fresh-store]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = Path(sys.executable).parent / "fedlab-run"


def one_run(tmp: Path, index: int, tracked: bool, rounds: int, store: Path,
            extra: list[str]) -> dict[str, float]:
    """One ``fedlab-run``; its wall, record and CPU times."""
    run_dir = tmp / f"run-{index}-{'mlflow' if tracked else 'bare'}"
    args = [str(EXE), "simulation=inprocess", "carbon=off", f"num_rounds={rounds}",
            f"hydra.run.dir={run_dir}"]
    if tracked:
        args += ["tracking=mlflow", f"tracking.uri=sqlite:///{store}", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(args, cwd=tmp, capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": ""})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"fedlab-run failed ({result.returncode}): {result.stderr[-2000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    if tracked and results["tracking"]["status"] != "tracked":
        raise SystemExit(f"tracking did not work: {results['tracking']}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"process_s": wall, "duration_s": float(results["duration_s"]), "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fresh-store", action="store_true")
    parser.add_argument("--no-model", action="store_true", help="tracking.log_model=false")
    args = parser.parse_args()
    times: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="fedlab-bench-tracking-") as name:
        tmp = Path(name)
        for i in range(args.repeats):
            store = tmp / (f"store-{i}.db" if args.fresh_store else "mlruns.db")
            order = (False, True) if i % 2 == 0 else (True, False)
            for tracked in order:
                extra = ["tracking.log_model=false"] if args.no_model else []
                times[tracked].append(one_run(tmp, i, tracked, args.rounds, store, extra))
                print(f"pair {i + 1}/{args.repeats} {'mlflow' if tracked else 'bare  '}: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in times[tracked][-1].items()),
                      file=sys.stderr)
    print(f"\n{args.repeats} pairs, {args.rounds} rounds, digits, simulation=inprocess "
          f"carbon=off, {'a new' if args.fresh_store else 'one'} SQLite store"
          f"{', tracking.log_model=false' if args.no_model else ''}\n")
    print("| measure | bare (median) | tracking=mlflow (median) | overhead (median of pairs) |")
    print("|---|---:|---:|---:|")
    for key in ("process_s", "duration_s", "cpu_s"):
        bare = [t[key] for t in times[False]]
        tracked = [t[key] for t in times[True]]
        ratios = [b2 / b1 - 1 for b1, b2 in zip(bare, tracked, strict=True)]
        print(f"| {key} | {statistics.median(bare):.2f} | {statistics.median(tracked):.2f} | "
              f"{100 * statistics.median(ratios):+.1f} % |")


if __name__ == "__main__":
    main()
