"""Exact (Clopper-Pearson) interval for a single proportion: a conflict rate, an agreement rate,
an A/B win rate. Each side is an exact one-sided binomial test, so a decision on one side of the
(1 - 2 alpha) interval errs at most alpha at every n (Wilson's can run above it at small n).

Not for paired comparisons of two models: those are in `mergeqa.stats.mcnemar`.
"""

from __future__ import annotations

import numpy as np

from mergeqa.stats._base import check_confidence, check_counts


def clopper_pearson_interval(successes, n, *, confidence: float = 0.95):
    """(low, high) of the Clopper-Pearson interval, as statsmodels'
    `proportion_confint(method='beta')` and scipy's `binomtest(k, n).proportion_ci(method='exact')`.

    Beta quantiles: low = Beta(k, n - k + 1).ppf(a / 2) (0 at k = 0), high = Beta(k + 1, n - k)
    .ppf(1 - a / 2) (1 at k = n), a = 1 - confidence; `high < p0` is then the exact one-sided
    binomial test of H0: rate >= p0 at level a / 2. Vectorised over `successes` and `n`; needs
    integer counts with 0 <= successes <= n and n >= 1.
    """
    from scipy.stats import beta

    check_confidence(confidence)
    successes, n = check_counts(successes, n)
    tail = (1 - confidence) / 2
    with np.errstate(invalid="ignore"):  # Beta(0, .) and Beta(., 0) at the ends, replaced below
        low = np.where(successes == 0, 0.0, beta.ppf(tail, np.maximum(successes, 1), n - successes + 1))
        high = np.where(successes == n, 1.0, beta.ppf(1 - tail, successes + 1, np.maximum(n - successes, 1)))
    return low, high
