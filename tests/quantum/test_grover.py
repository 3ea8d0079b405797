"""Grover search against the closed-form success probability sin^2((2k+1) theta)."""

import math

import pytest

from sandbox_quantum import depolarizing_noise_model, noise_impact, run_grover


@pytest.mark.parametrize(
    ("marked", "iterations", "theory"),
    [("101", 2, 0.9453), ("10110", 4, 0.9992)],
)
def test_success_matches_theory(marked: str, iterations: int, theory: float) -> None:
    theta = math.asin(2 ** (-len(marked) / 2))
    assert math.sin((2 * iterations + 1) * theta) ** 2 == pytest.approx(theory, abs=1e-4)

    result = run_grover(marked, seed=7)

    assert result.iterations == iterations
    assert result.theoretical_probability == pytest.approx(theory, abs=1e-4)
    assert abs(result.success_probability - theory) < 0.01
    assert abs(result.gap) < 0.01
    assert result.most_likely == marked


def test_two_marked_states_one_iteration_is_exact() -> None:
    # M/N = 1/4 gives theta = pi/6, so one iteration rotates exactly onto the marked subspace.
    result = run_grover(["011", "110"], seed=1)
    assert result.iterations == 1
    assert result.success_probability == 1.0


def test_aer_agrees_with_reference() -> None:
    reference = run_grover("0110", seed=3)
    aer = run_grover("0110", primitive="aer", seed=3)
    assert abs(aer.success_probability - reference.success_probability) < 0.02


def test_depolarizing_noise_lowers_success() -> None:
    impact = noise_impact(
        lambda model: (
            run_grover("101", primitive="aer", seed=5, noise_model=model).success_probability
        ),
        depolarizing_noise_model(p1=1e-3, p2=2e-2),
    )
    assert abs(impact.ideal - 0.9453) < 0.01
    # ~30 CX at 2% each: a clear drop, but still far above the 1/8 of random guessing.
    assert 0.05 < impact.degradation < 0.6
    assert impact.noisy > 1 / 8


def test_noise_model_requires_aer() -> None:
    with pytest.raises(ValueError, match="aer"):
        run_grover("11", noise_model=depolarizing_noise_model())


def test_duplicate_marks_count_once_and_bad_input_is_rejected() -> None:
    # A repeated mark must not flip the sign back: still the 3-qubit, one-mark optimum.
    assert run_grover(["101", "101"], seed=7).success_probability > 0.93
    with pytest.raises(ValueError, match="bitstrings"):
        run_grover(["101", "11"])
