"""The textbook paired tests the seed guide asks for: the paired t-test (with its interval) and
the Wilcoxon signed-rank test.

Kept for comparison and for metrics where their assumptions hold; the gate's default tests are
McNemar (0/1 outcomes) and the sign-flip test (any metric), which assume less.
"""

from __future__ import annotations

import math

import numpy as np

from mergeqa.stats._base import (
    PairedTestResult,
    check_alternative,
    check_confidence,
    paired_arrays,
)


def _mean_and_se(merged, reference) -> tuple[float, float, int]:
    merged, reference = paired_arrays(merged, reference)
    d = merged - reference
    if d.size < 2:
        return float("nan"), float("nan"), d.size
    return float(d.mean()), math.sqrt(float(np.var(d, ddof=1)) / d.size), d.size


def paired_ttest(
    merged, reference, *, alternative: str = "two-sided", null: float = 0.0
) -> PairedTestResult:
    """Paired t-test of H0: mean(merged - reference) == null, as `scipy.stats.ttest_rel`.

    Where scipy answers nan this answers: p = 1 with fewer than 2 items or when every difference
    equals `null`; a constant difference != null gives t = +-inf (p = 0 in its direction).
    """
    from scipy.stats import t as student

    check_alternative(alternative)
    mean, se, n = _mean_and_se(merged, reference)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = float(np.float64(mean - null) / se)
    if math.isnan(statistic):
        return PairedTestResult(statistic, 1.0)
    less, greater = student.cdf(statistic, n - 1), student.sf(statistic, n - 1)
    two_sided = 2 * student.sf(abs(statistic), n - 1)
    pvalue = {"less": less, "greater": greater, "two-sided": two_sided}[alternative]
    return PairedTestResult(statistic, float(pvalue))


def ttest_interval(merged, reference, *, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for mean(merged - reference); (-inf, inf) with fewer than 2 items."""
    from scipy.stats import t as student

    check_confidence(confidence)
    mean, se, n = _mean_and_se(merged, reference)
    if n < 2:
        return -math.inf, math.inf
    half = float(student.ppf(0.5 + confidence / 2, n - 1)) * se
    return mean - half, mean + half


def wilcoxon_signed_rank(merged, reference, *, alternative: str = "two-sided") -> PairedTestResult:
    """`scipy.stats.wilcoxon` (zero differences dropped, exact for small n) on merged - reference.

    Where scipy has no answer (no non-zero difference) this answers statistic 0, p = 1. It tests
    the pseudo-median, not the mean, so it is a building block, not one of the gate's methods.
    """
    from scipy.stats import wilcoxon

    check_alternative(alternative)
    merged, reference = paired_arrays(merged, reference)
    if not np.any(merged != reference):
        return PairedTestResult(0.0, 1.0)
    result = wilcoxon(merged, reference, alternative=alternative)
    return PairedTestResult(float(result.statistic), float(result.pvalue))
