"""Wilson score interval for a single proportion (one model's accuracy on n items).

Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1 and at small n.
"""

from __future__ import annotations

import numpy as np

from mergeqa.stats._base import check_confidence, check_counts


def wilson_interval(successes, n, *, confidence: float = 0.95):
    """(low, high) of the Wilson interval, as statsmodels' `proportion_confint(method='wilson')`.

    Vectorised over `successes` and `n`; needs 0 <= successes <= n and n >= 1.
    """
    from scipy.special import ndtri

    check_confidence(confidence)
    successes, n = check_counts(successes, n)
    z = ndtri(0.5 + confidence / 2)
    share = successes / n
    shrink = 1 + z**2 / n
    center = (share + z**2 / (2 * n)) / shrink
    half = z * np.sqrt(share * (1 - share) / n + z**2 / (4 * n**2)) / shrink
    return center - half, center + half
