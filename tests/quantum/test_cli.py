"""``fedlab-quantum`` end to end: records checked against exact answers, and refused input.

The console script itself runs as ``python -m sandbox_quantum.cli`` (works before and after it
is installed as ``fedlab-quantum``) for one run and the kinds of bad input (a Hydra composition
error, a refused value, a carbon key a single host has no use for). Each process spends ~4 s
importing Qiskit and torch, so those start together; the other cases call :func:`run_quantum`
in-process on a config from Hydra's compose API, which is what the console script does after
composing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from fedlab.config.schema import ConfigError
from fedlab.record.lifecycle import RunFailed
from sandbox_quantum.cli import load_experiment, register_configs, run_quantum
from sandbox_quantum.experiments import EXPERIMENTS, Grover, Resources, experiment_name

H2_EXACT = -1.857275  # Ha, electronic, 0.735 A (Qiskit algorithms tutorial)
GROVER_3Q = math.sin(5 * math.asin(1 / math.sqrt(8))) ** 2  # 2 iterations: 0.9453
MIX = json.loads(
    files("codecarbon").joinpath("data/private_infra/global_energy_mix.json").read_text()
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

PROCESSES: dict[str, list[str]] = {
    "grover": ["experiment=grover", "experiment.marked=[101]"],
    "unknown_experiment": ["experiment=shor"],
    "zero_shots": ["experiment=grover", "experiment.shots=0"],
    "carbon_regions": ["experiment=grover", "carbon.regions=NOR"],
}


@dataclass
class Launched:
    """One ``fedlab-quantum`` process and its run directory."""

    process: subprocess.Popen[str]
    run_dir: Path

    @cached_property
    def output(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) once the process has ended."""
        out, err = self.process.communicate(timeout=120)
        return self.process.returncode, out, err


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Launched]]:
    root = tmp_path_factory.mktemp("fedlab-quantum")
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("codecarbon_")}
    env["HOME"] = str(root)  # no ~/.codecarbon.config from the user
    runs = {
        name: Launched(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sandbox_quantum.cli",
                    *args,
                    f"hydra.run.dir={root / name}",
                ],
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            root / name,
        )
        for name, args in PROCESSES.items()
    }
    yield runs
    for run in runs.values():
        if run.process.poll() is None:  # a test failed before waiting for it
            run.process.kill()
            run.process.wait()


@pytest.fixture(scope="module")
def compose_quantum() -> Callable[..., DictConfig]:
    """``compose_quantum("experiment=vqe_h2", ...)``: the config fedlab-quantum would run."""
    register_configs()

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_module(config_module="sandbox_quantum.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


def _check_record(run_dir: Path, experiment: str, figure: str) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["schema"] == "fedlab.quantum/1"
    assert (results["status"], results["error"], results["experiment"]) == (
        "completed",
        None,
        experiment,
    )
    assert results["duration_s"] > 0 and results["finished_at"] >= results["started_at"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["experiment"]["_target_"].startswith("sandbox_quantum.experiments.")
    assert (run_dir / figure).read_bytes()[:8] == PNG_MAGIC
    return results


def _check_carbon(carbon: dict, country: str) -> None:
    intensity = MIX[country]["carbon_intensity"]
    assert carbon["country"] == country
    assert carbon["intensity_g_per_kwh"] == intensity
    assert carbon["energy_kwh"] > 0
    assert carbon["emissions_kg"] == pytest.approx(carbon["energy_kwh"] * intensity / 1e3, rel=1e-9)


def test_console_script_grover_matches_theory(launched: dict[str, Launched]) -> None:
    run = launched["grover"]
    code, out, err = run.output
    assert code == 0, err
    results = _check_record(run.run_dir, "grover", "histogram.png")
    result = results["result"]
    assert (result["num_qubits"], result["iterations"], result["most_likely"]) == (3, 2, "101")
    assert result["theoretical_probability"] == pytest.approx(GROVER_3Q, abs=1e-12)
    assert abs(result["success_probability"] - GROVER_3Q) < 0.01
    assert result["gap"] == pytest.approx(result["success_probability"] - GROVER_3Q)
    resources = results["resources"]
    assert resources["qubits"] == 3
    assert resources["couplings"]["all_to_all"]["swaps_inserted"] == 0
    assert resources["couplings"]["all_to_all"]["two_qubit_gates"] > 0
    _check_carbon(results["carbon"], "DEU")  # fedlab's default country
    assert (run.run_dir / "emissions.csv").is_file()
    assert "completed" in out and "completed" in (run.run_dir / "run.log").read_text()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "unknown_experiment",
            "experiment: unknown option 'shor'; allowed: grover, qaoa_maxcut, qnn_iris, "
            "qsvc_iris, resources, vqe_h2, vqe_ising",
        ),
        ("zero_shots", "experiment.shots: must be >= 1, got 0"),
        ("carbon_regions", "carbon.regions: not used by fedlab-quantum (one host)"),
    ],
)
def test_console_script_bad_input_is_one_line_and_exit_2(
    launched: dict[str, Launched], name: str, message: str
) -> None:
    run = launched[name]
    code, out, err = run.output
    assert code == 2
    assert err == f"fedlab-quantum: error: {message}\n"
    assert "Traceback" not in out
    # Hydra may have created the directory, but nothing was written into it.
    assert not run.run_dir.exists() or not any(run.run_dir.iterdir())


def test_vqe_h2_within_a_millihartree(
    compose_quantum: Callable[..., DictConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_quantum("experiment=vqe_h2", "carbon.country=FRA")
    with caplog.at_level(logging.INFO, logger="fedlab.quantum"):
        returned = run_quantum(cfg, tmp_path / "run")
    # the console says which energy it is and in what unit
    assert "| VQE electronic energy -1.85728 Ha | exact electronic energy -1.85728 Ha |" in (
        caplog.text
    )
    results = _check_record(tmp_path / "run", "vqe_h2", "spectrum.png")
    assert json.loads(json.dumps(returned)) == results  # tuples become lists in JSON
    result = results["result"]
    assert result["exact_energy"] == pytest.approx(H2_EXACT, abs=1e-6)
    assert abs(result["energy"] - H2_EXACT) < 1e-3
    assert result["error"] >= -1e-9  # variational
    assert results["resources"]["qubits"] == 2
    assert results["units"] == {"energy": "Ha", "exact_energy": "Ha", "error": "Ha"}
    _check_carbon(results["carbon"], "FRA")


@pytest.mark.parametrize(
    ("name", "axis"),
    [("VQEH2", "electronic energy (Ha, Hartree)"),
     ("VQEIsing", "energy (in the units of coupling J and field h)")],
)
def test_the_spectrum_axis_has_its_unit(name: str, axis: str) -> None:
    from matplotlib.figure import Figure

    from sandbox_quantum.experiments import vqe

    outcome = getattr(vqe, name)(maxiter=20).run()
    fig = Figure()
    outcome.plots["spectrum.png"](fig)
    assert fig.axes[0].get_ylabel() == axis


def test_resources_routing_costs_without_carbon(
    compose_quantum: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = compose_quantum("experiment=resources", "carbon.enabled=false")
    run_quantum(cfg, tmp_path)
    results = _check_record(tmp_path, "resources", "resources.png")
    reports = {r["coupling"]: r for r in results["result"]["reports"]}
    assert set(reports) == {"line", "heavy_hex", "all_to_all"}
    assert reports["all_to_all"]["swaps_inserted"] == 0
    # C_6(1, 2) is full of triangles, which no line embeds: routing must add SWAPs.
    assert reports["line"]["swaps_inserted"] > 0
    extra = results["result"]["extra_two_qubit_gates"]
    assert (
        extra["line"]
        == reports["line"]["two_qubit_gates"] - (reports["all_to_all"]["two_qubit_gates"])
    )
    assert (
        results["resources"]["couplings"]["line"]["two_qubit_gates"]
        == (reports["line"]["two_qubit_gates"])
    )
    assert results["carbon"]["enabled"] is False and results["carbon"]["energy_kwh"] is None
    assert not (tmp_path / "emissions.csv").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=qaoa_maxcut", "experiment.primitive=gpu"], "experiment.primitive: must be"),
        (["carbon.country=ATLANTIS"], "carbon.country: unknown country code 'ATLANTIS'"),
        (["carbon.pue=0.5"], "carbon.pue: must be >= 1, got 0.5"),
        (["carbon.force_cpu_power=0"], "carbon.force_cpu_power: must be > 0 watts or null"),
        (["carbon.links=wifi"], "carbon.links: not used by fedlab-quantum (one host)"),
        (
            ["carbon.intensity=trace"],
            "carbon.intensity: not used by fedlab-quantum (one host)",
        ),
        (["experiment.noise={p2: 0.02}"], "experiment.noise: a noise model needs"),
        (["experiment.marked=[1012]"], "experiment.marked: need bitstrings"),
        (["experiment=vqe_h2", "experiment.method=newton"], "experiment.method: must be one of"),
        (["+experiment.qubits=3"], "experiment.qubits: Key 'qubits' not in 'Grover'"),
        (["experiment=resources", "experiment.couplings=[line]"], "experiment.couplings: must"),
    ],
)
def test_invalid_values_name_their_key(
    compose_quantum: Callable[..., DictConfig], overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_experiment(compose_quantum(*overrides))
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_a_used_run_dir_is_refused_untouched(
    compose_quantum: Callable[..., DictConfig], tmp_path: Path
) -> None:
    record = tmp_path / "results.json"
    record.write_text('{"status": "failed"}\n')
    with pytest.raises(ConfigError, match=r"hydra.run.dir: .* \(status: failed\)"):
        run_quantum(compose_quantum(), tmp_path)
    assert record.read_text() == '{"status": "failed"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_failing_run_is_recorded_as_failed(
    compose_quantum: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Grover) -> None:
        raise RuntimeError("simulator lost\nits state")

    monkeypatch.setattr(Grover, "run", broken)
    with pytest.raises(RunFailed, match="RuntimeError: its state"):
        run_quantum(compose_quantum(), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["status"], results["error"]) == ("failed", "RuntimeError: its state")
    assert results["result"] is None and results["finished_at"] is not None
    assert results["carbon"]["energy_kwh"] > 0  # the tracker was stopped and read anyway


def test_every_experiment_option_names_its_registered_class(
    compose_quantum: Callable[..., DictConfig],
) -> None:
    conf = files("sandbox_quantum.conf").joinpath("experiment")
    targets = {
        p.name.removesuffix(".yaml"): yaml.safe_load(p.read_text())["_target_"]
        for p in conf.iterdir()
        if p.name.endswith(".yaml")
    }
    assert targets == {name: f"{c.__module__}.{c.__qualname__}" for name, c in EXPERIMENTS.items()}
    for name in EXPERIMENTS:
        experiment, _ = load_experiment(compose_quantum(f"experiment={name}"))
        assert experiment_name(experiment) == name  # the record's "experiment"


def test_rerunning_a_completed_config_skips_it(
    compose_quantum: Callable[..., DictConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = ("experiment=resources", "carbon.enabled=false")
    first = run_quantum(compose_quantum(*overrides), tmp_path)
    record = (tmp_path / "results.json").read_text()
    with caplog.at_level(logging.INFO, logger="fedlab.quantum"):
        again = run_quantum(compose_quantum(*overrides), tmp_path)
    assert again == json.loads(record) == json.loads(json.dumps(first))
    assert (tmp_path / "results.json").read_text() == record  # not run, not rewritten
    assert f"fedlab-quantum: skipped: {tmp_path} already holds this run" in caplog.text
    assert not (tmp_path / "attempts").exists()
    # Another configuration in the same directory is refused, the record left as it was.
    with pytest.raises(
        ConfigError, match=r"hydra.run.dir: .* another run's record \(status: completed\)"
    ):
        run_quantum(compose_quantum(*overrides, "experiment.reps=3"), tmp_path)
    assert (tmp_path / "results.json").read_text() == record


def test_an_unfinished_attempt_is_moved_aside_and_run_again(
    compose_quantum: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Resources) -> None:
        raise RuntimeError("transpiler crashed")

    overrides = ("experiment=resources", "carbon.enabled=false")
    monkeypatch.setattr(Resources, "run", broken)
    with pytest.raises(RunFailed, match="RuntimeError: transpiler crashed"):
        run_quantum(compose_quantum(*overrides), tmp_path)
    monkeypatch.undo()
    results = run_quantum(compose_quantum(*overrides), tmp_path)
    assert results["status"] == "completed" and results["result"]["circuit"]
    attempt = tmp_path / "attempts" / "1"
    failed = json.loads((attempt / "results.json").read_text())
    assert (failed["status"], failed["error"]) == ("failed", "RuntimeError: transpiler crashed")
    assert (attempt / "config.yaml").read_text() == (tmp_path / "config.yaml").read_text()
    assert (tmp_path / "resources.png").read_bytes()[:8] == PNG_MAGIC
