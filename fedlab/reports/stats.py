"""The statistics behind an honest comparison: confidence intervals over seeds, and when one
group is *significantly* better than another.

Two seeds of a federated run differ by more than many of the differences a sweep is run to
find (host energy is measured over wall time, which is noisy), so ``fedlab-compare`` never
ranks groups by their means alone:

* a group's spread is the **Student-t 95 % confidence interval of the mean** over its
  completed runs: ``mean ± t(0.975, n-1) · s / √n`` (``s`` the sample std, n-1), none for
  n < 2;
* "A is significantly better than B" on one objective means a two-sided **Welch t-test**
  (unequal variances, Welch-Satterthwaite degrees of freedom) rejects equal means at
  ``ALPHA`` = 5 % and A's mean is the better one. When both groups have zero spread (a
  deterministic, modelled number such as bytes sent) any difference of means is significant.

Welch, not "non-overlapping intervals": two 95 % intervals can overlap while the means still
differ at 5 %, so overlap is too conservative a rule, and the t-test is the one a reader can
redo with any statistics package.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats

#: Confidence level of the intervals shown, and significance level of the tests.
LEVEL = 0.95
ALPHA = 0.05
#: Fewer completed seeds than this in a group and the comparison warns.
MIN_SEEDS = 3


def ci_halfwidth(values: Sequence[float], level: float = LEVEL) -> float | None:
    """Half-width of the Student-t ``level`` confidence interval of the mean of ``values``;
    None for fewer than two values (one run has no spread to estimate)."""
    n = len(values)
    if n < 2:
        return None
    quantile = float(stats.t.ppf(0.5 + level / 2, n - 1))
    return quantile * statistics.stdev(values) / math.sqrt(n)


def welch_p(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> float:
    """Two-sided p-value of Welch's t-test for equal means, from summary statistics.

    Both spreads zero: 0.0 if the means differ, 1.0 if they are equal (a deterministic
    number either differs or not; scipy would divide by zero).
    """
    if std_a == 0 and std_b == 0:
        return 1.0 if math.isclose(mean_a, mean_b, rel_tol=1e-12, abs_tol=0.0) else 0.0
    result = stats.ttest_ind_from_stats(mean_a, std_a, n_a, mean_b, std_b, n_b, equal_var=False)
    return float(result.pvalue)


def significantly_better(
    a: tuple[float, float | None, int],
    b: tuple[float, float | None, int],
    maximize: bool,
    alpha: float = ALPHA,
) -> bool | None:
    """Whether ``a`` (mean, std, n) is significantly better than ``b`` at ``alpha``; None
    when it cannot be tested (a side with fewer than two values)."""
    (mean_a, std_a, n_a), (mean_b, std_b, n_b) = a, b
    if n_a < 2 or n_b < 2 or std_a is None or std_b is None:
        return None
    ahead = mean_a > mean_b if maximize else mean_a < mean_b
    return ahead and welch_p(mean_a, std_a, n_a, mean_b, std_b, n_b) < alpha
