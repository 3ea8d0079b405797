"""model_card.md from hand-built run records; every number is recomputed here independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_compare import write_run

from fedlab.record.run_dir import write_json
from fedlab.reports.model_card import client_fairness, write_model_card
from fedlab.trackers.privacy.report import privacy_statement

#: Round 2 is the last round with client evaluations (round 3 has none), so it is the one
#: the card must use; round 1's numbers must not leak in.
CLIENT_ACCURACY = {
    1: [0.1, 0.2, 0.3],
    2: [0.91, 0.55, 0.78, 0.62, 0.88, 0.97, 0.40, 0.73, 0.81, 0.66, 0.59, 0.84],
}
REGIONS = {
    "FRA": {"clients": 3, "compute_kg": 0.0006, "communication_kg": 0.0001, "emissions_kg": 0.0007},
    "POL": {"clients": 1, "compute_kg": 0.0009, "communication_kg": 0.0004, "emissions_kg": 0.0013},
}


def _card(path: Path) -> str:
    return path.read_text()


def _section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_full_card_from_the_record(tmp_path: Path) -> None:
    run = write_run(
        tmp_path / "run",
        strategy="fedprox",
        seed=7,
        accuracy=0.8731,
        loss=0.4123,
        emissions=0.002,
        epsilon=2.1,
        regions=REGIONS,
        client_accuracy=CLIENT_ACCURACY,
        straggled=1,
        failed=1,
    )
    (run / "partition.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    path = write_model_card(run)
    assert path == run / "model_card.md"
    card = _card(path)

    assert "not a deployable model" in _section(card, "Intended use")
    data = _section(card, "Data and partition")
    assert "digits" in data and "DirichletPartitioner (alpha=0.5" in data
    assert "Clients: 4, of which 4 are sampled per round" in data
    assert "![Training labels per client](partition.png)" in data
    training = _section(card, "Training")
    assert "fedprox (`flwr.serverapp.strategy.FedProx`; proximal_mu=0.01)" in training
    assert "lr=0.1" in training and "local_epochs=2" in training and "seed 7" in training

    metrics = _section(card, "Metrics")
    assert "| 0.8731 | 0.4123 |" in metrics  # centralized
    assert "| 0.8231 | 0.5123 |" in metrics  # federated (the builder's acc - 0.05, loss + 0.1)
    assert "After 3 of 3 rounds" in metrics

    accs = np.array(CLIENT_ACCURACY[2])
    worst = np.sort(accs)[: math.ceil(0.1 * accs.size)]  # 12 clients -> the 2 worst
    fairness = _section(card, "Fairness across clients")
    assert "12 clients evaluated in round 2" in fairness
    assert (
        f"| {accs.mean():.4f} | {accs.std():.4f} | {accs.min():.4f} | {accs.max():.4f} "
        f"| {worst.mean():.4f} (2 clients) |" in fairness
    )

    # 3 training rounds x (1 failed, 1 straggled, 1 dropped) of 4 trained clients
    assert "Over 3 training rounds, 12 client training tasks: 3 failed, 3 straggled, 3 dropped" in (
        _section(card, "Failures and stragglers")
    )

    privacy = _section(card, "Privacy")
    assert "(ε=2.1, δ=1e-5) record-level DP for each client's examples, RDP accountant." in privacy
    assert "Noise multiplier 1.1, clipping norm 1" in privacy

    carbon = _section(card, "Carbon footprint")
    assert "| part | energy (kWh) | emissions (kgCO2e) |" in carbon
    # the record's parts (tests/test_compare.carbon_section): 60/5/15/20% of 0.002 kg
    assert "| client compute (on the host) | 0.024 | 0.0012 |" in carbon
    assert "| server | 0.002 | 0.0001 |" in carbon
    assert "| host overhead (idle capacity, Ray, start-up) | 0.006 | 0.0003 |" in carbon
    assert "| communication (modelled) | 0.008 | 0.0004 |" in carbon
    assert "| **total** | 0.04 | 0.002 |" in carbon
    assert "n/a" not in carbon
    assert "estimated by CodeCarbon's power model" in carbon
    assert "FRA at 50 gCO2e/kWh" in carbon
    assert "Communication is modelled, not measured" in carbon
    assert "3000000 bytes down and 1500000 bytes up" in carbon
    assert "| client region | clients | compute kgCO2e | communication kgCO2e | total kgCO2e |" in (
        carbon
    )
    assert "| POL | 1 | 0.0009 | 0.0004 | 0.0013 |" in carbon

    assert "`fedlab-run strategy=fedprox seed=7 client.lr=0.1`" in _section(card, "Reproduce")


def test_card_without_privacy_carbon_or_client_evaluation(tmp_path: Path) -> None:
    card = _card(write_model_card(write_run(tmp_path / "run")))
    assert _section(card, "Privacy").strip() == (
        "No formal privacy guarantee: training did not use differential privacy. Raw data "
        "stayed on the clients, but model updates can still reveal information about it."
    )
    assert _section(card, "Carbon footprint").strip().startswith("Not tracked")
    assert _section(card, "Fairness across clients").strip().startswith("Not measured")
    assert "![" not in card  # no partition.png in this record, so no broken image link
    assert "did not complete" not in card


def test_card_of_a_failed_run_says_so_first(tmp_path: Path) -> None:
    card = _card(write_model_card(write_run(tmp_path / "run", status="failed")))
    header = card.split("\n## ", 1)[0]
    assert "**This run did not complete (status: failed; RuntimeError: failed on purpose).**" in (
        header
    )
    assert "(1 of 3)" in header
    assert "Over 1 training round, 4 client training tasks" in card


@pytest.mark.parametrize("n", [1, 5, 10, 11, 25])
def test_worst_ten_percent_is_the_ceil_of_a_tenth_of_the_clients(n: int) -> None:
    accs = np.random.default_rng(n).uniform(0.2, 1.0, n)
    rows = [
        {"round": "4", "client": str(c), "phase": "evaluate", "status": "ok", "accuracy": str(a)}
        for c, a in enumerate(accs)
    ]
    # rows that must be ignored: training rows, a failed evaluation, an earlier round
    rows += [
        {"round": "4", "client": "0", "phase": "train", "status": "ok", "accuracy": ""},
        {"round": "4", "client": "99", "phase": "evaluate", "status": "failed", "accuracy": ""},
        {"round": "3", "client": "0", "phase": "evaluate", "status": "ok", "accuracy": "0.0"},
    ]
    f = client_fairness(rows)
    assert f is not None and f.round == 4 and f.clients == n
    k = max(1, math.ceil(n / 10))
    assert f.worst_count == k
    assert f.worst_mean == pytest.approx(np.sort(accs)[:k].mean())
    assert f.mean == pytest.approx(accs.mean()) and f.std == pytest.approx(accs.std())
    assert client_fairness(rows[n:]) is not None  # round 3's single client
    assert client_fairness([]) is None


def test_privacy_statements() -> None:
    central = {
        "mode": "central",
        "unit": "user",
        "epsilon": 0.98765,
        "delta": 1e-6,
        "accountant": "rdp",
    }
    assert privacy_statement(central) == (
        "(ε=0.988, δ=1e-6) user-level DP for each client's whole data set, RDP accountant."
    )
    no_epsilon = {"mode": "local", "unit": "record", "epsilon": None, "delta": 1e-5}
    assert "no guarantee can be stated" in privacy_statement(no_epsilon)
    assert privacy_statement({}).startswith("No formal privacy guarantee")


def test_card_is_rewritten_in_place(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    (run / "model_card.md").write_text("stale")
    write_model_card(run)
    assert _card(run / "model_card.md").startswith("# Model card: run")
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temp left


def _carbon_table(carbon: str) -> dict[str, tuple[str, str]]:
    """The card's carbon table as part -> (kWh cell, kgCO2e cell)."""
    rows = [line.split(" | ") for line in carbon.splitlines() if line.startswith("| ")]
    head = rows.index(["| part", "energy (kWh)", "emissions (kgCO2e) |"])
    return {r[0][2:]: (r[1], r[2].removesuffix(" |")) for r in rows[head + 2 :] if len(r) == 3}


def _half_unit(text: str) -> float:
    """Half a unit in the last printed digit of a 3-significant-digit number: the most that
    printing it can have rounded away."""
    value = abs(float(text))
    return 0.0 if value == 0 else 0.5 * 10 ** (math.floor(math.log10(value)) - 2)


@pytest.mark.parametrize("seed", range(5))
def test_carbon_parts_on_the_card_add_up_to_the_total(tmp_path: Path, seed: int) -> None:
    """Compute + server + overhead + communication = total, in kWh and in kgCO2e, as printed
    (within rounding), for records with awkward numbers."""
    rng = np.random.default_rng(seed)
    run = write_run(tmp_path / "run", emissions=0.001)
    results = json.loads((run / "results.json").read_text())
    carbon = results["carbon"]
    for unit, scale in (("kwh", 1e-2), ("kg", 1e-3)):
        parts = dict(
            zip(
                ("compute", "server", "overhead", "communication"),
                rng.uniform(0, scale, 4),
                strict=True,
            )
        )
        carbon |= {f"{name}_{unit}": value for name, value in parts.items()}
        carbon["energy_kwh" if unit == "kwh" else "emissions_kg"] = math.fsum(parts.values())
    write_json(run / "results.json", results)
    table = _carbon_table(_section(_card(write_model_card(run)), "Carbon footprint"))
    assert list(table) == [
        "client compute (on the host)",
        "server",
        "host overhead (idle capacity, Ray, start-up)",
        "communication (modelled)",
        "**total**",
    ]
    total = table.pop("**total**")
    for column in (0, 1):
        cells = [cells[column] for cells in table.values()]
        slack = sum(_half_unit(c) for c in cells) + _half_unit(total[column])
        assert math.fsum(float(c) for c in cells) == pytest.approx(float(total[column]), abs=slack)


def test_carbon_measured_or_estimated_follows_the_record_flag(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", emissions=0.001)
    results = json.loads((run / "results.json").read_text())
    results["carbon"]["power_model"] = "CodeCarbon cpu_load: ... (no rapl in this text)"
    for estimated, expected in (
        (False, "measured by a hardware energy counter"),
        (True, "estimated by CodeCarbon's power model"),
        (None, "estimated by CodeCarbon's power model"),  # not recorded: claim no measurement
    ):
        results["carbon"]["estimated"] = estimated
        write_json(run / "results.json", results)
        assert f"Host energy {expected}" in _card(write_model_card(run))


def test_tracker_sections_follow_the_record(tmp_path: Path) -> None:
    """The record's trackers write their sections, in its order; a record without a devices
    section has no devices section, and one naming no trackers has none at all."""
    run = write_run(tmp_path / "run")
    titles = [line for line in _card(write_model_card(run)).splitlines() if line.startswith("## ")]
    assert titles[-3:] == ["## Privacy", "## Carbon footprint", "## Reproduce"]
    results = json.loads((run / "results.json").read_text())
    results["trackers"] = {
        "carbon": "fedlab.trackers.carbon.tracker.CarbonTracker",
        "privacy": "fedlab.trackers.privacy.tracker.PrivacyTracker",
    }
    write_json(run / "results.json", results)
    titles = [line for line in _card(write_model_card(run)).splitlines() if line.startswith("## ")]
    assert titles[-3:] == ["## Carbon footprint", "## Privacy", "## Reproduce"]
    results["trackers"] = {}
    write_json(run / "results.json", results)
    card = _card(write_model_card(run))
    assert "## Privacy" not in card and "## Carbon footprint" not in card
