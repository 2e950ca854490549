"""Paired sign-flip (permutation) test for any per-item metric, and the interval it implies.

If the two models are interchangeable, each item's difference is as likely to carry either sign,
so flipping signs draws from the null: exact, whatever the metric. Testing a shifted null
(effect == theta, as non-inferiority does) treats the differences as symmetric about theta; for the
mean this is also asymptotically valid without symmetry.
"""

from __future__ import annotations

import numpy as np

from mergeqa.stats._base import (
    PairedTestResult,
    check_alternative,
    check_confidence,
    check_count,
    paired_arrays,
)

_CELLS_PER_CHUNK = 2**22  # flipped-item mask cells per batch: ~4 MB of bools, 32 MB as floats


class SignFlipNull:
    """The sign-flip null distribution of one sample of paired differences.

    Each entry is one set F of flipped items, kept as sum_F(d) and |F| with its probability weight.
    H0: effect == theta then reduces to the sign of sum_F(d - theta) = sum_F(d) - theta * |F|, so
    every null and the interval come from the same flips. Exact enumeration (over how many items
    of each distinct value are flipped) when that takes at most `n_resamples` entries, as for
    tiny n or a constant difference; otherwise `n_resamples` random flips plus the identity,
    which gives scipy's (k + 1) / (n_resamples + 1) Monte Carlo p-values.
    """

    def __init__(self, differences, *, n_resamples: int = 10_000, seed: int = 0):
        d = np.sort(np.asarray(differences, dtype=float))  # random flips ignore item order
        check_count("n_resamples", n_resamples)
        self._values, self._counts = np.unique(d, return_counts=True)
        cells = 1
        for count in self._counts:  # stop multiplying once past the budget
            cells *= int(count) + 1
            if cells > n_resamples:
                break
        if cells <= n_resamples:
            self._enumerate()
        else:
            self._draw(d, n_resamples, np.random.default_rng(seed))

    def _enumerate(self) -> None:
        from scipy.stats import binom

        shape = tuple(int(c) + 1 for c in self._counts)
        flipped = (
            np.indices(shape).reshape(len(shape), -1).T if shape else np.zeros((1, 0), dtype=int)
        )
        self.sums = flipped @ self._values
        self.sizes = flipped.sum(axis=1)
        self.weights = np.prod(binom.pmf(flipped, self._counts, 0.5), axis=1)
        self.total = 1.0
        self.exact = True

    def _draw(self, d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> None:
        sums, sizes = [np.zeros(1)], [np.zeros(1, dtype=int)]  # the identity: nothing flipped
        rows = max(1, _CELLS_PER_CHUNK // d.size)
        for start in range(0, n_resamples, rows):
            flipped = rng.integers(0, 2, size=(min(rows, n_resamples - start), d.size), dtype=bool)
            sums.append(flipped @ d)
            sizes.append(flipped.sum(axis=1))
        self.sums, self.sizes = np.concatenate(sums), np.concatenate(sizes)
        self.weights = np.ones(self.sums.size)
        self.total = float(self.sums.size)
        self.exact = False

    def pvalue(self, theta: float = 0.0, alternative: str = "two-sided") -> float:
        """p-value for H0: effect == theta; 'less' is H1: effect < theta (merged worse)."""
        check_alternative(alternative)
        excess = self.sums - theta * self.sizes  # sum over flipped items of (d - theta)
        # treat numerically-equal sums as ties, as scipy does (its tolerance is 100 eps)
        tie = 1e-10 * float(self._counts @ np.abs(self._values - theta))
        # flipping F turns sum(d - theta) into sum(d - theta) - 2 * excess
        less = min(1.0, float(self.weights[excess >= -tie].sum() / self.total))
        greater = min(1.0, float(self.weights[excess <= tie].sum() / self.total))
        return {"less": less, "greater": greater}.get(alternative, min(1.0, 2 * min(less, greater)))

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """The thetas that neither one-sided test rejects at (1 - confidence) / 2.

        p('greater') at theta is the weight of flips whose flipped items' mean is <= theta (plus
        the empty flip), so the bounds are weighted quantiles of those means; (-inf, inf) when the
        empty flip alone outweighs the level (too few items to reject anything).
        """
        alpha = (1 - check_confidence(confidence)) / 2
        some = self.sizes > 0
        empty = self.weights[~some].sum()
        if empty / self.total > alpha:
            return -np.inf, np.inf
        means, weights = self.sums[some] / self.sizes[some], self.weights[some]
        order = np.argsort(means, kind="stable")
        means, weights = means[order], weights[order]
        first_above = np.argmax((empty + np.cumsum(weights)) / self.total > alpha)
        last_above = np.argmax((empty + np.cumsum(weights[::-1])) / self.total > alpha)
        return float(means[first_above]), float(means[::-1][last_above])


def signflip_test(
    merged,
    reference,
    *,
    alternative: str = "two-sided",
    null: float = 0.0,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedTestResult:
    """Sign-flip test of H0: mean(merged - reference) == null; the statistic is the mean."""
    merged, reference = paired_arrays(merged, reference)
    d = merged - reference
    pvalue = SignFlipNull(d, n_resamples=n_resamples, seed=seed).pvalue(null, alternative)
    return PairedTestResult(float(d.mean()) if d.size else float("nan"), pvalue)


def signflip_interval(
    merged, reference, *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Interval for mean(merged - reference) by inverting the sign-flip test."""
    merged, reference = paired_arrays(merged, reference)
    null = SignFlipNull(merged - reference, n_resamples=n_resamples, seed=seed)
    return null.interval(confidence)
