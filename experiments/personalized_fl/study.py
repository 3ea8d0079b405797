"""What each algorithm costs for the accuracy it buys: the stateful and personalized methods
beside FedAvg, on the settings their papers use, several seeds each.

Part A (one global model): FedAvg, FedProx, SCAFFOLD, FedDyn, FedNova, MOON on FedProx's
Synthetic(1, 1) and on digits with Dirichlet(0.1) label skew.
Part B (a model per client): FedAvg, FedBN, FedPer, FedRep, Ditto and FedAvg + fine-tuning on
a feature shift (digits in four rotations, one rotation per client) and on a pathological label
split (two classes per client), with BatchNorm in every model so FedBN applies and the models
compare like for like.

Every run is what ``fedlab-run`` runs (here in this process), into
``OUT/<setting>/<method>/seed<k>`` (a finished run is skipped when the study is run again); the
tables are made from the run records only, and
``fedlab-compare`` draws each setting's Pareto fronts. Run from the repository root:

    python experiments/personalized_fl/study.py [--seeds 3] [--rounds 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPARE = Path(sys.executable).parent / "fedlab-compare"

COMMON = ["simulation=inprocess", "carbon.tracking_mode=process"]
#: setting -> (its overrides, the methods compared, the accuracy that ranks them)
SETTINGS: dict[str, tuple[list[str], list[str], str]] = {
    "synthetic_1_1": (
        ["dataset=synthetic", "partition=natural", "num_clients=30", "strategy.fraction_train=0.34",
         "model=mlp", "model.hidden=[64]", "client.local_epochs=2"],
        ["fedavg", "fedprox", "scaffold", "feddyn", "fednova", "moon"],
        "accuracy",
    ),
    "digits_dirichlet_0.1": (
        ["dataset=digits", "partition=dirichlet", "partition.alpha=0.1",
         "partition.min_partition_size=5", "num_clients=20", "strategy.fraction_train=0.5",
         "model=mlp", "model.hidden=[64]"],
        ["fedavg", "fedprox", "scaffold", "feddyn", "fednova", "moon"],
        "accuracy",
    ),
    "digits_rotated": (
        ["dataset=digits_rotated", "partition=natural", "num_clients=20",
         "strategy.fraction_train=0.5", "model=mlp", "model.hidden=[64]", "model.norm=batch"],
        ["fedavg", "fedbn", "fedper", "fedrep", "ditto", "finetune"],
        "personalized_accuracy",
    ),
    "digits_pathological": (
        ["dataset=digits", "partition=pathological", "num_clients=20",
         "strategy.fraction_train=0.5", "model=mlp", "model.hidden=[64]", "model.norm=batch"],
        ["fedavg", "fedbn", "fedper", "fedrep", "ditto", "finetune"],
        "personalized_accuracy",
    ),
}


def run(out: Path, setting: str, method: str, seed: int, rounds: int) -> Path:
    """One ``fedlab-run`` (in this process: a new process would pay the imports again)."""
    from hydra import compose, initialize_config_module

    from fedlab.config.schema import register_configs
    from fedlab.run import run_experiment

    overrides, _, _ = SETTINGS[setting]
    run_dir = out / setting / method / f"seed{seed}"
    args = [*COMMON, *overrides, f"strategy={method}", f"seed={seed}", f"num_rounds={rounds}"]
    register_configs()
    with initialize_config_module(config_module="fedlab.conf", version_base="1.3"):
        raw = compose(config_name="config", overrides=args)
    run_experiment(raw, run_dir, args)
    return run_dir


def figures(run_dir: Path) -> dict[str, float | None]:
    r = json.loads((run_dir / "results.json").read_text())
    p = r.get("personalized_accuracy") or {}
    carbon = r.get("carbon") or {}
    comm = r["communication"]
    return {
        "accuracy": r["accuracy"],
        "personalized_accuracy": p.get("mean"),
        "worst_10pct": p.get("worst_10pct"),
        "global_on_clients": (p.get("global") or {}).get("mean"),
        "mbytes": (comm["bytes_down"] + comm["bytes_up"]) / 1e6,
        "kwh": carbon.get("energy_kwh"),
        "gco2e": None if carbon.get("emissions_kg") is None else 1000 * carbon["emissions_kg"],
        "duration_s": r["duration_s"],
    }


def mean_sd(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "n/a"
    m = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.4g} ± {sd:.2g}"


COLUMNS = ("accuracy", "personalized_accuracy", "worst_10pct", "mbytes", "kwh", "gco2e")


def table(out: Path, setting: str, seeds: list[int]) -> str:
    _, methods, _ = SETTINGS[setting]
    lines = [
        f"### {setting}",
        "",
        "| method | central acc | personalized acc | worst 10 % | MB | kWh | gCO2e |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method in methods:
        rows = [figures(out / setting / method / f"seed{s}") for s in seeds]
        cells = [mean_sd([r[c] for r in rows]) for c in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=HERE / "runs")
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 rounds (a smoke test)")
    args = parser.parse_args(argv)
    from fedlab.console import setup_logging

    setup_logging()
    logging.getLogger("flwr").setLevel(logging.WARNING)  # one line per round is enough here
    seeds = list(range(1 if args.quick else args.seeds))
    rounds = 3 if args.quick else args.rounds
    total = sum(len(m) for _, m, _ in SETTINGS.values()) * len(seeds)
    done = 0
    for setting, (_, methods, _) in SETTINGS.items():
        for method in methods:
            for seed in seeds:
                run(args.out, setting, method, seed, rounds)
                done += 1
                print(f"[{done}/{total}] {setting} {method} seed {seed}", flush=True)
    report = ["## Results (mean ± sd over seeds)", ""]
    for setting, (_, _, metric) in SETTINGS.items():
        report += [table(args.out, setting, seeds), ""]
        subprocess.run(
            [str(COMPARE), str(args.out / setting), "--by", "strategy", "--metric", metric,
             "--out", str(args.out / setting / "comparison")],
            check=True, capture_output=True,
        )
    (args.out / "results.md").write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
