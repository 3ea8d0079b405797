"""``fedlab-carbon``: carbon intensity traces and replays of finished runs (docs/carbon.md).

* ``fedlab-carbon replay RUN_DIR [KEY=VALUE ...] --out DIR``: a finished run's carbon bill
  under other start dates, traces, forecasts and temporal policies, from its recorded energy,
  without training again (:mod:`fedlab.trackers.carbon.replay`); comma-separated values are
  swept. Writes ``replay.csv`` (a row per setting), ``replay_rounds.csv``, ``timeline.png``
  (the first setting) and, when the sweep holds ``clock.policy=immediate`` and another policy,
  ``avoided.png``.
* ``fedlab-carbon convert SRC DST``: an Electricity Maps hourly CSV export as a trace.
* ``fedlab-carbon fetch REGION START END --token T --cache DIR``: a region's history from the
  ENTSO-E Transparency Platform (entsoe-py), as a cached trace.

Every error is one line, exit code 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "fedlab-carbon"
#: Settings that make a policy, not a scenario: rows that differ only in them share a baseline.
POLICY_KEYS = (
    "clock.policy", "clock.deadline_hours", "clock.interruptible", "clock.threshold_g_per_kwh",
    "clock.max_wait_hours", "carbon.forecast", "carbon.forecast_error",
)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def policy_label(clock: dict[str, Any]) -> str:
    """``immediate``, ``deadline 48h``, ``deadline 48h block``, ``threshold`` (for tables)."""
    label = clock["policy"]
    if clock.get("deadline_hours") is not None and label != "immediate":
        label += f" {clock['deadline_hours']:g}h"
    if label != "immediate" and not clock.get("interruptible", True):
        label += " block"
    return label


def summary_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``replay.csv`` row per replay, with the emissions avoided against the replay of
    ``clock.policy=immediate`` in the same scenario (same settings but the policy's)."""
    rows = []
    for res in results:
        clock = res["clock"]
        row = {f"set.{k}": v for k, v in res["changes"].items()}
        row.update(
            start_utc=clock["start_utc"], end_utc=clock["end_utc"], policy=policy_label(clock),
            sim_hours=clock["sim_hours"], wait_hours=clock["wait_hours"],
            deadline_met=clock["deadline_met"], region=",".join(res["intensity"]["regions"]),
            emissions_kg=res["emissions_kg"], host_kg=res["host_kg"],
            communication_kg=res["communication_kg"], client_grid_kg=res["client_grid_kg"],
            edge_kg=res["edge_kg"],
        )
        rows.append(row)
    baselines = {}
    for res, row in zip(results, rows, strict=True):
        if res["clock"]["policy"] == "immediate":
            scenario = tuple(sorted((k, str(v)) for k, v in res["changes"].items()
                                    if k not in POLICY_KEYS))
            baselines.setdefault(scenario, row)
    for res, row in zip(results, rows, strict=True):
        scenario = tuple(sorted((k, str(v)) for k, v in res["changes"].items()
                                if k not in POLICY_KEYS))
        base = baselines.get(scenario)
        for key in ("emissions_kg", "client_grid_kg"):
            ok = base is not None and base[key] > 0
            row[f"avoided_{key.removesuffix('_kg')}_pct"] = (
                100.0 * (1.0 - row[key] / base[key]) if ok else math.nan
            )
    return rows


def _replay(args: argparse.Namespace) -> int:
    from fedlab.record.run_dir import save_figure, write_csv
    from fedlab.reports.timeline import avoided_figure, timeline_figure
    from fedlab.trackers.carbon.replay import replay

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return _fail(f"--out: {out} exists and is not an empty directory (nothing overwritten)")
    results = list(replay(Path(args.run_dir), args.overrides))
    rows = summary_rows(results)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(out / "replay.csv", rows, columns)
    per_round = [{"replay": i, **r} for i, res in enumerate(results) for r in res["rounds"]]
    write_csv(out / "replay_rounds.csv", per_round, list(dict.fromkeys(
        k for r in per_round for k in r)))
    first = results[0]
    grid = first["_grid"]
    if grid.dated and first["rounds"]:
        from fedlab.config.clock import parse_utc

        spans = [(r["round"], parse_utc(r["sim_start_utc"]), parse_utc(r["sim_end_utc"]))
                 for r in first["rounds"]]
        a, b = spans[0][1] - 6 * 3600, max(s[2] for s in spans) + 6 * 3600
        series = {region: (t.window(a, b).times.tolist(), t.window(a, b).values.tolist())
                  for region, t in grid.traces.items()}
        save_figure(timeline_figure(series, spans, kind=grid.kind,
                                    title=f"replay of {Path(args.run_dir).name}"),
                    out / "timeline.png")
    policies = {row["policy"] for row in rows}
    if "immediate" in policies and len(policies) > 1:
        sweep = [{**row, "avoided_pct": row["avoided_emissions_pct"]} for row in rows
                 if not math.isnan(row["avoided_emissions_pct"])]
        save_figure(avoided_figure(sweep, baseline="immediate"), out / "avoided.png")
    best = min(rows, key=lambda r: r["emissions_kg"])
    print(f"{PROG}: {len(rows)} replays of {args.run_dir} -> {out} | lowest "
          f"{1000 * best['emissions_kg']:.3g} gCO2e ({best['policy']}, {best['start_utc']})")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from fedlab.trackers.carbon.sources import from_electricity_maps

    dst = Path(args.dst)
    if dst.exists():
        return _fail(f"DST: {dst} exists (nothing overwritten)")
    path = from_electricity_maps(args.src, dst, column=args.column)
    print(f"{PROG}: wrote {path}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from fedlab.trackers.carbon.sources import fetch_entsoe

    path = fetch_entsoe(args.region, args.start, args.end, args.token, args.cache)
    print(f"{PROG}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its help is the command's documentation)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("replay", help="a finished run's carbon bill under other settings")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="clock.* and carbon.* settings, as for fedlab-run; a,b,c sweeps")
    rep.add_argument("--out", required=True, help="a new (or empty) directory for the results")
    rep.set_defaults(run=_replay)
    conv = sub.add_parser("convert", help="an Electricity Maps hourly CSV export -> a trace")
    conv.add_argument("src", metavar="SRC")
    conv.add_argument("dst", metavar="DST")
    conv.add_argument("--column", choices=("lca", "direct"), default="lca")
    conv.set_defaults(run=_convert)
    fetch = sub.add_parser("fetch", help="a region's history from ENTSO-E -> a cached trace")
    fetch.add_argument("region", metavar="REGION")
    fetch.add_argument("start", metavar="START", help="YYYY-MM-DD or ISO 8601 UTC")
    fetch.add_argument("end", metavar="END")
    fetch.add_argument("--token", required=True, help="ENTSO-E Transparency Platform API key")
    fetch.add_argument("--cache", default="carbon_traces", help="cache directory")
    fetch.set_defaults(run=_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for any bad input, in one line)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ValueError, OSError) as err:  # ConfigError, TraceError, ReplayError among them
        return _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)


if __name__ == "__main__":
    sys.exit(main())
