"""fedlab-compare on hand-built run records with known numbers (no simulation is started)."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedlab.record.run_dir import (
    CLIENT_COLUMNS,
    ROUND_COLUMNS,
    SCHEMA,
    read_csv,
    write_csv,
    write_json,
)
from fedlab.reports.compare import compare, main, pareto_front

CARBON_ROUND_COLUMNS = ["epsilon", "energy_kwh", "emissions_kg", "compute_kg", "communication_kg"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def carbon_section(
    emissions: float | None, regions: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``results.carbon`` as the carbon tracker writes it, for ``emissions`` kgCO2e at
    50 gCO2e/kWh: the host's energy is 60% client compute, 5% server, 15% overhead; 20% is
    the modelled communication (the parts add up to the totals, in kWh and in kg)."""
    if emissions is None:  # carbon off: the tracker's inactive section
        return dict.fromkeys(
            ("energy_kwh", "emissions_kg", "compute_kg", "communication_kg", "server_kg")
        )
    shares = {"compute": 0.6, "server": 0.05, "overhead": 0.15, "communication": 0.2}
    parts = {f"{k}_kg": emissions * share for k, share in shares.items()}
    parts |= {f"{k}_kwh": emissions * share / 0.05 for k, share in shares.items()}
    return {
        "energy_kwh": emissions / 0.05,
        "emissions_kg": emissions,
        "host_kwh": emissions * 0.8 / 0.05,
        "host_kg": emissions * 0.8,
        **parts,
        "country": "FRA",
        "intensity_g_per_kwh": 50.0,
        "intensity_source": "CodeCarbon global_energy_mix.json",
        "power_model": "CodeCarbon cpu_load: CPU 8 W at full load over 4 threads",
        "estimated": True,
        "regions": regions,
    }


def write_run(
    run_dir: Path,
    *,
    strategy: str = "fedavg",
    seed: int = 0,
    lr: float = 0.1,
    accuracy: float = 0.8,
    loss: float = 0.5,
    emissions: float | None = None,
    epsilon: float | None = None,
    status: str = "completed",
    num_rounds: int = 3,
    regions: dict[str, dict[str, Any]] | None = None,
    client_accuracy: dict[int, list[float]] | None = None,
    straggled: int = 0,
    failed: int = 0,
) -> Path:
    """A run record as fedlab-run writes it (schema fedlab.run/1), with known numbers.

    ``emissions``/``epsilon`` switch carbon/privacy on; ``client_accuracy`` maps a round to
    the local test accuracy of clients 0..n-1 (evaluate rows); every training round has
    ``straggled`` stragglers and ``failed`` failures among its 4 trained clients.
    """
    run_dir.mkdir(parents=True)
    flower = {
        "_target_": f"flwr.serverapp.strategy.{'FedProx' if strategy == 'fedprox' else 'FedAvg'}"
    }
    if strategy == "fedprox":
        flower["proximal_mu"] = 0.01
    config = {
        "seed": seed,
        "num_clients": 4,
        "num_rounds": num_rounds,
        "dataset": {
            "_target_": "fedlab.data.datasets.sklearn.Digits",
            "as_image": True,
            "test_fraction": 0.2,
            "client_test_fraction": 0.2,
        },
        "partition": {
            "_target_": "flwr_datasets.partitioner.DirichletPartitioner",
            "alpha": 0.5,
            "min_partition_size": 10,
            "self_balancing": False,
        },
        "model": {"_target_": "fedlab.fl.model.MLP", "hidden": [128], "dropout": 0.0},
        "strategy": {
            "name": strategy,
            "flower": flower,
            "fraction_train": 1.0,
            "fraction_evaluate": 1.0,
            "min_train_clients": 1,
            "straggler_policy": "drop",
            "train_config": {},
        },
        "client": {
            "optimizer": "sgd",
            "lr": lr,
            "momentum": 0.9,
            "weight_decay": 0.0,
            "local_epochs": 2,
            "batch_size": 32,
        },
        "simulation": {"backend": "ray", "client_cpus": 1.0, "torch_threads": 1},
        "stragglers": {"fraction": 0.25 if straggled else 0.0, "policy": "auto"},
        "failures": {"rate": 0.0},
        "privacy": {"mode": "local" if epsilon is not None else "none"},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    carbon_on = emissions is not None
    results = {
        "schema": SCHEMA,
        "status": status,
        "error": None if status == "completed" else f"RuntimeError: {status} on purpose",
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "rounds_completed": num_rounds if status == "completed" else 1,
        "num_rounds": num_rounds,
        "seed": seed,
        "duration_s": 12.5,
        "accuracy": accuracy,
        "loss": loss,
        "federated_accuracy": accuracy - 0.05,
        "federated_loss": loss + 0.1,
        "experiment": {
            "dataset": "digits",
            "partition": "DirichletPartitioner",
            "model": "MLP",
            "strategy": strategy,
            "num_clients": 4,
            "num_rounds": num_rounds,
            "clients_per_round": 4,
            "local_epochs": 2,
            "stragglers": config["stragglers"]["fraction"],
            "straggler_policy": "drop",
            "failure_rate": 0.0,
        },
        "overrides": [f"strategy={strategy}", f"seed={seed}", f"client.lr={lr}"],
        "privacy": {
            "mode": "local" if epsilon is not None else "none",
            "unit": "record" if epsilon is not None else None,
            "epsilon": epsilon,
            "delta": 1e-5 if epsilon is not None else None,
            "accountant": "rdp" if epsilon is not None else None,
            "noise_multiplier": 1.1 if epsilon is not None else None,
            "max_grad_norm": 1.0 if epsilon is not None else None,
            "guarantee": None,
        },
        "carbon": carbon_section(emissions, regions),
        "communication": {"bytes_down": 3_000_000, "bytes_up": 1_500_000},
        "versions": {"fedlab": "0.1.0", "flwr": "1.42.0"},
    }
    write_json(run_dir / "results.json", results)
    rounds = [{"round": 0, "central_loss": loss + 1.0, "central_accuracy": 0.1}]
    for r in range(1, results["rounds_completed"] + 1):
        rounds.append(
            {
                "round": r,
                "central_loss": loss + 1.0 - r / num_rounds,
                "central_accuracy": 0.1 + (accuracy - 0.1) * r / num_rounds,
                "clients_sampled": 4,
                "clients_trained": 4,
                "clients_succeeded": 4 - failed - straggled,
                "clients_failed": failed,
                "clients_straggled": straggled,
                "clients_dropped": straggled,
                "clients_evaluated": len((client_accuracy or {}).get(r, [])),
                "bytes_down": 1_000_000,
                "bytes_up": 500_000,
                "epsilon": epsilon * r / num_rounds if epsilon is not None else None,
                "emissions_kg": emissions / num_rounds if carbon_on else None,
            }
        )
    extra = CARBON_ROUND_COLUMNS if carbon_on or epsilon is not None else []
    write_csv(run_dir / "rounds.csv", rounds, [*ROUND_COLUMNS, *extra])
    clients = [
        {
            "round": r,
            "client": c,
            "phase": "evaluate",
            "status": "ok",
            "num_examples": 20,
            "accuracy": acc,
            "loss": 1 - acc,
        }
        for r, accs in (client_accuracy or {}).items()
        for c, acc in enumerate(accs)
    ]
    write_csv(run_dir / "clients.csv", clients, CLIENT_COLUMNS)
    return run_dir


# --------------------------------------------------------------------------------------
# pareto_front
# --------------------------------------------------------------------------------------


def test_pareto_front_of_five_points_known_by_hand() -> None:
    # (accuracy, kg): b beats c on both; a and d tie on accuracy, d costs more.
    points = [(0.90, 0.010), (0.85, 0.004), (0.80, 0.006), (0.90, 0.012), (0.70, 0.002)]
    assert pareto_front(points) == [True, True, False, False, True]


def test_pareto_front_keeps_duplicates_and_handles_directions() -> None:
    assert pareto_front([(1.0, 1.0), (1.0, 1.0), (0.5, 1.0)]) == [True, True, False]
    # minimize both: (1, 1) dominates everything else
    assert pareto_front([(1, 1), (2, 1), (1, 2)], maximize=(False, False)) == [True, False, False]
    assert pareto_front([(1, 1), (2, 1), (1, 2)], maximize=(True, True)) == [False, True, True]
    assert pareto_front([(1, 2, 3), (1, 2, 2), (0, 5, 3)], maximize=(True, True, False)) == [
        False,
        True,
        True,
    ]
    assert pareto_front([]) == []
    assert pareto_front([(0.3, 7.0)]) == [True]


def test_pareto_front_agrees_with_a_brute_force_on_points_full_of_ties() -> None:
    rng = np.random.default_rng(0)
    points = rng.integers(0, 6, size=(200, 2)).astype(float)  # 36 values: many duplicates
    better = points[:, None, :] * [1, -1] >= points[None, :, :] * [1, -1]  # [q, p, k]
    strictly = (points[:, None, :] != points[None, :, :]).any(axis=2)
    dominated = (better.all(axis=2) & strictly).any(axis=0)
    assert pareto_front(points.tolist()) == (~dominated).tolist()


@pytest.mark.parametrize("bad", [[(0.5, math.nan)], [(0.5,)]])
def test_pareto_front_rejects_nan_and_wrong_length(bad: list[tuple[float, ...]]) -> None:
    with pytest.raises(ValueError):
        pareto_front(bad)


# --------------------------------------------------------------------------------------
# The table and the fronts
# --------------------------------------------------------------------------------------

#: label -> (strategy, accuracy, kgCO2e, epsilon, status); fronts worked out by hand:
#: carbon: a (best accuracy), b, e (cheapest); c is beaten by b, d by a (same accuracy,
#: more kg). privacy (only a, b, c, e have epsilon): a, b, c; e is beaten by b.
#: f would dominate everything but failed, so it is in no front.
FIVE = {
    "a": ("fedavg", 0.90, 0.010, 8.0, "completed"),
    "b": ("fedprox", 0.85, 0.004, 2.0, "completed"),
    "c": ("fedavg", 0.80, 0.006, 1.0, "completed"),
    "d": ("fedprox", 0.90, 0.012, None, "completed"),
    "e": ("fedavg", 0.70, 0.002, 4.0, "completed"),
    "f": ("fedavg", 0.95, 0.001, 0.5, "failed"),
}


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    for label, (strategy, acc, kg, eps, status) in FIVE.items():
        write_run(
            root / label,
            strategy=strategy,
            accuracy=acc,
            emissions=kg,
            epsilon=eps,
            status=status,
            regions={
                "FRA": {
                    "clients": 2,
                    "compute_kg": kg * 0.4,
                    "communication_kg": kg * 0.1,
                    "emissions_kg": kg * 0.5,
                },
                "POL": {
                    "clients": 2,
                    "compute_kg": kg * 0.35,
                    "communication_kg": kg * 0.1,
                    "emissions_kg": kg * 0.45,
                },
            },
        )
    return root


def test_fronts_match_the_hand_computed_ones(sweep: Path) -> None:
    result = compare([sweep])
    fronts = {row.label: row.fronts for row in result.rows}
    assert {k for k, f in fronts.items() if f["carbon"]} == {"a", "b", "e"}
    assert {k for k, f in fronts.items() if f["privacy"]} == {"a", "b", "c"}
    assert fronts["d"]["privacy"] is None  # no epsilon: not compared, not "dominated"
    assert fronts["f"] == {"carbon": None, "privacy": None, "edge": None}  # listed, not ranked
    assert [row.label for row in result.rows] == list(FIVE)
    assert any("f (failed)" in note for note in result.notes)


def test_cli_prints_the_table_and_writes_every_output(sweep: Path, capsys) -> None:
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("run"))
    # only the config keys that differ come first, then the metrics and the markers
    assert header.split()[:4] == [
        "run",
        "strategy.name",
        "strategy.flower._target_",
        "privacy.mode",
    ]
    assert "strategy.flower.proximal_mu" in header
    assert "dataset" not in header and "seed" not in header
    line_b = next(line for line in out.splitlines() if line.startswith("b "))
    assert "0.8500" in line_b and "fedprox" in line_b and "4.5 MB" in line_b
    assert line_b.split()[-2:] == ["*", "*"]
    for name in (
        "comparison.csv",
        "comparison.md",
        "pareto_carbon.png",
        "pareto_privacy.png",
        "accuracy_per_round.png",
        "emissions_per_round.png",
        "emissions_per_region.png",
    ):
        assert (sweep / name).is_file(), name
        if name.endswith(".png"):
            assert (sweep / name).read_bytes()[:8] == PNG_MAGIC
    rows = {r["run"]: r for r in read_csv(sweep / "comparison.csv")}
    assert {k for k, r in rows.items() if r["pareto_carbon"] == "True"} == {"a", "b", "e"}
    assert rows["f"]["pareto_carbon"] == "" and rows["f"]["status"] == "failed"
    assert rows["f"]["error"] == "RuntimeError: failed on purpose"
    assert float(rows["b"]["emissions_kg"]) == 0.004
    assert float(rows["b"]["bytes"]) == 4_500_000
    assert rows["b"]["client.lr"] == "0.1" and rows["b"]["model.hidden"] == "[128]"


def test_markdown_table_is_well_formed(sweep: Path) -> None:
    assert main([str(sweep)]) == 0
    text = (sweep / "comparison.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(FIVE)
    assert len({line.count(" | ") for line in table}) == 1
    assert "incomplete run(s)" in text


# --------------------------------------------------------------------------------------
# Grouping and filtering
# --------------------------------------------------------------------------------------


@pytest.fixture()
def seeds(tmp_path: Path) -> tuple[Path, dict[str, list[float]]]:
    """Three seeds of fedavg and fedprox, and a failed fedprox seed that must not count."""
    accuracies = {"fedavg": [0.80, 0.82, 0.87], "fedprox": [0.84, 0.85, 0.83]}
    root = tmp_path / "sweep"
    job = 0
    for strategy, values in accuracies.items():
        for seed, acc in enumerate(values):
            write_run(
                root / str(job),
                strategy=strategy,
                seed=seed,
                accuracy=acc,
                emissions=0.001 * (job + 1),
                lr=0.1 if strategy == "fedavg" else 0.05,
            )
            job += 1
    write_run(root / str(job), strategy="fedprox", seed=3, accuracy=0.1, status="interrupted")
    return root, accuracies


def test_by_strategy_reports_mean_std_and_n_over_completed_runs(seeds, capsys) -> None:
    root, accuracies = seeds
    result = compare([root], by=["strategy"])
    rows = {row.label: row for row in result.rows}
    assert set(rows) == {"fedavg", "fedprox"}
    for strategy, values in accuracies.items():
        assert rows[strategy].n == 3
        assert rows[strategy].mean["accuracy"] == pytest.approx(statistics.fmean(values))
        assert rows[strategy].std["accuracy"] == pytest.approx(statistics.stdev(values))
    assert rows["fedprox"].mean["emissions_kg"] == pytest.approx((0.004 + 0.005 + 0.006) / 3)
    assert any("seed" in note for note in result.notes)  # averaged over seeds, said so

    assert main([str(root), "--by", "strategy"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("fedprox"))
    assert f"{statistics.fmean(accuracies['fedprox']):.4f} ± " in line
    assert "3 completed, 1 interrupted" in line
    groups = {r["strategy"]: r for r in read_csv(root / "comparison_groups.csv")}
    assert float(groups["fedavg"]["accuracy_std"]) == pytest.approx(
        statistics.stdev(accuracies["fedavg"])
    )
    assert groups["fedavg"]["n"] == "3" and groups["fedprox"]["runs"] == "4"
    per_run = read_csv(root / "comparison.csv")
    assert len(per_run) == 7 and {r["group"] for r in per_run} == {"fedavg", "fedprox"}


def test_by_config_and_results_keys(seeds) -> None:
    root, _ = seeds
    assert {r.label for r in compare([root], by=["client.lr"]).rows} == {"0.1", "0.05"}
    rows = {r.label: r for r in compare([root], by=["status", "seed"]).rows}
    assert len(rows) == 4
    # a group of incomplete runs only: listed, but with no mean and on no front
    lone = rows["status=interrupted, seed=3"]
    assert (lone.n, lone.mean["accuracy"], lone.status) == (0, None, "1 interrupted")
    assert set(lone.fronts.values()) == {None}


def test_filter_keeps_matching_runs(seeds) -> None:
    root, _ = seeds
    result = compare([root], filters=["strategy=fedprox"])
    assert len(result.runs) == 4 and {r.value("experiment.strategy") for r in result.runs} == {
        "fedprox"
    }
    # numbers compare as numbers; several filters must all hold
    assert len(compare([root], filters=["client.lr=0.10", "seed=2"]).runs) == 1


# --------------------------------------------------------------------------------------
# Finding runs, output location, plots
# --------------------------------------------------------------------------------------


def test_multirun_jobs_in_natural_order_and_single_run_output(tmp_path, monkeypatch) -> None:
    root = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    for job in (0, 1, 2, 10):
        write_run(root / str(job), seed=job)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    assert [r.label for r in compare([root]).runs] == ["0", "1", "2", "10"]
    # a path given twice, or inside another, is one run
    assert len(compare([root, root / "1"]).runs) == 4
    monkeypatch.chdir(tmp_path)
    assert main([str(root / "1")]) == 0
    assert (tmp_path / "comparison" / "comparison.csv").is_file()
    assert not (root / "1" / "comparison.csv").exists()  # a run's own record is left alone


def test_plots_without_data_are_skipped_and_stale_ones_removed(tmp_path, capsys) -> None:
    root = tmp_path / "runs"
    write_run(root / "0")
    write_run(root / "1", seed=1)
    out = tmp_path / "report"
    out.mkdir()
    (out / "pareto_privacy.png").write_bytes(PNG_MAGIC)  # from an earlier comparison
    assert main([str(root), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in (
        "pareto_carbon.png",
        "pareto_privacy.png",
        "emissions_per_round.png",
        "emissions_per_region.png",
    ):
        assert sum(line.startswith(f"skipped {name}: ") for line in lines) == 1, name
        assert not (out / name).exists()
    assert (out / "accuracy_per_round.png").is_file()


def test_a_generated_plot_has_sensible_size(sweep: Path) -> None:
    assert main([str(sweep), "--by", "strategy", "--out", str(sweep / "by")]) == 0
    from matplotlib.image import imread

    image = imread(sweep / "by" / "pareto_carbon.png")
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # not a blank canvas


# --------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["empty"], "no run found"),
        (["missing"], "no such directory"),
        (["runs", "--by", "nonsense"], "unknown --by key 'nonsense'"),
        (["runs", "--filter", "strategy"], "malformed --filter 'strategy'"),
        (["runs", "--filter", "=fedavg"], "malformed --filter"),
        (["runs", "--filter", "colour=red"], "unknown --filter key 'colour'"),
        (["runs", "--filter", "strategy=krum"], "no run matches --filter strategy=krum"),
        (["runs", "--metric", "f1"], "invalid choice"),
        (["runs", "--frobnicate"], "unrecognized arguments"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, monkeypatch, capsys, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "runs" / "0")
    (tmp_path / "empty").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("fedlab-compare: error: ")
    assert message in captured.err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_corrupt_record_is_bad_input(tmp_path, capsys) -> None:
    run = write_run(tmp_path / "runs" / "0")
    (run / "results.json").write_text("{not json")
    assert main([str(tmp_path / "runs")]) == 2
    assert "unreadable" in capsys.readouterr().err


def test_csv_reader_roundtrip_of_empty_cells(sweep: Path) -> None:
    """Empty cells (not available) stay empty in comparison.csv, never 'None'."""
    assert main([str(sweep)]) == 0
    with open(sweep / "comparison.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["run"] == "d")
    assert row["epsilon"] == "" and row["pareto_privacy"] == ""
