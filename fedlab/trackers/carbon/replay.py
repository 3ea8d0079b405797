"""Replay: a finished run's carbon bill under another clock, without training again.

When a setting changes only *when* rounds run (the clock's start date, a temporal policy, a
deadline), or *which intensities* they are charged at (another trace, forecast or kind), the
model trajectory is the same: the same clients train the same steps and use the same energy.
So the record's energy (``carbon_ledger.json``: every round's and client's kWh; ``clients.csv``:
the devices' kWh) is charged again on the clock and grid of the new settings, through the same
scheduler and ledger code a live run uses (:meth:`CarbonLedger.recharged`); a replay of a run
under its own settings gives back its own numbers. A setting that changes who trains when
(carbon-aware selection, availability windows) is refused: that needs a real run.

A sweep over every start date of a year is seconds of work (no data, no model, no Ray).
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from fedlab.config.errors import ConfigError

#: Settings a replay may change: they move rounds in time or change the intensities only.
REPLAYABLE = (
    "clock.start", "clock.policy", "clock.deadline_hours", "clock.interruptible",
    "clock.threshold_g_per_kwh", "clock.max_wait_hours", "clock.signal", "clock.round_hours",
    "clock.target_accuracy", "carbon.intensity", "carbon.traces", "carbon.intensity_kind",
    "carbon.intensity_profile", "carbon.forecast", "carbon.forecast_error",
    "carbon.forecast_files", "carbon.country", "carbon.regions",
)


class ReplayError(ConfigError):
    """A replay that cannot be made (one line naming the key or file)."""


def parse_overrides(overrides: Sequence[str]) -> list[dict[str, Any]]:
    """``key=value`` overrides, with comma-separated values swept (every combination, in
    order), as ``fedlab-run -m`` does: ``clock.start=2020-01-01T00:00:00Z,2020-07-01T00:00:00Z``.
    Values are read as YAML (numbers, booleans, null, ``{DEU: file.csv}``)."""
    axes: list[list[tuple[str, Any]]] = []
    for text in overrides:
        key, sep, value = text.partition("=")
        key = key.strip().lstrip("+")
        if not sep or not key:
            raise ReplayError("overrides", f"{text!r} is not key=value")
        if not any(key == k or key.startswith(k + ".") for k in REPLAYABLE):
            raise ReplayError(
                key, "a replay changes only when rounds run and what they are charged at: "
                f"one of {', '.join(REPLAYABLE)} (anything else needs fedlab-run)"
            )
        values = [value] if value.startswith(("{", "[")) else value.split(",")
        axes.append([(key, _value(v)) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def _value(text: str) -> Any:
    """An override's value as YAML reads it, but a date-time stays the text it was (the
    config holds ISO strings; YAML would make it a datetime)."""
    if not text.strip():
        return None
    value = yaml.safe_load(text)
    return text.strip() if isinstance(value, (datetime.date, datetime.datetime)) else value


class RecordedRun:
    """What a replay reads from a run directory: its config and its recorded energy."""

    def __init__(self, run_dir: Path) -> None:
        from fedlab.config.schema import FedlabConfig
        from fedlab.record.run_dir import read_csv
        from fedlab.trackers.carbon.accounting import LEDGER_FILE

        self.dir = run_dir
        ledger = run_dir / LEDGER_FILE
        for name in ("config.yaml", "results.json", "clients.csv"):
            if not (run_dir / name).is_file():
                raise ReplayError("RUN_DIR", f"{run_dir} is not a run directory (no {name})")
        if not ledger.is_file():
            raise ReplayError(
                "RUN_DIR", f"{run_dir} has no {LEDGER_FILE}: its run had carbon=off or was "
                "made before fedlab recorded it"
            )
        self.state = json.loads(ledger.read_text())
        self.results = json.loads((run_dir / "results.json").read_text())
        self.config = OmegaConf.merge(
            OmegaConf.structured(FedlabConfig), OmegaConf.load(run_dir / "config.yaml")
        )
        self.clients = read_csv(run_dir / "clients.csv")
        self._fed: Any = None

    def experiment(self, changes: dict[str, Any]) -> Any:
        """The recorded experiment with ``changes`` applied, validated as fedlab-run would."""
        from fedlab.config.experiment import Experiment

        raw: DictConfig = OmegaConf.merge(self.config)  # a copy
        for key, value in changes.items():
            OmegaConf.update(raw, key, value, merge=False)
        exp = Experiment.from_config(raw)
        for cfg, when in ((self.config, "recorded run"), (exp.cfg, "replay")):
            if cfg.strategy.selection == "carbon_aware" or cfg.clock.availability is not None:
                raise ReplayError(
                    "strategy.selection" if cfg.strategy.selection == "carbon_aware"
                    else "clock.availability",
                    f"in the {when} who trains depends on when rounds run, so the recorded "
                    "energy does not carry over: run it with fedlab-run",
                )
        return exp

    def federation(self, exp: Any) -> Any:
        """The data (only simulated devices need them, for their round times), loaded once."""
        if not exp.cfg.devices.enabled:
            return None
        if self._fed is None:
            self._fed = exp.load_data()
        return self._fed

    def outside_rounds(self) -> tuple[float, float]:
        """The host's energy outside rounds (start-up, gaps) and CodeCarbon's emissions of it."""
        carbon = self.results.get("carbon") or {}
        rows = self.state["ledger"]["round_rows"]
        kwh = (carbon.get("host_kwh") or 0.0) - math.fsum(r["host_kwh"] or 0.0 for r in rows)
        kg = (carbon.get("host_kg") or 0.0) - math.fsum(r["codecarbon_kg"] or 0.0 for r in rows)
        return max(kwh, 0.0), max(kg, 0.0)


def replay_one(run: RecordedRun, changes: dict[str, Any]) -> dict[str, Any]:
    """The carbon bill of ``run`` under ``changes``: totals, the clock, and per-round rows."""
    from fedlab.config.clock import format_utc
    from fedlab.fl.clock import check_timeline, client_windows, clock_summary, needed_regions
    from fedlab.trackers.carbon.ledger import CarbonLedger
    from fedlab.trackers.carbon.network import NetworkModel

    exp = run.experiment(changes)
    fed = run.federation(exp)
    check_timeline(exp, fed)
    scheduler = exp.scheduler(fed)
    grid = exp.grid()
    state = run.state["ledger"]
    recorded = CarbonLedger(
        state["client_regions"], state["host_region"],
        NetworkModel(state["network_kwh_per_gb"]), state["client_links"],
    )
    recorded.load_state_dict(state)
    rows_by_round: dict[int, list[dict[str, Any]]] = {}
    for row in run.clients:
        rows_by_round.setdefault(int(row["round"]), []).append(row)
    rounds = [int(r["round"]) for r in recorded.round_rows]
    windows = {}
    for r in rounds:
        time = scheduler.round_time(r)
        windows[r] = (time.start_s, time.end_s)
    per_client = {r: client_windows(scheduler, r, rows_by_round.get(r, [])) for r in rounds}
    ledger = recorded.recharged(
        grid, windows, per_client, exp.regions(), exp.cfg.carbon.country.strip().upper()
    )
    outside_kwh, outside_kg = run.outside_rounds()
    if grid.dated:
        outside_kg = outside_kwh * grid.actual(ledger.host_region, 0.0) / 1000.0
    totals = ledger.totals()
    host_kg = totals["host_kg"] + outside_kg
    intensity = exp.region_intensity()
    edge_kg = 0.0
    for row in run.clients:
        if row.get("device_kwh") not in (None, ""):
            r, time = int(row["round"]), scheduler.round_time(int(row["round"]))
            a = time.start_s if row["phase"] == "train" else time.start_s + time.train_s
            b = a + (time.train_s if row["phase"] == "train" else time.evaluate_s)
            edge_kg += float(row["device_kwh"]) * intensity(int(row["client"]), a, b) / 1000.0
    regions = needed_regions(exp.cfg, exp.regions())
    round_rows = []
    for row in ledger.round_rows:
        r = int(row["round"])
        time = scheduler.round_time(r)
        issued = time.start_s - time.wait_s
        start = exp.cfg.clock.start_epoch
        out = {
            "round": r,
            "sim_start_utc": None if start is None else format_utc(start + time.start_s),
            "sim_end_utc": None if start is None else format_utc(start + time.end_s),
            "wait_s": time.wait_s,
            "emissions_kg": (row["host_kg"] or 0.0) + row["comm_kg"],
        }
        for region in regions:
            out[f"intensity_{region}"] = grid.actual(region, time.start_s, time.end_s)
            out[f"forecast_{region}"] = grid.forecast(region, time.start_s, time.end_s, issued)
        round_rows.append(out)
    clock = clock_summary(exp.cfg, scheduler, [{"round": r} for r in rounds])
    return {
        "changes": changes,
        "emissions_kg": host_kg + totals["comm_kg"],
        "host_kg": host_kg,
        "communication_kg": totals["comm_kg"],
        "compute_kg": math.fsum(
            c["compute_kg"] for c in ledger.client_rows if c["compute_kg"] is not None
        ),
        "client_grid_kg": math.fsum(
            t["compute_kg_client_grid"] + t["comm_kg"] for t in totals["by_region"].values()
        ),
        "edge_kg": edge_kg,
        "intensity": grid.describe(regions),
        "clock": clock,
        "rounds": round_rows,
        "_grid": grid,
    }


def replay(run_dir: Path, overrides: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Replay ``run_dir`` under each combination of ``overrides`` (see :func:`parse_overrides`)."""
    combos = parse_overrides(overrides)
    run = RecordedRun(Path(run_dir))
    for changes in combos:
        yield replay_one(run, changes)
