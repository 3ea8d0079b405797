"""``monitoring=prometheus``: the round metrics scraped over HTTP on loopback, by hand (a fake
round) and during a real run (a tracker that scrapes at every round's end), equal to the
record's rows; the server is gone after the run; bad input is one line naming its key."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from fedlab.config.experiment import Experiment
from fedlab.config.schema import ConfigError
from fedlab.record.run_dir import read_csv
from fedlab.trackers.base import RoundContext, RunContext, Tracker
from fedlab.trackers.monitoring.tracker import PrometheusTracker, metric_name

EXE = Path(sys.executable).parent


def scrape(port: int) -> dict[str, tuple[float, dict[str, str]]]:
    """``/metrics`` on loopback: metric name -> (value, labels) of its one sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.name: (sample.value, sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refused(port: int) -> bool:
    try:
        scrape(port)
    except (urllib.error.URLError, ConnectionError):
        return True
    return False


class ScrapeTracker(Tracker):
    """Configured after ``monitoring``: scrapes its endpoint at the end of every round."""

    name = "scrape"
    after = ("monitoring",)
    seen: ClassVar[dict[int, dict[str, Any]]] = {}

    def __init__(self, port: int) -> None:
        self.port = port

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        ScrapeTracker.seen[ctx.server_round] = scrape(self.port)
        return {}


def test_gauges_by_hand(compose_cfg, tmp_path: Path) -> None:
    exp = Experiment.from_config(
        compose_cfg("carbon=off", "monitoring=prometheus", "monitoring.port=0", "num_rounds=7")
    )
    tracker = PrometheusTracker.build(RunContext(exp, None, tmp_path))  # type: ignore[arg-type]
    assert tracker is not None and tracker.port > 0
    try:
        tracker.start_round(1)  # no rounds.csv yet: nothing but the totals
        assert scrape(tracker.port)["fedlab_rounds_total"][0] == 7
        row = {"round": 1, "central_accuracy": 0.625, "central_loss": 1.25, "bytes_down": 4096,
               "federated_accuracy": None, "epsilon": ""}
        tracker.end_round(RoundContext(1, SimpleNamespace(rows=[]), None, row))
        got = scrape(tracker.port)
        labels = {"run": str(tmp_path), "strategy": "fedavg"}
        assert got["fedlab_round"] == (1.0, labels)
        assert got["fedlab_central_accuracy"] == (0.625, labels)
        assert got["fedlab_central_loss"][0] == 1.25 and got["fedlab_bytes_down"][0] == 4096
        assert "fedlab_federated_accuracy" not in got and "fedlab_epsilon" not in got
        row["energy_kwh"] = 0.5  # a tracker after this one adds its column to the same row
        tracker.start_round(2)
        got = scrape(tracker.port)
        assert got["fedlab_energy_kwh"][0] == 0.5
        row2 = {"round": 2, "central_accuracy": 0.75, "energy_kwh": None}
        tracker.end_round(RoundContext(2, SimpleNamespace(rows=[]), None, row2))
        got = scrape(tracker.port)
        assert got["fedlab_round"][0] == 2 and math.isnan(got["fedlab_energy_kwh"][0])
        assert not [m for m in REGISTRY._names_to_collectors if m.startswith("fedlab_")]
    finally:
        section = tracker.close()
    assert section["port"] == tracker.port and section["last_round_served"] == 2
    assert refused(tracker.port)
    assert metric_name("a-b.c") == "fedlab_a_b_c"


def test_served_during_a_run(compose_cfg, tmp_path: Path) -> None:
    from fedlab.run import run_experiment

    port = free_port()
    args = ("dataset=digits", "num_clients=2", "num_rounds=2", "simulation=inprocess",
            "carbon=off", "monitoring=prometheus", f"monitoring.port={port}",
            "+trackers.scrape._target_=test_monitoring.ScrapeTracker",
            f"+trackers.scrape.port={port}")
    ScrapeTracker.seen.clear()
    run_experiment(compose_cfg(*args), tmp_path / "run", list(args))
    rows = read_csv(tmp_path / "run" / "rounds.csv")
    assert sorted(ScrapeTracker.seen) == [1, 2]
    for row in rows[1:]:
        got = ScrapeTracker.seen[int(row["round"])]
        assert got["fedlab_round"][0] == int(row["round"])
        numeric = {c: float(v) for c, v in row.items() if v and c != "round"}
        assert len(numeric) > 10
        for column, value in numeric.items():
            assert got[metric_name(column)][0] == pytest.approx(value, rel=1e-12), column
    section = json.loads((tmp_path / "run" / "results.json").read_text())["monitoring"]
    assert section["port"] == port and section["stopped"] and section["last_round_served"] == 2
    assert refused(port)


def test_port_in_use_is_refused(compose_cfg, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            Experiment.from_config(compose_cfg("monitoring=prometheus", f"monitoring.port={port}"))
        assert err.value.key == "monitoring.port"
        run_dir = tmp_path / "run"
        result = subprocess.run(
            [str(EXE / "fedlab-run"), "monitoring=prometheus", f"monitoring.port={port}",
             f"hydra.run.dir={run_dir}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fedlab-run: error: monitoring.port: 127.0.0.1:{port} is already in use; choose a "
        "free port (0: any free one)"
    ]
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("monitoring=prometheus", "monitoring.port=70000"), "monitoring.port"),
        (("monitoring.backend=statsd",), "monitoring.backend"),
        (("monitoring=prometheus", "monitoring.host=no.such.host.invalid"), "monitoring.host"),
        (("+trackers.monitoring.port=1",), "trackers.monitoring.port"),
    ],
)
def test_bad_settings_name_their_key(compose_cfg, overrides: tuple[str, ...], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(compose_cfg(*overrides))
    assert err.value.key == key


def test_off_by_default(compose_cfg, tmp_path: Path) -> None:
    exp = Experiment.from_config(compose_cfg("carbon=off"))
    assert PrometheusTracker.build(RunContext(exp, None, tmp_path)) is None  # type: ignore[arg-type]
    assert PrometheusTracker.inactive_summary(exp) is None
