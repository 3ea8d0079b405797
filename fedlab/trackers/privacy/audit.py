"""One-run auditing of epsilon: Steinke, Nasr and Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023 (arXiv 2305.08846).

m canaries are each included in training independently with probability 1/2. After training
every canary gets a score (here, user level: the inner product of the model's total change
with the canary's known update direction); the auditor guesses "included" for the k+ highest
scores and "excluded" for the k- lowest, abstaining on the rest. If training is
(epsilon, delta)-DP, the number of correct guesses among r = k+ + k- is stochastically
dominated as in their Theorem 5.2: P[correct >= v] <= P[Binomial(r, e^eps / (1 + e^eps)) >= v]
+ 2 m delta * max_i P[v > Binomial(r, p) >= v - i] / i. The largest epsilon whose p-value is
still below 1 - confidence is a lower bound on the true epsilon at that confidence.

A lower bound from one run is a *check* of the accountant (a broken mechanism shows up as a
bound above the claimed epsilon), never a proof that the claimed epsilon holds.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Probability of >= ``correct`` right guesses of ``guesses`` under (epsilon, delta)-DP.

    Theorem 5.2 of Steinke et al. (2023): the binomial tail of epsilon-DP randomised response
    plus the delta term ``2 m delta alpha``, alpha = max over i of P[v > B >= v - i] / i.
    """
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(
            f"need 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}"
        )
    p = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(correct - 1, guesses, p))
    if delta == 0 or correct == 0:
        return min(beta, 1.0)
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, p)  # v-1, v-2, ..., 0
    alpha = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(beta + 2 * canaries * delta * alpha, 1.0)


def epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """Largest epsilon rejected at ``confidence``: training is not (epsilon, delta)-DP.

    Bisection on the p-value, which grows with epsilon (0.0 when even epsilon = 0 cannot be
    rejected).
    """
    level = 1.0 - confidence
    if p_value(canaries, guesses, correct, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(canaries, guesses, correct, high, delta) < level:
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    for _ in range(50):
        mid = (low + high) / 2
        if p_value(canaries, guesses, correct, mid, delta) < level:
            low = mid
        else:
            high = mid
    return low


def guess_and_count(
    scores: np.ndarray, included: np.ndarray, top: int, bottom: int
) -> tuple[int, int]:
    """(guesses, correct): "included" for the ``top`` highest scores, "excluded" for the
    ``bottom`` lowest (ties broken by canary index, a fixed order independent of inclusion)."""
    order = np.argsort(-scores, kind="stable")
    guessed_in, guessed_out = order[:top], order[len(order) - bottom :] if bottom else order[:0]
    correct = int(included[guessed_in].sum()) + int((~included[guessed_out]).sum())
    return top + bottom, correct


def canary_directions(count: int, dimension: int, seed: int) -> np.ndarray:
    """``count`` random unit vectors of the model's dimension, seeded: the canaries' updates.

    In high dimension they are nearly orthogonal to each other and to the real clients'
    updates, so a canary's score measures that canary alone.
    """
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((count, dimension))
    return u / np.linalg.norm(u, axis=1, keepdims=True)
