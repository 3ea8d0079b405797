"""Carbon accounting of whole runs (in-process): the record's numbers checked against
CodeCarbon's own data file and plain arithmetic."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest

from fedlab.config.schema import ConfigError
from fedlab.config.experiment import Experiment
from fedlab.record.run_dir import read_csv

SMALL = ("num_clients=10", "num_rounds=2", "model.hidden=[16]", "partition=iid")
REGIONS = "carbon.regions={NOR: 0.2, FRA: 0.2, DEU: 0.2, POL: 0.2, IND: 0.2}"


def _intensity(code: str) -> float:
    """gCO2e/kWh straight from the JSON file CodeCarbon ships."""
    path = files("codecarbon") / "data" / "private_infra" / "global_energy_mix.json"
    return float(json.loads(path.read_text())[code]["carbon_intensity"])


def test_emissions_add_up_and_follow_codecarbon_data(run_inprocess) -> None:
    _, _, record, _ = run_inprocess(*SMALL, "carbon.country=FRA", REGIONS, carbon=True)
    c = record.results["carbon"]
    # host emissions = host energy x the intensity CodeCarbon's data gives the country
    assert c["host_kg"] == pytest.approx(c["host_kwh"] * _intensity("FRA") / 1000, rel=1e-9)
    # the host's measured energy splits exactly into clients, server and overhead
    parts = c["compute_kwh"] + c["server_kwh"] + c["overhead_kwh"]
    assert parts == pytest.approx(c["host_kwh"], rel=1e-9, abs=1e-15)
    assert c["host_kwh"] > 0 and c["compute_kwh"] > 0
    # communication energy = bytes / 1e9 x 0.06 kWh/GB (wired), at each client's grid
    comm = 0.0
    for region, totals in c["regions"].items():
        moved = totals["bytes_down"] + totals["bytes_up"]
        assert totals["communication_kwh"] == pytest.approx(moved / 1e9 * 0.06, rel=1e-9)
        assert totals["communication_kg"] == pytest.approx(
            totals["communication_kwh"] * _intensity(region) / 1000, rel=1e-9
        )
        assert totals["clients"] == 2
        comm += totals["communication_kg"]
    assert c["communication_kg"] == pytest.approx(comm, rel=1e-9)
    assert c["emissions_kg"] == pytest.approx(c["host_kg"] + c["communication_kg"], rel=1e-9)
    total_bytes = sum(record.results["communication"].values())
    assert c["communication_kwh"] == pytest.approx(total_bytes / 1e9 * 0.06, rel=1e-9)
    # per-round columns and CodeCarbon's own file
    rounds = read_csv(record.dir / "rounds.csv")[1:]
    assert all(float(r["energy_kwh"]) > 0 for r in rounds)
    assert (record.dir / "emissions.csv").exists()
    clients = [r for r in read_csv(record.dir / "clients.csv") if r["region"]]
    assert {r["region"] for r in clients} == {"NOR", "FRA", "DEU", "POL", "IND"}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("carbon.country=XYZ", "carbon.country"),
        ("carbon.regions={FRA: 0.5, ATLANTIS: 0.5}", "carbon.regions"),
        ("carbon.links=carrier_pigeon", "carbon.links"),
        ("carbon.pue=0.5", "carbon.pue"),
        ("carbon.network={wired: -1}", "carbon.network"),
    ],
)
def test_bad_carbon_settings(compose_cfg, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(compose_cfg(override))
    assert err.value.key == key and "\n" not in str(err.value)


def test_unknown_country_names_valid_codes(compose_cfg) -> None:
    with pytest.raises(ConfigError, match="DEU"):
        Experiment.from_config(compose_cfg("carbon.country=Germany"))


def test_carbon_off_needs_no_country(compose_cfg) -> None:
    exp = Experiment.from_config(compose_cfg("carbon=off", "carbon.country=XYZ"))
    assert not exp.cfg.carbon.enabled
