"""Non-inferiority for bounded per-item differences by betting (Waudby-Smith & Ramdas 2023): valid
for any distribution of the differences on their known range, skewed ones included (a merge that
loses a skill on a few items), where the shifted sign-flip test assumes symmetry.

Per item x = d + margin, H0: E[x] <= 0. For each bet u of a fixed grid the wealth
prod_i (1 + u x_i / |low + margin|) is a nonnegative supermartingale under H0 (a loss of the whole
range costs at most fraction u); their mean is an e-value, and p = min(1, 1 / e) (Markov; Ville's
inequality makes it valid at every n). The gate decides judge.score with it
(`compare_paired(method="betting", bounds=...)`, whose interval is `betting_bounds`);
bench/simulate_skewed.py compares it with the sign-flip test; its power depends on the range
(see there): too little for probing's 0.03 margin on [-1, 1] at its sizes.
"""

from __future__ import annotations

import math

import numpy as np

from mergeqa.stats._base import check_margin

BETS = np.geomspace(0.02, 0.9, 16)


def betting_pvalue(d, margin: float, *, low: float, high: float, bets: np.ndarray = BETS) -> np.ndarray:
    """p-value of H0: mean(d) <= -margin for per-item differences `d` known to lie in [low, high].

    `d`: (..., n) array, the last axis the items (vectorised over leading axes, e.g. simulated
    runs). The items' order does not matter to the final e-value. Needs low < -margin <= 0 < high.
    """
    margin = check_margin(margin)
    if not low < -margin < high:
        raise ValueError(f"low={low}, high={high}, margin={margin}: need low < -margin < high (the range of the "
                         "per-item differences, e.g. -1 and 1 for scores in [0, 1])")
    d = np.asarray(d, dtype=float)
    if np.any(d < low - 1e-12) or np.any(d > high + 1e-12):
        raise ValueError(f"differences outside their stated range [{low}, {high}]")
    return _pvalue(d, -margin, low, bets)


def _pvalue(d: np.ndarray, c: float, low: float, bets: np.ndarray) -> np.ndarray:
    """p of H0: mean(d) <= c (low < c), the mixture of the bets' wealths; vectorised over d's
    leading axes."""
    x = (d - c)[..., None] / (c - low)  # >= -1: a bet of fraction u never loses more than u
    log_wealth = np.log1p(bets * x).sum(axis=-2)  # (..., bets)
    top = log_wealth.max(axis=-1, keepdims=True)
    log_e = top[..., 0] + np.log(np.exp(log_wealth - top).mean(axis=-1))
    return np.minimum(1.0, np.exp(-log_e))


def largest_evalue(n: int, margin: float, *, low: float, bets: np.ndarray = BETS) -> float:
    """The e-value of a merge identical to its reference on every item (d = 0): the most evidence
    n items can give; below 1 / alpha no data passes. (1 + u margin / |low + margin|)^n, mixed."""
    x = margin / -(low + margin)
    return float(np.mean(np.exp(n * np.log1p(bets * x))))


def items_to_show(margin: float, alpha: float, *, low: float) -> int:
    """The fewest items on which a perfect copy of the reference shows non-inferiority."""
    n = 1
    while largest_evalue(n, margin, low=low) < 1 / alpha:
        n = n * 2 if n < 1 << 20 else math.inf
        if n == math.inf:
            return -1
    lo, hi = n // 2, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if largest_evalue(mid, margin, low=low) < 1 / alpha else (lo, mid)
    return hi


def pvalue_at(d: np.ndarray, c: float, low: float, high: float, bets: np.ndarray = BETS) -> float:
    """p-value of H0: mean(d) <= c for d in [low, high] (low < c < high), by the same betting."""
    return float(_pvalue(np.asarray(d, dtype=float), c, low, bets))


def betting_bounds(d, *, low: float, high: float, confidence: float, tol: float = 1e-6) -> tuple[float, float]:
    """The interval of the betting test, inverted: (L, U) with L the largest c whose H0: mean(d) <= c
    is rejected at 1 - confidence over two sides (each side (1 - confidence) / 2), U likewise for
    H0: mean(d) >= c. Non-inferiority at margin m is shown exactly when L > -m (up to `tol`)."""
    d = np.asarray(d, dtype=float)
    side = (1 - confidence) / 2

    def lower(x: np.ndarray, lo: float, hi: float) -> float:
        if x.size == 0 or pvalue_at(x, lo + tol, lo, hi) > side:
            return lo
        a, b = lo + tol, float(x.mean())
        if pvalue_at(x, b, lo, hi) <= side:  # cannot happen for a mean: the wealth does not grow at c = mean
            return b
        while b - a > tol:
            mid = (a + b) / 2
            a, b = (mid, b) if pvalue_at(x, mid, lo, hi) <= side else (a, mid)
        return a

    return lower(d, low, high), -lower(-d, -high, -low)
