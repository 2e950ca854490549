"""Non-inferiority for bounded per-item differences by betting (Waudby-Smith & Ramdas 2023): valid
for any distribution of the differences on their known range, skewed ones included (a merge that
loses a skill on a few items), where the shifted sign-flip test assumes symmetry.

Per item x = (d - c) / (c - low) >= -1 for H0: E[d] <= c (c = -margin for non-inferiority). The
wealth prod_i (1 + u_i x_i), each bet u_i in [0, 1) chosen from the items before it only
(predictable), is a nonnegative supermartingale under H0; so is its mean over `ORDERS` seeded
orders of the items (the items are exchangeable), an e-value, and p = min(1, 1 / e) (Markov).
Two betting strategies are averaged (each over the same orders): the plug-in Kelly bet u_i = sum(x)
/ sum(x^2) over a prior item at x(d = 0) and the items before i ("GRAPA", Waudby-Smith & Ramdas
section 5.3), clipped once to 0.99 and once to 0.5, weighted 3 : 1. The bold one lets a merge
identical to its reference pass from `items_to_show` items on, near the fewest any test valid on
this range can pass on (`fewest_items_any_test`: a loss of the whole range on a share `margin /
-low` of the items goes unseen that often); the cautious one keeps power when the differences are
noisy (its early bets, from few items, overshoot less). The mixture costs a factor 4/3 of evidence
for a perfect copy. The gate decides judge.score, probing, a task no parent owns and graded metrics
with a known range with it (`compare_paired(method="betting", bounds=...)`, whose interval is
`betting_bounds`); `bench/simulate_checks.py` has its size and power per check. The fixed grid of
bets it replaced (the mean of 16 bets 0.02..0.9) needed 114 items for a perfect copy where this
needs 64 (margin 0.05 on [-1, 1]), and had less power on noisy differences.
"""

from __future__ import annotations

import math

import numpy as np

from mergeqa.stats._base import check_margin

CAPS = (0.99, 0.5)  # the bold and the cautious strategy: the largest bet each may place
WEIGHTS = (0.75, 0.25)  # their prior weights in the e-value (fixed before any data)
ORDERS = 16  # seeded orders of the items, averaged (an order-free e-value up to this many draws)


def betting_pvalue(d, margin: float, *, low: float, high: float) -> np.ndarray:
    """p-value of H0: mean(d) <= -margin for per-item differences `d` known to lie in [low, high].

    `d`: (..., n) array, the last axis the items (vectorised over leading axes, e.g. simulated
    runs). The e-value depends on the order given (its 16 orders are seeded permutations of it,
    fixed before the data, which keeps them valid for independent items; sorting first would not):
    the gate passes items in document order, so a run repeats. Needs low < -margin <= 0 < high.
    """
    margin = check_margin(margin)
    if not low < -margin < high:
        raise ValueError(f"low={low}, high={high}, margin={margin}: need low < -margin < high (the range of the "
                         "per-item differences, e.g. -1 and 1 for scores in [0, 1])")
    d = np.asarray(d, dtype=float)
    if np.any(d < low - 1e-12) or np.any(d > high + 1e-12):
        raise ValueError(f"differences outside their stated range [{low}, {high}]")
    return _pvalue(d, -margin, low)


def _orders(n: int, orders: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.arange(n)] + [rng.permutation(n) for _ in range(orders - 1)])


def _pvalue(d: np.ndarray, c: float, low: float, orders: int = ORDERS, seed: int = 0) -> np.ndarray:
    """p of H0: mean(d) <= c (low < c) by plug-in betting over `orders` seeded orders of the items
    (the first the given one); vectorised over d's leading axes."""
    n = d.shape[-1]
    if n == 0:
        return np.ones(d.shape[:-1]) if d.ndim > 1 else np.float64(1.0)
    x = ((d - c) / (c - low))[..., _orders(n, orders, seed)]  # (..., orders, n), each >= -1
    prior = -c / (c - low)  # x of a difference 0: the bet a merge as good as its reference earns
    s = np.cumsum(x, axis=-1) - x + prior  # sums over the prior and the items before each
    q = np.cumsum(x * x, axis=-1) - x * x + prior * prior
    with np.errstate(divide="ignore", invalid="ignore"):
        kelly = np.where(q > 0, s / q, 0.0)
    log_wealth = np.concatenate([np.log1p(np.clip(kelly, 0.0, cap) * x).sum(axis=-1) + np.log(w * len(CAPS))
                                 for cap, w in zip(CAPS, WEIGHTS)], axis=-1)  # (..., strategies x orders), weighted
    top = log_wealth.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        log_e = top[..., 0] + np.log(np.exp(log_wealth - top).mean(axis=-1))
    return np.minimum(1.0, np.exp(-log_e))


def largest_evalue(n: int, margin: float, *, low: float) -> float:
    """The e-value of a merge identical to its reference on every item (d = 0): the most evidence
    n items can give; below 1 / alpha no data passes. Each strategy bets its cap from the first
    item on: the WEIGHTS' mean over CAPS of (1 + cap x(0))^n."""
    x = margin / -(low + margin)
    return float(sum(w * np.exp(n * np.log1p(cap * x)) for cap, w in zip(CAPS, WEIGHTS)))


def items_to_show(margin: float, alpha: float, *, low: float) -> int:
    """The fewest items on which a perfect copy of the reference shows non-inferiority."""
    n = 1
    while largest_evalue(n, margin, low=low) < 1 / alpha:
        n += 1
    return n


def fewest_items_any_test(margin: float, alpha: float, *, low: float) -> int:
    """The fewest items on which *any* test valid for every distribution on [low, ...] passes a
    perfect copy: a loss of -low on a share margin / -low of the items goes unseen with
    probability (1 - margin / -low)^n, and a test that passes unseen losses must keep that <= alpha."""
    return int(math.ceil(math.log(alpha) / math.log1p(-margin / -low) - 1e-12))


def pvalue_at(d: np.ndarray, c: float, low: float, high: float) -> float:
    """p-value of H0: mean(d) <= c for d in [low, high] (low < c < high), by the same betting."""
    return float(_pvalue(np.asarray(d, dtype=float), c, low))


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
