"""Carbon-aware shifting of FL training in time and space (issue #18): how much deferring
rounds to low-carbon hours, and picking clients on cleaner grids, avoids.

Part A (time, by replay): one real FedAvg run per region (Germany, Great Britain, France;
host and clients in that region), then its carbon bill replayed from every start date of 2020
under ``immediate`` and under deferral to the cleanest hours before a 24 h or 48 h deadline
(interruptible, or one contiguous block), with a perfect and a 5 % noisy forecast. A replay
charges the recorded energy at another clock, so the training itself is the same; the saving
is the difference in where its hours fall on the trace. A 10-round training and 12:00 UTC
starts show how the slack and the hour of submission change the picture.

Part B (time and space, real runs): 30 clients split equally over the three regions, 10 per
round, 3 seeds each of: random selection run immediately (baseline), carbon-aware selection
(spatial), deferral with a 48 h deadline (temporal), and both. Selection changes who trains,
so these cannot be replayed.

Every run is what ``fedlab-run`` runs (here in this process) into ``OUT/...`` (a finished run
is skipped when the study is run again); every table is made from the run records and the
replays only, and written to ``results.json`` / ``*.csv`` / ``results.md``. Run from the
repository root:

    python experiments/carbon_shifting/study.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import time
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REGIONS = ("DEU", "GBR", "FRA")
MIX = "DEU+GBR+FRA"
BASELINE = "immediate"

COMMON = ["simulation=inprocess", "carbon.tracking_mode=process", "carbon.intensity=trace",
          "clock.round_hours=1", "dataset=digits"]
#: Part A: 20 digits clients, all train every round (the host's own region as theirs).
TEMPORAL = ["num_clients=20", "clock.start=2020-01-01T00:00:00Z"]
#: Part B: the three-region population, a third of it per round (training and evaluation).
MIXED = ["num_clients=30", "strategy.fraction_train=0.34", "strategy.fraction_evaluate=0.34",
         "carbon.country=DEU", "carbon.regions={DEU:1,GBR:1,FRA:1}",
         "clock.start=2020-06-15T00:00:00Z"]
DEFER_48 = ["clock.policy=deadline", "clock.deadline_hours=48", "clock.interruptible=true"]
ARMS: dict[str, list[str]] = {
    "baseline": [],
    "spatial": ["strategy.selection=carbon_aware"],
    "temporal": DEFER_48,
    "both": ["strategy.selection=carbon_aware", *DEFER_48],
}

#: Replayed policies: label -> overrides (the forecast is a separate axis).
POLICIES: dict[str, list[str]] = {
    BASELINE: ["clock.policy=immediate"],
    "24 h": ["clock.policy=deadline", "clock.deadline_hours=24", "clock.interruptible=true"],
    "48 h": ["clock.policy=deadline", "clock.deadline_hours=48", "clock.interruptible=true"],
    "48 h block": ["clock.policy=deadline", "clock.deadline_hours=48",
                   "clock.interruptible=false"],
}
#: sweep -> (rounds, UTC hour of the start dates, policies, forecasts besides perfect)
SWEEPS: dict[str, tuple[int, int, tuple[str, ...], tuple[str, ...]]] = {
    "r20_00z": (20, 0, (BASELINE, "24 h", "48 h", "48 h block"), ("noisy",)),
    "r10_00z": (10, 0, (BASELINE, "24 h", "48 h"), ()),
    "r20_12z": (20, 12, (BASELINE, "24 h", "48 h"), ()),
}
#: Part B's baseline replayed as Part A's regions are (its 20 rounds from 00:00 UTC).
MIX_SWEEP = (20, 0, (BASELINE, "24 h", "48 h"), ())


def run(run_dir: Path, overrides: list[str]) -> Path:
    """One ``fedlab-run`` (in this process: a new process would pay the imports again)."""
    from hydra import compose, initialize_config_module

    from fedlab.config.schema import register_configs
    from fedlab.run import run_experiment

    args = [*COMMON, *overrides]
    register_configs()
    with initialize_config_module(config_module="fedlab.conf", version_base="1.3"):
        raw = compose(config_name="config", overrides=args)
    run_experiment(raw, run_dir, args)
    return run_dir


def start_dates(hour: int, every: int) -> list[str]:
    """Every ``every``-th day of 2020 (a leap year: 366 days) at ``hour``:00 UTC."""
    first = date(2020, 1, 1)
    return [f"{first + timedelta(days=d)}T{hour:02d}:00:00Z" for d in range(0, 366, every)]


def sweep(
    run_dir: Path, region: str, name: str, spec: tuple[int, int, tuple[str, ...], tuple[str, ...]],
    every: int,
) -> list[dict[str, Any]]:
    """Replay ``run_dir`` (a training of ``spec``'s rounds) from every ``every``-th day at
    ``spec``'s hour under each of its policies and forecasts; one row per (policy, forecast,
    start), with the avoided shares against ``immediate`` from the same start (the FL view
    ``client_grid_kg`` and the host's view ``emissions_kg``)."""
    from fedlab.trackers.carbon.replay import replay

    rounds, hour, policies, forecasts = spec
    starts = start_dates(hour, every)
    rows: list[dict[str, Any]] = []
    for policy in policies:
        for forecast in ("perfect", *(() if policy == BASELINE else forecasts)):
            overrides = [f"clock.start={','.join(starts)}", *POLICIES[policy],
                         f"carbon.forecast={forecast}"]
            for result in replay(run_dir, overrides):
                clock = result["clock"]
                rows.append({
                    "sweep": name, "region": region, "rounds": rounds, "start_hour": hour,
                    "policy": policy, "forecast": forecast, "start_utc": clock["start_utc"],
                    "client_grid_kg": result["client_grid_kg"],
                    "emissions_kg": result["emissions_kg"], "host_kg": result["host_kg"],
                    "communication_kg": result["communication_kg"],
                    "sim_hours": clock["sim_hours"], "wait_hours": clock["wait_hours"],
                    "deadline_met": clock["deadline_met"],
                })
    base = {r["start_utc"]: r for r in rows if r["policy"] == BASELINE}
    for row in rows:
        ref = base[row["start_utc"]]
        row["avoided_pct"] = 100.0 * (1.0 - row["client_grid_kg"] / ref["client_grid_kg"])
        row["avoided_host_pct"] = 100.0 * (1.0 - row["emissions_kg"] / ref["emissions_kg"])
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (sweep, region, policy, forecast): the spread of the avoided share over start dates."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["policy"] != BASELINE:
            key = (row["sweep"], row["region"], row["policy"], row["forecast"])
            groups.setdefault(key, []).append(row)
    out = []
    for (name, region, policy, forecast), mine in groups.items():
        pct = np.array([r["avoided_pct"] for r in mine])
        host = np.array([r["avoided_host_pct"] for r in mine])
        base = [r["client_grid_kg"] for r in rows if r["sweep"] == name
                and r["region"] == region and r["policy"] == BASELINE]
        out.append({
            "sweep": name, "region": region, "rounds": mine[0]["rounds"],
            "start_hour": mine[0]["start_hour"], "policy": policy, "forecast": forecast,
            "starts": len(mine), "median_pct": float(np.median(pct)),
            "mean_pct": float(pct.mean()), "p10_pct": float(np.percentile(pct, 10)),
            "p90_pct": float(np.percentile(pct, 90)),
            "worse_share": float((pct < 0).mean()),
            "host_view_median_pct": float(np.median(host)),
            "mean_wait_hours": statistics.fmean(r["wait_hours"] for r in mine),
            "deadline_met_share": statistics.fmean(bool(r["deadline_met"]) for r in mine),
            "immediate_median_g": 1000.0 * float(np.median(base)),
        })
    return out


def arm_figures(run_dir: Path) -> dict[str, float]:
    """What Part B compares, from one run's record (and its clients' regions)."""
    from fedlab.record.run_dir import read_csv

    r = json.loads((run_dir / "results.json").read_text())
    trained = [c for c in read_csv(run_dir / "clients.csv")
               if c["phase"] == "train" and c["status"] == "ok"]
    return {
        "accuracy": r["accuracy"],
        "client_grid_g": 1000.0 * r["carbon"]["client_grid_kg"],
        "host_view_g": 1000.0 * r["carbon"]["emissions_kg"],
        "sim_hours": r["clock"]["sim_hours"],
        "wait_hours": r["clock"]["wait_hours"],
        "fra_share": sum(c["region"] == "FRA" for c in trained) / len(trained),
        "communication_share": r["carbon"]["communication_kg"] / r["carbon"]["client_grid_kg"],
    }


ARM_COLUMNS = ("accuracy", "client_grid_g", "host_view_g", "sim_hours", "wait_hours",
               "fra_share", "communication_share")


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for a single seed, as in a --quick run)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def arm_table(out: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """Part B per arm: mean and sd over seeds, and the client-grid share avoided against the
    baseline and against spatial-only of the same seed (paired: same data split, same initial
    model; the second says what deferral adds on top of carbon-aware selection)."""
    figs = {arm: [arm_figures(out / "mixed" / arm / f"seed{s}") for s in seeds] for arm in ARMS}
    table = []
    for arm, rows in figs.items():
        entry: dict[str, Any] = {"arm": arm, "seeds": len(rows)}
        for col in ARM_COLUMNS:
            entry[col], entry[f"{col}_sd"] = mean_sd([r[col] for r in rows])
        for ref in ("baseline", "spatial"):
            avoided = [100.0 * (1.0 - r["client_grid_g"] / b["client_grid_g"])
                       for r, b in zip(rows, figs[ref], strict=True)]
            entry[f"avoided_vs_{ref}_pct"], entry[f"avoided_vs_{ref}_pct_sd"] = mean_sd(avoided)
        table.append(entry)
    return table


def replay_check(out: Path, seeds: list[int]) -> list[dict[str, float]]:
    """The temporal arm replayed from the baseline's record against the real temporal run:
    the same seed samples the same clients, so the two should agree to the host's
    measurement noise (the evidence that Part A's replays stand for real runs)."""
    from fedlab.trackers.carbon.replay import replay

    rows = []
    for s in seeds:
        (result,) = replay(out / "mixed" / "baseline" / f"seed{s}", DEFER_48)
        real = json.loads((out / "mixed" / "temporal" / f"seed{s}" / "results.json").read_text())
        rows.append({"seed": s, "replayed_g": 1000.0 * result["client_grid_kg"],
                     "real_g": 1000.0 * real["carbon"]["client_grid_kg"]})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows: list[dict[str, Any]], summary: list[dict[str, Any]],
             arms: list[dict[str, Any]], check: list[dict[str, float]]) -> str:
    """The README's tables, as the numbers came out."""
    lines = ["## Part A: % of immediate's client-grid emissions avoided, over start dates", "",
             "| sweep | region | policy | forecast | median | mean | p10 | p90 | worse | "
             "host view (median) | mean wait h | immediate median g |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary:
        lines.append(
            f"| {s['sweep']} | {s['region']} | {s['policy']} | {s['forecast']} | "
            f"{s['median_pct']:.1f} | {s['mean_pct']:.1f} | {s['p10_pct']:.1f} | "
            f"{s['p90_pct']:.1f} | {100 * s['worse_share']:.0f} % | "
            f"{s['host_view_median_pct']:.1f} | {s['mean_wait_hours']:.1f} | "
            f"{s['immediate_median_g']:.3f} |")
    lines += ["", "## Part B: three-region population (mean ± sd over seeds)", "",
              "| arm | accuracy | client-grid gCO2e | avoided vs baseline | host view gCO2e | "
              "sim hours | wait hours | FRA share of trainings |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for a in arms:
        lines.append(
            f"| {a['arm']} | {a['accuracy']:.4f} ± {a['accuracy_sd']:.4f} | "
            f"{a['client_grid_g']:.4f} ± {a['client_grid_g_sd']:.4f} | "
            f"{a['avoided_vs_baseline_pct']:.1f} ± {a['avoided_vs_baseline_pct_sd']:.1f} % | "
            f"{a['host_view_g']:.4f} ± {a['host_view_g_sd']:.4f} | "
            f"{a['sim_hours']:.1f} ± {a['sim_hours_sd']:.1f} | "
            f"{a['wait_hours']:.1f} ± {a['wait_hours_sd']:.1f} | "
            f"{100 * a['fra_share']:.0f} ± {100 * a['fra_share_sd']:.0f} % |")
    both = next(a for a in arms if a["arm"] == "both")
    comm = [100.0 * r["communication_kg"] / r["client_grid_kg"] for r in rows]
    lines += ["", f"Both against spatial-only (what deferral adds on top of selection, paired "
              f"by seed): {both['avoided_vs_spatial_pct']:.1f} ± "
              f"{both['avoided_vs_spatial_pct_sd']:.1f} % of spatial-only's client-grid "
              "emissions.", "",
              f"Communication's share of client-grid emissions: {min(comm):.2f} to "
              f"{max(comm):.2f} % over all {len(rows)} replays; in Part B "
              + ", ".join(f"{a['arm']} {100 * a['communication_share']:.2f} %" for a in arms)
              + ".", "",
              "Replay check (temporal arm, client-grid gCO2e): "
              + "; ".join(f"seed {c['seed']}: replayed {c['replayed_g']:.5f}, real "
                          f"{c['real_g']:.5f}" for c in check)]
    return "\n".join(lines)


def figures(out: Path, report: Path, rows: list[dict[str, Any]],
            arms: list[dict[str, Any]]) -> None:
    """The replay sweeps' avoided shares, one deferred run's timeline, Part B's bars."""
    from matplotlib.figure import Figure

    from fedlab.record.run_dir import read_csv, save_figure
    from fedlab.reports.timeline import avoided_figure, timeline_figure
    from fedlab.trackers.carbon.traces import bundled_trace, parse_utc

    for name in SWEEPS:
        mine = [dict(r, emissions_kg=r["client_grid_kg"],
                     policy=r["policy"] + (" noisy" if r["forecast"] == "noisy" else ""))
                for r in rows if r["sweep"] == name]
        rounds, hour = mine[0]["rounds"], mine[0]["start_hour"]
        fig = avoided_figure(mine, title=f"{rounds} rounds of 1 h, starts at {hour:02d}:00 UTC, "
                             "client-grid emissions")
        save_figure(fig, report / f"avoided_{name}.png")

    run_dir = out / "mixed" / "temporal" / "seed0"
    spans = [(int(r["round"]), parse_utc(r["sim_start_utc"]), parse_utc(r["sim_end_utc"]))
             for r in read_csv(run_dir / "rounds.csv") if r["sim_start_utc"]]
    lo, hi = spans[0][1] - 6 * 3600, max(b for _, _, b in spans) + 6 * 3600
    intensity = {}
    for region in REGIONS:
        trace = bundled_trace(region)
        keep = (trace.times >= lo) & (trace.times <= hi)
        intensity[region] = (trace.times[keep], trace.values[keep])
    clients = [((parse_utc(c["sim_start_utc"]) + parse_utc(c["sim_end_utc"])) / 2, c["region"])
               for c in read_csv(run_dir / "clients.csv")
               if c["phase"] == "train" and c["status"] == "ok"]
    fig = timeline_figure(intensity, spans, clients,
                          title="three-region population, deadline 48 h, seed 0")
    save_figure(fig, report / "timeline_temporal_seed0.png")

    fig = Figure(figsize=(13, 3.6))
    panels = (("client_grid_g", "client-grid gCO2e"), ("accuracy", "central accuracy"),
              ("sim_hours", "simulated hours"), ("fra_share", "share of trainings in FRA"))
    names = [a["arm"] for a in arms]
    for ax, (col, label) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        ax.bar(names, [a[col] for a in arms], yerr=[a[f"{col}_sd"] for a in arms],
               color="0.55", capsize=3)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("30 clients (10 DEU, 10 GBR, 10 FRA), 10 per round, 20 rounds: "
                 "mean ± sd over seeds", fontsize=10)
    save_figure(fig, report / "mixed_arms.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None,
                        help="run directories (default runs/, or runs/quick with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 6-round trainings, every 30th day (a smoke test; its "
                        "tables and plots go to the runs folder, not beside this script)")
    args = parser.parse_args(argv)
    from fedlab.console import setup_logging

    setup_logging()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("fedlab").setLevel(logging.WARNING)  # progress lines are printed here
    out = args.out or HERE / "runs" / ("quick" if args.quick else "")
    report = out if args.quick else HERE
    seeds = list(range(1 if args.quick else args.seeds))
    every = 30 if args.quick else 1
    scale = (lambda n: min(n, 6)) if args.quick else (lambda n: n)
    tic = time.monotonic()

    def progress(what: str) -> None:
        print(f"[{time.monotonic() - tic:6.0f} s] {what}", flush=True)

    rows: list[dict[str, Any]] = []
    for region in REGIONS:
        for name, (rounds, *rest) in SWEEPS.items():
            n = scale(rounds)
            run_dir = run(out / "temporal" / f"{region}_r{n}",
                          [*TEMPORAL, f"num_rounds={n}", f"carbon.country={region}",
                           f"carbon.regions={region}"])
            rows += sweep(run_dir, region, name, (n, *rest), every)
            progress(f"{region} {name}: {len(rows)} replays so far")
    for arm, overrides in ARMS.items():
        for seed in seeds:
            run(out / "mixed" / arm / f"seed{seed}",
                [*MIXED, *overrides, f"num_rounds={scale(20)}", f"seed={seed}"])
            progress(f"three-region {arm} seed {seed}")
    rows += sweep(out / "mixed" / "baseline" / "seed0", MIX, "r20_00z",
                  (scale(MIX_SWEEP[0]), *MIX_SWEEP[1:]), every)
    progress(f"three-region baseline replayed: {len(rows)} replays in all")

    summary = summarise(rows)
    arms = arm_table(out, seeds)
    check = replay_check(out, seeds)
    write_csv(out / "replays.csv", rows)
    write_csv(report / "replay_summary.csv", summary)
    write_csv(report / "mixed_arms.csv", arms)
    (report / "results.json").write_text(json.dumps(
        {"replay_summary": summary, "mixed_arms": arms, "replay_check": check,
         "replays": len(rows), "start_dates_every_days": every, "seeds": seeds}, indent=1))
    text = markdown(rows, summary, arms, check)
    (report / "results.md").write_text(text + "\n")
    figures(out, report, rows, arms)
    progress("tables and figures written")
    print(text)


if __name__ == "__main__":
    main()
