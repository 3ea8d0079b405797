"""Time to accuracy on the simulated device clock, from run records only.

    python experiments/device_mix/time_to_accuracy.py multirun/device_mix --target 0.9

For each run: its strategy and device mix, final accuracy, the simulated seconds and edge
kWh/kgCO2e spent until centralized accuracy first reached ``--target`` (from rounds.csv), the
totals, and the client-rounds that missed the deadline. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedlab.record.reader import load_runs, number


def to_target(rounds: list[dict[str, str]], target: float) -> tuple[float, float, float] | None:
    """(simulated s, edge kWh, edge kg) spent until accuracy first reached ``target``."""
    seconds = kwh = kg = 0.0
    for row in rounds:
        if row["round"] != "0":
            seconds += number(row["sim_duration_s"]) or 0.0
            kwh += number(row["edge_kwh"]) or 0.0
            kg += number(row["edge_kg"]) or 0.0
        if (number(row["central_accuracy"]) or 0.0) >= target:
            return seconds, kwh, kg
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--target", type=float, default=0.9)
    args = parser.parse_args()
    print(
        f"| strategy | devices | accuracy | sim s to {args.target:g} | edge Wh to {args.target:g} "
        "| sim s total | edge Wh total | edge gCO2e total | missed deadline |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in load_runs(args.paths):
        devices = run.results.get("devices")
        if not run.completed or not devices:
            continue
        fleet = ", ".join(f"{n} {name}" for name, n in devices["clients"].items())
        reached = to_target(run.rounds, args.target)
        time, energy = (
            ("not reached", "-")
            if reached is None
            else (
                f"{reached[0]:.2f}",
                f"{1000 * reached[1]:.3f}",
            )
        )
        print(
            f"| {run.config['strategy.name']} | {fleet} "
            f"| {run.results['accuracy']:.4f} | {time} | {energy} "
            f"| {devices['sim_time_s']:.2f} | {1000 * devices['edge_kwh']:.3f} "
            f"| {1000 * devices['edge_kg']:.3f} | {devices['clients_missed_deadline']} |"
        )


if __name__ == "__main__":
    main()
