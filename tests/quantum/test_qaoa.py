"""QAOA MaxCut on a 6-node graph against an independent brute-force enumeration."""

import itertools

import numpy as np
import pytest

from sandbox_quantum import brute_force_maxcut, cut_value, maxcut_hamiltonian, run_qaoa

# Triangular prism: two triangles joined by rungs. Each triangle leaves one edge uncut, so the
# maximum cut is 9 - 2 = 7.
PRISM = [(0, 1), (1, 2), (2, 0), (3, 4), (4, 5), (5, 3), (0, 3), (1, 4), (2, 5)]


def _enumerate_cuts() -> dict[str, int]:
    """Cut size of every partition, node i = character -1-i (Qiskit's bit order)."""
    cuts = {}
    for sides in itertools.product((0, 1), repeat=6):  # sides[i] = side of node i
        bitstring = "".join(str(s) for s in reversed(sides))
        cuts[bitstring] = sum(sides[i] != sides[j] for i, j in PRISM)
    return cuts


def test_brute_force_and_hamiltonian_agree_with_enumeration() -> None:
    cuts = _enumerate_cuts()
    assert max(cuts.values()) == 7
    optimum, best = brute_force_maxcut(PRISM, 6)
    assert optimum == 7
    assert set(best) == {b for b, c in cuts.items() if c == 7}
    # Diagonal of sum Z_i Z_j / 2 is W/2 - cut on every basis state (index = int(bitstring)).
    diagonal = np.real(np.diag(maxcut_hamiltonian(PRISM, 6).to_matrix()))
    for bitstring, cut in cuts.items():
        assert cut_value(bitstring, PRISM) == cut
        assert diagonal[int(bitstring, 2)] == pytest.approx(9 / 2 - cut)


def test_qaoa_most_likely_bitstring_is_optimal() -> None:
    cuts = _enumerate_cuts()
    result = run_qaoa(PRISM, 6, reps=2, seed=11)

    assert cuts[result.most_likely] == max(cuts.values())
    assert result.optimum_cut == 7
    assert result.approximation_ratio > 0.9
    assert result.gap == pytest.approx(7 - result.expected_cut)
    # Six optimal cuts out of 64 states: far above their uniform share of 6/64.
    assert result.optimal_probability > 0.5
