"""The dated clock and carbon by the hour, end to end: intensities at the simulated timestamps,
energy spread over hour boundaries, a deferral on a hand-made trace, start-up refusals, and a
replay that equals a real run. Expected values are computed here from the CSV files directly
(csv module, by hand), not through fedlab's trace code."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from calendar import timegm
from pathlib import Path

import pytest

from fedlab.config.experiment import Experiment
from fedlab.config.schema import ConfigError

BUNDLED = Path(__file__).parents[1] / "fedlab" / "trackers" / "carbon" / "traces"
#: A small dated run: 3 rounds of 1 h, DEU clients and host, in-process.
DATED = (
    "dataset=iris", "num_clients=3", "num_rounds=3", "simulation=inprocess",
    "carbon.intensity=trace", "carbon.measure_power_secs=0.5", "trackers.audit.fairness=false",
    "trackers.audit.explanations=false",
)


def _epoch(text: str) -> float:
    return float(timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def _csv_trace(path: Path) -> dict[float, float]:
    with path.open(newline="") as fh:
        return {_epoch(r["timestamp_utc"]): float(r["gco2_per_kwh"]) for r in csv.DictReader(fh)}


def _mean_by_hand(trace: dict[float, float], a: float, b: float) -> float:
    """Time-weighted mean of an hourly step function over [a, b): each hour's share by hand."""
    total, t = 0.0, a
    while t < b:
        hour = t - (t % 3600)
        end = min(b, hour + 3600)
        total += trace[hour] * (end - t)
        t = end
    return total / (b - a)


def test_grid_charges_energy_spread_over_hour_boundaries(compose_cfg) -> None:
    """Energy drawn from 10:30 to 12:15 is split 30/60/15 minutes over the three hours."""
    exp = Experiment.from_config(compose_cfg(
        "carbon.intensity=trace", "clock.start=2020-06-15T10:30:00Z", "carbon.country=GBR",
        "carbon.regions=FRA",
    ))
    grid = exp.grid()
    deu = _csv_trace(BUNDLED / "FRA_2020.csv")
    start = _epoch("2020-06-15T10:30:00Z")
    by_hand = (0.5 * deu[start - 1800] + 1.0 * deu[start + 1800] + 0.25 * deu[start + 5400]) / 1.75
    assert grid.actual("FRA", 0.0, 1.75 * 3600) == pytest.approx(by_hand, rel=1e-12)
    assert grid.kg(2.0, "FRA", 0.0, 1.75 * 3600) == pytest.approx(2.0 * by_hand / 1000, rel=1e-12)
    gbr = _csv_trace(BUNDLED / "GBR_2020.csv")
    assert grid.actual("GBR", 3600.0) == gbr[start + 1800]  # 11:30 lies in the 11:00 hour


def test_deferral_picks_the_known_cheapest_hours(compose_cfg, tmp_path: Path) -> None:
    """A hand-made trace: 12 hours, cheapest at hours 3, 7 and 9; 3 rounds, 12 h deadline."""
    values = [9, 8, 7, 1, 6, 5, 9, 2, 8, 3, 9, 9]
    path = tmp_path / "DEU.csv"
    path.write_text("timestamp_utc,gco2_per_kwh\n" + "".join(
        f"2020-03-01T{h:02d}:00:00Z,{v}\n" for h, v in enumerate(values)))
    exp = Experiment.from_config(compose_cfg(
        "carbon.intensity=trace", f"+carbon.traces.DEU={path}", "clock=deadline",
        "clock.start=2020-03-01T00:00:00Z", "clock.deadline_hours=12", "num_rounds=3",
    ))
    scheduler = exp.scheduler()
    starts = [scheduler.round_time(r).start_s / 3600 for r in (1, 2, 3)]
    assert starts == [3.0, 7.0, 9.0]
    assert [scheduler.round_time(r).wait_s / 3600 for r in (1, 2, 3)] == [3.0, 3.0, 1.0]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("clock.start=2021-06-01T00:00:00Z",), "clock.start"),  # beyond the bundled traces
        (("carbon.regions=POL",), "carbon.traces"),  # no trace for POL
        (("clock=deadline", "clock.deadline_hours=2"), "clock.deadline_hours"),
        (("clock=deadline", "carbon.intensity=static"), "clock.policy"),
        (("clock.start=2020-06-01T00:00:00",), "clock.start"),  # not UTC
    ],
)
def test_bad_clock_settings_name_their_key(compose_cfg, overrides, key) -> None:
    with pytest.raises(ConfigError) as err:
        exp = Experiment.from_config(compose_cfg(*DATED, "clock.start=2020-06-01T00:00:00Z",
                                                 *overrides))
        exp.prepare()
    assert err.value.key == key
    assert "\n" not in str(err.value)


def test_a_bad_trace_file_ends_the_run_in_one_line_before_anything_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "DEU.csv"
    path.write_text("timestamp_utc,gco2_per_kwh\n2020-01-01T01:00:00Z,5\n2020-01-01T00:00:00Z,4\n")
    run_dir = tmp_path / "run"
    exe = Path(sys.executable).with_name("fedlab-run")
    result = subprocess.run(
        [str(exe), *DATED, "clock.start=2020-01-01T00:00:00Z", f"+carbon.traces.DEU={path}",
         f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "row 2" in lines[0], result.stderr
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def dated_runs(compose_cfg, tmp_path_factory) -> dict[str, Path]:
    """Two real runs, deferred within 24 h, started on different dates."""
    from fedlab.run import run_experiment

    runs = {}
    for name, start in (("june", "2020-06-15T06:00:00Z"), ("january", "2020-01-10T18:00:00Z")):
        overrides = (*DATED, "clock=deadline", "clock.deadline_hours=24", f"clock.start={start}")
        path = tmp_path_factory.mktemp(name) / "run"
        run_experiment(compose_cfg(*overrides), path, list(overrides))
        runs[name] = path
    return runs


def test_rounds_are_charged_at_the_trace_at_their_simulated_time(dated_runs) -> None:
    run = dated_runs["june"]
    deu = _csv_trace(BUNDLED / "DEU_2020.csv")
    rows = list(csv.DictReader((run / "rounds.csv").open()))[1:]
    ledger = json.loads((run / "carbon_ledger.json").read_text())["ledger"]
    for row, charged in zip(rows, ledger["round_rows"], strict=True):
        a, b = _epoch(row["sim_start_utc"]), _epoch(row["sim_end_utc"])
        assert b - a == 3600.0
        assert float(row["intensity_DEU"]) == pytest.approx(_mean_by_hand(deu, a, b), rel=1e-12)
        assert charged["host_kg"] == pytest.approx(
            charged["host_kwh"] * _mean_by_hand(deu, a, b) / 1000, rel=1e-12)
    # the policy chose the three cleanest forecast (= actual: perfect) hours of the next 24
    start = _epoch("2020-06-15T06:00:00Z")
    cheapest = sorted(range(24), key=lambda h: (deu[start + 3600 * h], h))[:3]
    assert sorted((_epoch(r["sim_start_utc"]) - start) / 3600 for r in rows) == sorted(cheapest)
    results = json.loads((run / "results.json").read_text())
    assert results["clock"]["deadline_met"] is True
    assert results["clock"]["wait_hours"] == pytest.approx(
        (max(_epoch(r["sim_end_utc"]) for r in rows) - start) / 3600 - 3)
    assert (run / "timeline.png").stat().st_size > 10_000  # the run's own picture
    card = (run / "model_card.md").read_text()
    assert "hourly **average** traces" in card and "deadline 24 h met" in card
    assert results["carbon"]["intensity"]["kind"] == "average"


def test_replay_equals_the_real_run(dated_runs, tmp_path: Path) -> None:
    """A replay of a run under its own settings gives back its numbers; a replay under the
    other run's start date gives that run's clock, intensities and communication exactly (the
    host's measured kWh differ between two real runs; its intensity per kWh does not)."""
    from fedlab.carbon_cli import main
    from fedlab.trackers.carbon.replay import replay

    june, january = dated_runs["june"], dated_runs["january"]
    own = next(replay(june, []))
    results = json.loads((june / "results.json").read_text())
    assert own["emissions_kg"] == results["carbon"]["emissions_kg"]
    assert own["client_grid_kg"] == results["carbon"]["client_grid_kg"]
    moved = next(replay(june, ["clock.start=2020-01-10T18:00:00Z"]))
    real = json.loads((january / "results.json").read_text())
    real_rounds = list(csv.DictReader((january / "rounds.csv").open()))[1:]
    real_ledger = json.loads((january / "carbon_ledger.json").read_text())["ledger"]
    assert moved["communication_kg"] == real["carbon"]["communication_kg"]
    assert moved["clock"]["wait_hours"] == real["clock"]["wait_hours"]
    for mine, theirs, charged in zip(moved["rounds"], real_rounds, real_ledger["round_rows"],
                                     strict=True):
        for key in ("sim_start_utc", "sim_end_utc", "intensity_DEU", "forecast_DEU"):
            assert str(mine[key]) == theirs[key], key
        assert charged["host_intensity_g_per_kwh"] == float(theirs["intensity_DEU"])
    out = tmp_path / "sweep"
    assert main([
        "replay", str(june), "clock.start=2020-01-10T18:00:00Z,2020-06-15T06:00:00Z",
        "clock.policy=immediate,deadline", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "replay.csv").open()))
    assert len(rows) == 4 and (out / "avoided.png").is_file() and (out / "timeline.png").is_file()
    assert main(["replay", str(june), "--out", str(out)]) == 2  # nothing overwritten


def test_deferral_under_carbon_aware_selection_aims_at_the_clients_it_would_pick() -> None:
    """3 DEU and 1 FRA client, 2 trained per round, 1 of them a uniform fairness draw: the
    signal is (population mean + the cleanest region's value) / 2, by hand."""
    import numpy as np

    from fedlab.trackers.carbon.forecast import PerfectForecast
    from fedlab.trackers.carbon.grid import GridIntensity
    from fedlab.trackers.carbon.traces import IntensityTrace

    t0 = _epoch("2020-01-01T00:00:00Z")
    times = np.array([t0, t0 + 3600.0])
    traces = {
        "DEU": IntensityTrace("DEU", times, np.array([400.0, 100.0])),
        "FRA": IntensityTrace("FRA", times, np.array([50.0, 200.0])),
    }
    grid = GridIntensity(traces=traces, forecaster=PerfectForecast(traces), start_epoch=t0)
    signal = grid.selection_signal({"DEU": 3, "FRA": 1}, k=2, fair=1)
    assert signal(0.0, 3600.0, 0.0) == pytest.approx(((3 * 400 + 50) / 4 + 50) / 2)
    assert signal(3600.0, 7200.0, 0.0) == pytest.approx(((3 * 100 + 200) / 4 + 100) / 2)


def test_availability_windows_make_rounds_wait_for_the_clients_local_night(compose_cfg) -> None:
    """Half the clients idle 22:00-06:00 Berlin time (CEST, UTC+2 in June), the rest always:
    from 12:00 UTC a round needs 6 clients, so it waits until 20:00 UTC (22:00 local)."""
    exp = Experiment.from_config(compose_cfg(
        "num_clients=10", "strategy.fraction_train=0.6", "strategy.min_train_clients=6",
        "clock.start=2020-06-15T12:00:00Z", "clock.availability={0: '22:00-06:00', "
        "1: '22:00-06:00', 2: '22:00-06:00', 3: '22:00-06:00', 4: '22:00-06:00', "
        "default: always}", "num_rounds=3",
    ))
    scheduler = exp.scheduler()
    first = scheduler.round_time(1)
    assert first.wait_s == 8 * 3600.0
    plan = scheduler.plan(1)
    assert len(plan.sampled) == 6
    # rounds 2 and 3 (21:00, 22:00 UTC) are at night in Berlin: everyone is available
    assert scheduler.round_time(2).wait_s == 0.0
    day = exp.scheduler()._plan_at(1, 0.0)  # what 12:00 UTC would have offered: the 5 always
    assert set(day.sampled) <= {5, 6, 7, 8, 9}


def test_fedlab_carbon_convert_writes_a_trace_and_never_overwrites(tmp_path: Path) -> None:
    from fedlab.carbon_cli import main
    from fedlab.trackers.carbon.traces import IntensityTrace

    src = Path(__file__).parent / "data" / "carbon" / "electricitymaps_DE_2022_hourly_sample.csv"
    dst = tmp_path / "DEU.csv"
    assert main(["convert", str(src), str(dst)]) == 0
    trace = IntensityTrace.from_csv(dst, "DEU")
    with src.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    lca = next(k for k in rows[0] if "LCA" in k or "Life cycle" in k)
    assert trace.values.tolist() == [float(r[lca]) for r in rows]
    before = dst.read_bytes()
    assert main(["convert", str(src), str(dst)]) == 2 and dst.read_bytes() == before
