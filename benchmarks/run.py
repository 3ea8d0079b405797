"""Every benchmark of issue #22 in one command: figures to ``benchmarks/results.json``, plots
to ``benchmarks/*.png`` and the tables in ``benchmarks/README.md`` regenerated between their
``<!-- bench:NAME -->`` / ``<!-- /bench:NAME -->`` markers.

    .venv/bin/python benchmarks/run.py [--quick]

Measured here (side by side in one invocation, settings interleaved, medians; ``--quick``:
one repeat and fewer rounds, for a smoke test rather than figures to quote):

* ``engines`` (goals 1 and 2): the benchmark workload (100 clients, 10 per round, 20 rounds,
  MLP on digits, 1 local epoch, carbon off) as a whole ``fedlab-run`` on the default engine,
  on the pool with 1 and 2 workers, in-process, on Flower's own Ray engine
  (``simulation=local FEDLAB_FLOWER_ENGINE=1``: Flower's engine as shipped), against the floor
  (plain PyTorch doing the same training, as a fresh process,
  :func:`bench_orchestration.floor_process`) and the peer, a hand-written vanilla Flower 1.42
  app doing the same workload (``flower_peer.py``, also a fresh process);
* ``cnn`` (goal 2): the CNN workload (10 clients per round, 2 local epochs), the training
  phase (sum of the rounds' durations) with 2 pool workers against 1;
* ``startup`` (goal 4): ``fedlab-run --help``, and the first round of the default run done
  (its ``round   1/`` line printed) after the process started;
* every other ``benchmarks/bench_*.py`` or ``tracking_overhead.py`` offering
  ``main(quick: bool) -> dict`` (its figures; its ``table`` into the README).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_orchestration import EXE, floor_process  # noqa: E402

from fedlab.record.run_dir import read_csv, write_json, write_text  # noqa: E402

WORKLOAD = ["num_clients=100", "strategy.fraction_train=0.1", "partition=iid", "num_rounds=20",
            "client.local_epochs=1", "carbon=off"]  # fmt: skip
CNN = ["model=cnn", "num_clients=10", "client.local_epochs=2", "num_rounds=3", "carbon=off"]
ENGINES = {
    "default (auto)": ([], {}),
    "pool, 2 workers": (["simulation=pool", "simulation.workers=2"], {}),
    "pool, 1 worker": (["simulation=pool", "simulation.workers=1"], {}),
    "in-process": (["simulation=inprocess"], {}),
    "Flower's Ray engine": (["simulation=local"], {"FEDLAB_FLOWER_ENGINE": "1"}),
}
PEER = "Flower app (vanilla)"
OTHERS = ("bench_scale", "bench_dp", "bench_quantum", "tracking_overhead")


def run(overrides: list[str], env: dict | None = None, until: str | None = None) -> dict:
    """One ``fedlab-run`` as a fresh process: wall seconds, the rounds' durations and, with
    ``until``, when a stdout line starting with it appeared."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(EXE), *overrides, f"hydra.run.dir={tmp}/run"], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
        seen, first = None, ""
        assert process.stdout is not None
        for text in process.stdout:
            first = first or text.strip()
            if until and seen is None and text.startswith(until):
                seen = time.perf_counter() - started
        process.wait()
        total = time.perf_counter() - started
        if process.returncode != 0:
            code = process.returncode
            raise RuntimeError(f"fedlab-run {' '.join(overrides)} failed: exit {code}")
        rounds = [float(r["duration_s"]) for r in read_csv(Path(tmp) / "run" / "rounds.csv")[1:]]
    return {"total_s": total, "rounds_s": rounds, "until_s": seen, "first_line": first}


def flower_app(rounds: int) -> float:
    """Wall seconds of the vanilla Flower app (``flower_peer.py``) on the workload, as a fresh
    process timed from outside, as :func:`run` times a ``fedlab-run``."""
    started = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / "flower_peer.py"), "--rounds", str(rounds)],
                   capture_output=True, check=True, env={**os.environ, "PYTHONPATH": str(HERE)})
    return time.perf_counter() - started


def engines(repeats: int, rounds: int) -> dict:
    """Goals 1 and 2: each engine, the floor and the vanilla Flower app, interleaved, medians
    of ``repeats``."""
    workload = [*WORKLOAD[:3], f"num_rounds={rounds}", *WORKLOAD[4:]]
    names = ["floor (process)", PEER, *ENGINES]
    times: dict[str, list[float]] = {name: [] for name in names}
    first_line = ""
    for _ in range(repeats):
        times["floor (process)"].append(floor_process(workload))
        times[PEER].append(flower_app(rounds))
        for name, (extra, env) in ENGINES.items():
            result = run([*workload, *extra], env)
            times[name].append(result["total_s"])
            first_line = result["first_line"] if name.startswith("default") else first_line
    medians = {name: statistics.median(t) for name, t in times.items()}
    floor, peer = medians["floor (process)"], medians[PEER]
    return {
        "workload": workload, "repeats": repeats, "first_line": first_line,
        "seconds": medians, "all_seconds": times,
        "x_floor": {n: s / floor for n, s in medians.items()},
        "x_flower": {n: s / peer for n, s in medians.items()},
        "goal_default_le_1x_floor": medians["default (auto)"] <= floor,
        "goal_default_le_half_flower": medians["default (auto)"] <= 0.5 * peer,
    }  # fmt: skip


def cnn(repeats: int) -> dict:
    """Goal 2: the CNN workload's training phase, 2 pool workers against 1 (interleaved)."""
    phase: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for workers in (1, 2):
            result = run([*CNN, "simulation=pool", f"simulation.workers={workers}"])
            phase[workers].append(sum(result["rounds_s"]))
    one, two = statistics.median(phase[1]), statistics.median(phase[2])
    return {"workload": CNN, "training_s": {"1": one, "2": two}, "speedup": one / two,
            "goal_ge_1_6x": one / two >= 1.6, "all": phase}  # fmt: skip


def startup(repeats: int) -> dict:
    """Goal 4: ``--help``, and the default run's first round done, after the process start;
    with ``import torch`` alone as a fresh process, the yardstick of a machine's start-up
    speed (absolute start-up seconds differ twofold between machines of the same kind)."""
    helps, firsts, torches = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([str(EXE), "--help"], capture_output=True, check=True)
        helps.append(time.perf_counter() - started)
        firsts.append(run(["num_rounds=1", "carbon=off"], until="round   1/")["until_s"])
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, check=True)
        torches.append(time.perf_counter() - started)
    help_s, first_s = statistics.median(helps), statistics.median(firsts)
    return {"help_s": help_s, "first_round_s": first_s, "all_first_round_s": firsts,
            "import_torch_s": statistics.median(torches), "goal_help_le_1s": help_s <= 1.0,
            "goal_first_round_le_2s": first_s <= 2.0}  # fmt: skip


def others(quick: bool) -> dict:
    """The other benchmarks offering ``main(quick) -> dict``; a missing one is left out."""
    out = {}
    for name in OTHERS:
        if not (HERE / f"{name}.py").exists():
            continue
        main = getattr(importlib.import_module(name), "main", None)
        if main is None or "quick" not in inspect.signature(main).parameters:
            continue
        out[name] = main(quick=quick)
    return out


def tables(results: dict) -> dict[str, str]:
    """The README's tables, one per marker name."""
    e, c, s = results["engines"], results["cnn"], results["startup"]
    rows = ["| engine | total s | x floor (process) | x vanilla Flower app |",
            "|---|---:|---:|---:|"]
    rows += [f"| {n} | {e['seconds'][n]:.1f} | {e['x_floor'][n]:.2f} | {e['x_flower'][n]:.2f} |"
             for n in e["seconds"]]  # fmt: skip
    out = {"engines": "\n".join(rows) + f"\n\nFirst console line: `{e['first_line']}`"}
    out["cnn"] = (
        "| pool workers | training phase s |\n|---:|---:|\n"
        f"| 1 | {c['training_s']['1']:.1f} |\n| 2 | {c['training_s']['2']:.1f} |\n\n"
        f"Speed-up: **{c['speedup']:.2f}x** "
        f"(goal >= 1.6x: {'met' if c['goal_ge_1_6x'] else 'not met'})"
    )
    out["startup"] = (
        "| what | seconds | goal |\n|---|---:|---:|\n"
        f"| `fedlab-run --help` | {s['help_s']:.2f} | <= 1.0 |\n"
        f"| default run: round 1 done after the process started | {s['first_round_s']:.2f} "
        "| <= 2.0 |\n"
        f"| (yardstick: `python -c 'import torch'` on this machine) | {s['import_torch_s']:.2f} "
        "| - |"
    )
    for name, figures in results["others"].items():
        if isinstance(figures, dict) and isinstance(figures.get("table"), str):
            out[name] = figures["table"]
    return out


def update_readme(path: Path, blocks: dict[str, str]) -> list[str]:
    """Replace each ``<!-- bench:NAME -->...<!-- /bench:NAME -->`` block; return the names
    that had no markers (left for a person to place)."""
    text, missing = path.read_text(), []
    for name, block in blocks.items():
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        if start not in text or end not in text:
            missing.append(name)
            continue
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{block}\n{end}{rest.split(end, 1)[1]}"
    write_text(path, text)
    return missing


def plot(results: dict, path: Path) -> None:
    """Whole-run seconds per engine, the floor and the goals marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = results["engines"]["seconds"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(list(seconds), list(seconds.values()), color="tab:blue")
    ax.axvline(seconds["floor (process)"], color="k", ls="--", label="floor (1.0x)")
    ax.set_xlabel("whole run, s (100 clients, 10 per round)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(suffix=".png", dir=path.parent, delete=False) as tmp:
        fig.savefig(tmp.name, dpi=110)
    os.replace(tmp.name, path)  # atomic, as every result file
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer rounds")
    parser.add_argument("--skip-others", action="store_true",
                        help="only this file's benchmarks (engines, cnn, startup)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved repeats of engines and cnn (medians; default 2)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or None  # fmt: skip
    results: dict = {
        "commit": commit,
        "machine": {"cpu_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                    "platform": platform.platform(), "load_avg_start": os.getloadavg()},
        "quick": args.quick,
        "engines": engines(repeats, 5 if args.quick else 20),
        "cnn": cnn(repeats),
        "startup": startup(1 if args.quick else max(3, repeats)),
    }  # fmt: skip
    results["others"] = {} if args.skip_others else others(args.quick)
    results["machine"]["load_avg_end"] = os.getloadavg()
    write_json(HERE / "results.json", results)
    plot(results, HERE / "engines.png")
    missing = update_readme(HERE / "README.md", tables(results))
    print(json.dumps({k: results[k] for k in ("engines", "cnn", "startup")}, indent=1)[:4000])
    if missing:
        print(f"no README markers for: {', '.join(missing)}", file=sys.stderr)


if __name__ == "__main__":
    main()
