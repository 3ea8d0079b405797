"""Transpiled resource counts on generic backends with different couplings."""

import pytest
from qiskit import QuantumCircuit

from sandbox_quantum import classifier_circuit, format_reports, qaoa_circuit, resource_report

PRISM = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (0, 3), (1, 4), (2, 5)]
COUPLINGS = ("line", "heavy_hex", "all_to_all")


def _circuits() -> list[QuantumCircuit]:
    qaoa = qaoa_circuit(PRISM, 6, reps=2)
    classifier = classifier_circuit(4, reps=2, feature_map_name="zz").circuit
    return [qaoa, classifier]


@pytest.fixture(scope="module")
def reports() -> dict[tuple[str, str], object]:
    return {(c.name, kind): resource_report(c, kind) for c in _circuits() for kind in COUPLINGS}


@pytest.mark.parametrize("circuit", _circuits(), ids=lambda c: c.name)
def test_all_to_all_needs_no_routing(reports, circuit: QuantumCircuit) -> None:
    line = reports[(circuit.name, "line")]
    full = reports[(circuit.name, "all_to_all")]
    assert full.swaps_inserted == 0
    assert full.two_qubit_gates <= line.two_qubit_gates
    # A triangle cannot be embedded in a line, so the prism's QAOA layer needs SWAPs there.
    if circuit.name.startswith("qaoa"):
        assert line.swaps_inserted > 0
        assert line.two_qubit_gates > full.two_qubit_gates


def test_report_fields_are_positive_ints(reports) -> None:
    for (name, kind), report in reports.items():
        for field in ("backend_qubits", "active_qubits", "depth", "two_qubit_gates"):
            value = getattr(report, field)
            assert type(value) is int and value > 0, (name, kind, field)
        assert type(report.swaps_inserted) is int and report.swaps_inserted >= 0
        assert report.two_qubit_gates == report.gate_counts.get("cx", 0)  # generic basis
        assert report.coupling == kind and report.circuit == name


def test_heavy_hex_uses_the_smallest_lattice_and_the_circuit_width(reports) -> None:
    qaoa = qaoa_circuit(PRISM, 6, reps=2)
    report = reports[(qaoa.name, "heavy_hex")]
    assert report.backend_qubits == 19  # distance-3 heavy hex
    assert qaoa.num_qubits <= report.active_qubits <= report.backend_qubits


def test_format_reports_has_one_row_per_report(reports) -> None:
    table = format_reports(list(reports.values()))
    assert len(table.splitlines()) == len(reports) + 1
