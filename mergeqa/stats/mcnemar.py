"""Paired 0/1 outcomes: the exact McNemar test ("do the two models differ?") and Tango's score
test and interval ("is the drop within the margin?", non-inferiority).

Count-level functions are vectorised over numpy arrays of counts, so the simulation runs thousands
of trials at once through the same code the gate uses; item-level functions validate and count.
"""

from __future__ import annotations

import numpy as np

from mergeqa.stats._base import (
    PairedTestResult,
    check_alternative,
    check_confidence,
    is_binary,
    paired_arrays,
)


def discordant_counts(merged, reference) -> tuple[int, int, int]:
    """(wins, losses, n): items only merged gets right, items only reference gets right, items."""
    merged, reference = paired_arrays(merged, reference)
    if not is_binary(merged, reference):
        raise ValueError("McNemar needs 0/1 outcomes in both arrays; use signflip_test for scores")
    wins = int(np.sum((merged == 1) & (reference == 0)))
    losses = int(np.sum((merged == 0) & (reference == 1)))
    return wins, losses, merged.size


def mcnemar_pvalue(wins, losses, *, alternative: str = "two-sided", mid_p: bool = False):
    """Exact McNemar p-value: wins ~ Binomial(wins + losses, 1/2) under "no difference".

    'less' is H1: merged worse; 'two-sided' doubles the smaller tail (capped at 1), as
    statsmodels' `mcnemar(exact=True)` does. `mid_p` counts half the observed point's probability,
    which is less conservative (Fagerland et al. 2013) but no longer guarantees the level.
    No discordant pairs give p = 1 (0.5 with mid-p for one-sided). Vectorised over counts.
    """
    from scipy.stats import binom

    check_alternative(alternative)
    wins, losses = np.asarray(wins), np.asarray(losses)
    m = wins + losses
    half_point = 0.5 * binom.pmf(wins, m, 0.5) if mid_p else 0.0
    # P(W >= wins) and P(W <= wins), each minus half the point mass for mid-p
    greater = binom.sf(wins - 1, m, 0.5) - half_point
    less = binom.cdf(wins, m, 0.5) - half_point
    if alternative == "greater":
        return greater
    if alternative == "less":
        return less
    return np.minimum(1.0, 2.0 * np.minimum(less, greater))


def mcnemar(merged, reference, *, alternative: str = "two-sided", mid_p: bool = False):
    """Exact McNemar test on per-item 0/1 outcomes; the statistic is wins - losses."""
    wins, losses, _ = discordant_counts(merged, reference)
    pvalue = mcnemar_pvalue(wins, losses, alternative=alternative, mid_p=mid_p)
    return PairedTestResult(float(wins - losses), float(pvalue))


def tango_statistic(wins, losses, n, effect0):
    """Tango's (1998) score statistic for H0: effect == effect0, effect = (wins - losses) / n.

    The variance uses the maximum-likelihood cell probabilities restricted to the null (closed
    form, a quadratic's larger root). Large values favour effect > effect0. Vectorised.
    """
    wins, losses, n = (np.asarray(x, dtype=float) for x in (wins, losses, n))
    drop = -np.asarray(effect0, dtype=float)  # p(loss) - p(win) under the null
    linear = wins + losses + drop * (2 * n + losses - wins)
    discriminant = np.maximum(linear**2 - 8 * n * losses * drop * (1 + drop), 0.0)
    p_loss = (linear + np.sqrt(discriminant)) / (4 * n)
    variance = np.maximum(n * (2 * p_loss - drop - drop**2), 0.0)
    excess = wins - losses + n * drop
    with np.errstate(divide="ignore", invalid="ignore"):
        z = excess / np.sqrt(variance)
    # no spread under the null: everything observed against it (x/0 = +-inf) or nothing (0/0)
    return np.where(np.isnan(z), 0.0, z)


def tango_pvalue(wins, losses, n, *, effect0: float = 0.0, alternative: str = "greater"):
    """Asymptotic p-value of Tango's score test; 'greater' with effect0 = -margin is the
    non-inferiority test (H1: merged is worse by less than margin). Vectorised."""
    from scipy.special import ndtr

    check_alternative(alternative)
    z = tango_statistic(wins, losses, n, effect0)
    if alternative == "greater":
        return ndtr(-z)
    if alternative == "less":
        return ndtr(z)
    return np.minimum(1.0, 2.0 * ndtr(-np.abs(z)))


def tango_interval(wins, losses, n, *, confidence: float = 0.95):
    """Tango's score interval for the effect: the effects its test does not reject at each side's
    (1 - confidence) / 2. Found by bisection on [-1, 1]; vectorised over counts."""
    from scipy.special import ndtri

    z = ndtri(0.5 + check_confidence(confidence) / 2)
    shape = np.broadcast(np.asarray(wins), np.asarray(losses), np.asarray(n)).shape
    bounds = []
    for target in (z, -z):  # the statistic falls as effect0 rises
        low, high = np.full(shape, -1.0), np.full(shape, 1.0)
        for _ in range(60):
            middle = (low + high) / 2
            above = tango_statistic(wins, losses, n, middle) > target
            low, high = np.where(above, middle, low), np.where(above, high, middle)
        bounds.append((low + high) / 2)
    return bounds[0], bounds[1]
