"""Wilson score interval for a single proportion (one model's accuracy on n items).

Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1 and at small n.
"""

from __future__ import annotations

import numpy as np

from mergeqa.stats._base import check_confidence


def wilson_interval(successes, n, *, confidence: float = 0.95):
    """(low, high) of the Wilson interval, as statsmodels' `proportion_confint(method='wilson')`.

    Vectorised over `successes` and `n`; needs 0 <= successes <= n and n >= 1.
    """
    from scipy.special import ndtri

    check_confidence(confidence)
    successes, n = np.asarray(successes), np.asarray(n)
    if successes.dtype.kind not in "iu" or n.dtype.kind not in "iu":
        raise ValueError(f"successes and n must be integer counts; got {successes!r}, {n!r}")
    if np.any(n < 1) or np.any(successes < 0) or np.any(successes > n):
        raise ValueError(f"need 0 <= successes <= n and n >= 1; got successes={successes}, n={n}")
    z = ndtri(0.5 + confidence / 2)
    share = successes / n
    shrink = 1 + z**2 / n
    center = (share + z**2 / (2 * n)) / shrink
    half = z * np.sqrt(share * (1 - share) / n + z**2 / (4 * n**2)) / shrink
    return center - half, center + half
