"""Every notebook in ``notebooks/`` runs top to bottom, and is committed without outputs.

Notebooks are executed with papermill on a kernel spec registered for this interpreter (so they
import the same fedlab as the tests, whatever kernels the user has installed), inside a temporary
working directory, with the small parameter values below; a notebook not listed runs with its
own defaults. Any failing cell fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "fedlab-notebook-test"

PARAMETERS: dict[str, dict[str, Any]] = {
    "01_quickstart": {"NUM_ROUNDS": 2},
    "02_carbon_accuracy_tradeoffs": {
        "NUM_ROUNDS": 2,
        "STRATEGIES": ["fedavg"],
        "LOCAL_EPOCHS": [1, 3],
    },
    "03_privacy_utility": {"NUM_ROUNDS": 2, "NOISE_MULTIPLIERS": [1.0, 2.0]},
    "04_quantum_algorithms": {
        "SHOTS": 2000,
        "MAX_ITERATIONS": 2,
        "QAOA_REPS": 1,
        "ISING_SPINS": 3,
        "ISING_FIELDS": [1.0],
    },
    "05_quantum_federated": {"NUM_ROUNDS": 2},
}
SIMULATIONS = {
    "01_quickstart",
    "02_carbon_accuracy_tradeoffs",
    "03_privacy_utility",
    "05_quantum_federated",
}
"""Notebooks that start a Flower/Ray simulation (deselect with ``-m "not simulation"``)."""


def _param(path: Path) -> Any:
    marks = [pytest.mark.simulation] if path.stem in SIMULATIONS else []
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A kernel spec running this interpreter, found first through ``JUPYTER_PATH``."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name=KERNEL, prefix=str(prefix))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        yield KERNEL


def test_notebooks_are_found() -> None:
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"
    assert set(PARAMETERS) <= {p.stem for p in NOTEBOOKS}, "PARAMETERS names a missing notebook"


@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_name: str, tmp_path: Path) -> None:
    papermill.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters=PARAMETERS.get(path.stem, {}),
        kernel_name=kernel_name,
        cwd=str(tmp_path),
        progress_bar=False,
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), (
        f"{path.name} has outputs: clear them before committing"
    )
    tagged = [i for i, cell in enumerate(code) if "parameters" in cell.metadata.get("tags", [])]
    assert tagged == [0], f"{path.name}: the first code cell, and only it, is tagged 'parameters'"
