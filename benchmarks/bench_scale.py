"""Scale: 100, 1,000 and 10,000 simulated clients, 100 of them trained per round.

Workload (issue #22, goal 3): FedProx synthetic(1, 1) generated lazily (``dataset.lazy=true``,
one natural user per client, ``partition=natural``), multinomial logistic regression, FedProx
(mu 1), SGD lr 0.01, batch 50 (to keep the run short), one local epoch, no stragglers,
100 clients sampled per round (``strategy.fraction_train = 100 / N``) and 100 evaluated,
carbon off, one torch thread, on the
in-process engine (``simulation=inprocess``). Each setting runs in a fresh child process, through
the same ServerApp body ``fedlab-run`` uses (``run_server``: the schedule, fedlab's Grid and its
handshake, the strategy, the trackers, the per-round record and checkpoint); the lineage files
and the partition picture that ``fedlab-run`` adds around it are left out (they hash and draw
every client: see the benchmark README).

Measured: the peak PSS of the child's process tree (psutil ``memory_full_info().pss`` summed over
the process and its children, sampled every 50 ms from the parent), the time to the first round
(data preparation, the handshake), and the median round time after the first (``rounds.csv``
``duration_s``), with the training examples those rounds touched, so that rounds whose sampled
users differ in size (the lognormal sizes are heavy-tailed) can be compared per example too.

Run from the repository root:  PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
CLIENTS = (100, 1000, 10_000)
PER_ROUND = 100


def overrides(num_clients: int, rounds: int) -> list[str]:
    """The experiment of one setting (see the module docstring)."""
    share = min(1.0, PER_ROUND / num_clients)
    return [
        "experiment=fedprox_synthetic",
        "+dataset.lazy=true",
        f"num_clients={num_clients}",
        f"num_rounds={rounds}",
        f"strategy.fraction_train={share}",
        f"strategy.fraction_evaluate={share}",
        "client.local_epochs=1",
        "client.batch_size=50",
        "stragglers.fraction=0",
        "carbon.enabled=false",
        "simulation=inprocess",
        # The audit's fairness and explanation reports read every client's test split at
        # the end and its drift report every client's labels: O(total clients), see README.
        "trackers.audit.drift=false",
        "trackers.audit.fairness=false",
        "trackers.audit.explanations=false",
    ]


def child(num_clients: int, rounds: int, out: Path) -> None:
    """Run one setting in this process and write its timings to ``out`` (JSON)."""
    from dataclasses import replace

    from hydra import compose, initialize_config_module

    from fedlab.config.experiment import Experiment
    from fedlab.config.schema import register_configs
    from fedlab.console import setup_logging
    from fedlab.engines.inprocess import InProcessGrid
    from fedlab.fl.client_app import build_client_app
    from fedlab.fl.client_state import STATE_DIR
    from fedlab.fl.server_app import run_server
    from fedlab.record.run_dir import read_csv, write_text
    from fedlab.run import _client_spec, open_record
    from fedlab.trackers.base import RunContext
    from fedlab.trackers.registry import Trackers

    setup_logging()
    register_configs()
    started = time.perf_counter()
    with initialize_config_module(config_module="fedlab.conf", version_base="1.3"):
        raw = compose(config_name="config", overrides=overrides(num_clients, rounds))
    with tempfile.TemporaryDirectory(prefix="fedlab-scale-") as tmp:
        exp = Experiment.from_config(raw)
        fed, _ = exp.prepare()
        path = Path(tmp) / "federation.npz"
        fed.save(path)
        prepared = time.perf_counter() - started
        record = open_record(exp, Path(tmp) / "run")
        record.start("{}", {"rounds_completed": 0})
        spec = replace(_client_spec(exp, path, record.dir / STATE_DIR), torch_threads=1)
        grid = InProcessGrid(build_client_app(spec), num_clients)
        trackers = Trackers.build(RunContext(exp, fed, record.dir))
        run_server(grid, exp, fed, record, trackers)
        record.update(**trackers.close())
        accuracy = record.results.get("accuracy")
        rows = read_csv(record.dir / "rounds.csv")
        clients = read_csv(record.dir / "clients.csv")
    trained = [r for r in rows if r.get("duration_s") not in (None, "")]
    examples = {
        int(r["round"]): 0 for r in clients if r.get("phase") == "train"
    }
    for r in clients:
        if r.get("phase") == "train" and r.get("status") == "ok":
            examples[int(r["round"])] += int(float(r.get("num_examples") or 0))
    write_text(
        out,
        json.dumps(
            {
                "prepare_s": prepared,
                "total_s": time.perf_counter() - started,
                "round_s": [float(r["duration_s"]) for r in trained],
                "examples": [examples.get(int(r["round"]), 0) for r in trained],
                "accuracy": accuracy,
            }
        ),
    )


def _tree_pss(proc: psutil.Process) -> int:
    """PSS of ``proc`` and its children, in bytes (processes that just ended count 0)."""
    total = 0
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:  # the child just ended
        return 0
    for p in tree:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measure(num_clients: int, rounds: int) -> dict:
    """One setting in a fresh child process, its tree's PSS sampled while it runs."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--child", str(num_clients), str(rounds), str(out)]
        proc = subprocess.Popen(cmd, cwd=HERE.parent)
        watched, peak = psutil.Process(proc.pid), 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _tree_pss(watched))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        stop.set()
        sampler.join()
        if code != 0:
            raise RuntimeError(f"{num_clients} clients: child exited {code}")
        result = json.loads(out.read_text())
    steady = result["round_s"][1:] or result["round_s"]
    ex = result["examples"][1:] or result["examples"]
    return {
        "clients": num_clients,
        "per_round": min(PER_ROUND, num_clients),
        "peak_pss_gib": peak / 2**30,
        "prepare_s": result["prepare_s"],
        "round_ms_median": 1000 * statistics.median(steady),
        "round_ms": [1000 * s for s in result["round_s"]],
        "examples_per_round": ex,
        "us_per_example": 1e6 * sum(steady) / max(1, sum(ex)),
        "accuracy": result["accuracy"],
    }


def plot(rows: list[dict], path: Path) -> None:
    """Peak memory and round time against total clients (log x)."""
    from matplotlib.figure import Figure

    from fedlab.record.run_dir import save_figure

    fig = Figure(figsize=(9, 3.5))
    mem, rt = fig.subplots(1, 2)
    xs = [r["clients"] for r in rows]
    mem.plot(xs, [r["peak_pss_gib"] for r in rows], "o-")
    mem.axhline(2.0, color="grey", ls="--", label="goal 2 GiB")
    mem.set(xscale="log", xlabel="simulated clients", ylabel="peak PSS of process tree (GiB)")
    mem.set_ylim(0, max(2.2, max(r["peak_pss_gib"] for r in rows) * 1.1))
    mem.legend()
    rt.plot(xs, [r["round_ms_median"] for r in rows], "o-", label="median round")
    rt.plot(xs, [r["us_per_example"] * 1e-3 * 40_000 for r in rows], "s--",
            label="per example x 40k examples")
    rt.set(xscale="log", xlabel="simulated clients", ylabel="ms", ylim=(0, None))
    rt.legend()
    fig.suptitle(f"{PER_ROUND} clients trained per round, FedProx synthetic (lazy), in-process")
    save_figure(fig, path)


def table(rows: list[dict]) -> str:
    lines = [
        "| simulated clients | trained per round | peak PSS GiB | prepare s | median round ms "
        "| examples / round | us per example |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']:,} | {r['per_round']} | {r['peak_pss_gib']:.2f} | "
            f"{r['prepare_s']:.1f} | {r['round_ms_median']:.0f} | "
            f"{statistics.median(r['examples_per_round']):,.0f} | {r['us_per_example']:.1f} |"
        )
    return "\n".join(lines)


def main(quick: bool = False) -> dict:
    """Every setting (quick: 100 and 1,000 clients, 3 rounds); the plot in benchmarks/."""
    clients = CLIENTS[:2] if quick else CLIENTS
    rounds = 3 if quick else 5
    rows = []
    for n in clients:
        rows.append(measure(n, rounds))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # partial results survive
    plot(rows, HERE / "scale.png")
    return {"workload": {str(n): overrides(n, rounds) for n in clients}, "rows": rows,
            "table": table(rows), "plot": "benchmarks/scale.png"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench_scale.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 clients only")
    parser.add_argument("--child", nargs=3, metavar=("CLIENTS", "ROUNDS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), Path(args.child[2]))
    else:
        print(table(main(args.quick)["rows"]))
