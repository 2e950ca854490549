"""Anytime-valid paired test on 0/1 outcomes: score items in a seeded random order, in batches,
and stop as soon as non-inferiority (pass) or a regression (fail) is shown at alpha.

Each side is an e-process: a mixture, over a fixed grid of bets, of test martingales
prod_i (1 + bet * x_i) (Waudby-Smith & Ramdas 2023, "betting"), which stays a (super)martingale
under its null at every n, so by Ville's inequality P(it ever reaches 1/alpha) <= alpha however
often it is looked at. Per item d = merged - reference in {-1 (loss), 0 (tie), +1 (win)}:

- regression (fail), H0: effect >= 0, x = -d. Ties give a factor 1, so this is a test on the
  discordant pairs alone: (1 + u)^losses (1 - u)^wins is the likelihood ratio of
  P(loss | discordant) = (1 + u) / 2 against 1/2, a sequential McNemar test.
- non-inferiority (pass), H0: effect <= -margin, x = d + margin, bets scaled so a loss never
  costs more than fraction u of the wealth; a tie is evidence too (it is no drop).

The e-values depend on the counts at each look only, so a cache that holds more items in the
same order gives the same verdict at the same n. Count-level functions are vectorised (the
simulation scores thousands of trials through them); item-level ones validate and count.
Not the fixed-n test: for a decision on every item at once see `mergeqa.decision.significance`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mergeqa.stats._base import (
    check_alpha,
    check_choice,
    check_count,
    check_margin,
    is_binary,
    paired_arrays,
)

# Fractions of the largest affordable bet, equal prior weight on each: 16 log-spaced bets from
# 0.05 (a 1-point effect at 15 % discordance is best bet at ~0.07) to 0.9 (a merge that loses
# nearly every discordant item). Any fixed grid keeps the level; this one was picked among five
# with bench/simulate_sequential.py for items used on clear verdicts.
BETS = np.geomspace(0.05, 0.9, 16)
SEQUENTIAL_VERDICTS = ("pass", "fail", "inconclusive", "continue")
DEFAULT_BATCH = 50


def _log_mixture(log_wealth: np.ndarray) -> np.ndarray:
    """log(mean over the last axis of exp(log_wealth)), stable."""
    top = log_wealth.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return top[..., 0] + np.log(np.exp(log_wealth - top).mean(axis=-1))


def log_evalue_regression(wins, losses, bets: np.ndarray = BETS):
    """log e-value against H0 "merged is not worse" (effect >= 0) after these counts.

    mean_k (1 + u_k)^losses (1 - u_k)^wins; ties do not enter. Vectorised over counts.
    """
    wins, losses = np.asarray(wins, dtype=float)[..., None], np.asarray(losses, dtype=float)[..., None]
    return _log_mixture(losses * np.log1p(bets) + wins * np.log1p(-bets))


def log_evalue_noninferiority(wins, losses, n, margin: float, bets: np.ndarray = BETS):
    """log e-value against H0 "merged is worse by the margin or more" (effect <= -margin).

    mean_k prod_i (1 + l_k (d_i + margin)) with l_k = u_k / (1 - margin), the largest bet that a
    loss (d + margin = margin - 1) cannot ruin. Vectorised over counts.
    """
    margin = check_margin(margin)
    if margin >= 1:
        raise ValueError(f"margin={margin:g} is an accuracy difference for 0/1 outcomes "
                         f"(0.01 = one point): did you mean {margin / 100:g}?")
    wins, losses, n = (np.asarray(x, dtype=float)[..., None] for x in (wins, losses, n))
    ties = n - wins - losses
    scale = bets / (1 - margin)
    return _log_mixture(losses * np.log1p(-bets) + ties * np.log1p(scale * margin)
                        + wins * np.log1p(scale * (1 + margin)))


def look_points(n_available: int, n_max: int, batch: int = DEFAULT_BATCH) -> np.ndarray:
    """Item counts at which the test looks: every `batch` items, and at n_max (the last partial
    batch), but only those within the `n_available` items scored so far."""
    looks = list(range(batch, n_max, batch)) + [n_max]
    return np.array([n for n in looks if n <= n_available], dtype=int)


@dataclass(frozen=True)
class SequentialComparison:
    """An anytime-valid verdict on the first `n` of `n_available` scored items (of `n_max`).

    `verdict`: 'pass' (non-inferiority shown at `margin`), 'fail' (a regression shown),
    'inconclusive' (all n_max items scored, neither shown) or 'continue' (score more items).
    `n` is where the test stopped (or the last look); `effect` = mean(merged - reference) over
    those n items, in accuracy units. `e_*` are the e-values at n; `p_*` = min(1, 1 / the largest
    e-value up to n), anytime-valid p-values (Holm may adjust them across comparisons).
    """

    verdict: str
    n: int
    n_available: int
    n_max: int
    effect: float
    wins: int
    losses: int
    e_regression: float
    e_noninferiority: float
    p_regression: float
    p_noninferiority: float
    margin: float
    alpha: float
    batch: int

    def __post_init__(self):
        check_choice("verdict", self.verdict, SEQUENTIAL_VERDICTS)

    @property
    def decided(self) -> bool:
        """True when scoring more items cannot change the verdict."""
        return self.verdict != "continue"

    @property
    def items_saved(self) -> float:
        """Share of the n_max items this verdict did not need."""
        return 1 - self.n / self.n_max if self.n_max else 0.0

    def figures(self) -> dict[str, float | str]:
        """Flat figures for junit properties, as PairedComparison.figures()."""
        return {"verdict": self.verdict, "n": self.n, "n_max": self.n_max,
                "items_saved": self.items_saved, "effect": self.effect,
                "e_regression": self.e_regression, "e_noninferiority": self.e_noninferiority,
                "p_regression": self.p_regression, "p_noninferiority": self.p_noninferiority,
                "margin": self.margin, "alpha": self.alpha, "method": "sequential betting"}

    def describe(self, reference: str = "reference") -> str:
        """One line for a verdict message: what was shown, after how many items."""
        shown = {"pass": "non-inferior (drop within the margin shown)",
                 "fail": "significant regression",
                 "inconclusive": "inconclusive after every item",
                 "continue": "undecided so far"}[self.verdict]
        return (f"{shown}: merged - {reference} = {100 * self.effect:.1f} pts after {self.n} of "
                f"{self.n_max} items (sequential, margin {100 * self.margin:.1f} pts, "
                f"e(regression)={self.e_regression:.3g}, e(non-inferiority)="
                f"{self.e_noninferiority:.3g}, stop at 1/alpha={1 / self.alpha:g})")


def sequential_counts(wins, losses, n, *, margin: float, alpha: float = 0.05):
    """Count-level decision over looks: arrays (..., looks) of cumulative wins, losses and items.

    Returns (first pass look, first fail look), the index of the first look at which each side
    reaches 1/alpha (n_looks when it never does); pass wins ties, as `significance.decide`.
    """
    threshold = math.log(1 / check_alpha(alpha))
    passed = log_evalue_noninferiority(wins, losses, n, margin) >= threshold
    failed = log_evalue_regression(wins, losses) >= threshold
    looks = passed.shape[-1]

    def first(hit):
        return np.where(hit.any(axis=-1), hit.argmax(axis=-1), looks)

    return first(passed), first(failed)


def compare_sequential(merged, reference, *, margin: float, alpha: float = 0.05,
                       n_max: int | None = None, batch: int = DEFAULT_BATCH) -> SequentialComparison:
    """The sequential verdict on per-item 0/1 outcomes scored so far, in the order scored.

    `merged[i]`, `reference[i]` are the i-th item of the seeded order (`item_order`); `n_max` is
    how many items the task has (default: all given). Looks every `batch` items; the verdict is
    the first look at which either side reached 1/alpha, so calling it again on a longer prefix
    never changes a decided verdict. A drop-in for the gate's fixed-n decision:

    >>> import numpy as np
    >>> rng = np.random.default_rng(3)
    >>> reference = (rng.random(2000) < 0.7).astype(int)
    >>> merged = np.where(rng.random(2000) < 0.15, 1 - reference, reference)  # 6 points worse
    >>> c = compare_sequential(merged, reference, margin=0.01)
    >>> c.verdict, c.n, c.n_max
    ('fail', 300, 2000)
    """
    margin, alpha = check_margin(margin), check_alpha(alpha)
    batch = check_count("batch", batch)
    merged, reference = paired_arrays(merged, reference)
    if not is_binary(merged, reference):
        raise ValueError("the sequential test needs 0/1 outcomes in both arrays; "
                         "use significance.compare_paired for graded scores")
    available = merged.size
    n_max = available if n_max is None else check_count("n_max", n_max)
    if available > n_max:
        raise ValueError(f"{available} items scored but n_max={n_max}: n_max is the task's size")
    looks = look_points(available, n_max, batch)
    if looks.size == 0:
        return SequentialComparison("continue", 0, available, n_max, math.nan, 0, 0, 1.0, 1.0,
                                    1.0, 1.0, margin, alpha, batch)
    d = merged - reference
    wins = np.cumsum(d > 0)[looks - 1]
    losses = np.cumsum(d < 0)[looks - 1]
    first_pass, first_fail = sequential_counts(wins, losses, looks, margin=margin, alpha=alpha)
    stop = int(min(first_pass, first_fail))
    if stop < looks.size:
        verdict = "pass" if first_pass <= first_fail else "fail"
    else:
        verdict = "inconclusive" if looks[-1] == n_max else "continue"
        stop = looks.size - 1
    log_reg = log_evalue_regression(wins[: stop + 1], losses[: stop + 1])
    log_ni = log_evalue_noninferiority(wins[: stop + 1], losses[: stop + 1], looks[: stop + 1], margin)
    n, w, loss = int(looks[stop]), int(wins[stop]), int(losses[stop])
    return SequentialComparison(
        verdict, n, available, n_max, (w - loss) / n, w, loss,
        float(np.exp(log_reg[-1])), float(np.exp(log_ni[-1])),
        float(min(1.0, np.exp(-log_reg.max()))), float(min(1.0, np.exp(-log_ni.max()))),
        margin, alpha, batch)


def item_order(n_items: int, seed: int = 0) -> np.ndarray:
    """The seeded random order items are scored in (a permutation of range(n_items))."""
    check_count("n_items", n_items, minimum=0)
    check_count("seed", seed, minimum=0)
    return np.random.default_rng(seed).permutation(n_items)


def run_sequential(score: Callable[[np.ndarray], tuple], n_items: int, *, margin: float,
                   alpha: float = 0.05, seed: int = 0, batch: int = DEFAULT_BATCH,
                   scored: tuple = ((), ())) -> SequentialComparison:
    """Score items batch by batch in the seeded order until the verdict is known.

    `score(doc_ids)` returns (merged, reference) 0/1 outcomes for those items; `scored` holds the
    outcomes of a cached prefix of the same order, reused before anything is scored. The gate
    (mergeqa.retention.early_stop) runs the same loop for several comparisons that share each batch, scoring
    only the batch's documents through the engine (lm-eval's `samples=`):

    >>> import numpy as np
    >>> truth = np.random.default_rng(1).random(1000) < 0.6
    >>> calls = []
    >>> def score(ids):
    ...     calls.append(len(ids))
    ...     return truth[ids].astype(int), truth[ids].astype(int)   # identical models
    >>> c = run_sequential(score, 1000, margin=0.05)
    >>> c.verdict, c.n, sum(calls)
    ('pass', 150, 150)
    """
    order = item_order(n_items, seed)
    merged, reference = (list(np.asarray(s, dtype=float)) for s in scored)
    result = compare_sequential(merged, reference, margin=margin, alpha=alpha, n_max=n_items,
                                batch=batch)
    while not result.decided:
        start = len(merged)
        stop = min(n_items, (start // batch + 1) * batch)
        m, r = score(order[start:stop])
        merged.extend(np.asarray(m, dtype=float))
        reference.extend(np.asarray(r, dtype=float))
        result = compare_sequential(merged, reference, margin=margin, alpha=alpha,
                                    n_max=n_items, batch=batch)
    return result
