"""Paired bootstrap confidence intervals for the mean per-item difference: percentile or BCa.

Resampling items and averaging their differences equals drawing how often each distinct
difference value appears from a multinomial; with few distinct values (0/1 outcomes have three)
that is what runs, exact in distribution and cheap enough to bootstrap thousands of simulated
trials at once. Differences with many distinct values resample items, in chunks.
"""

from __future__ import annotations

import numpy as np

from mergeqa.stats._base import check_choice, check_confidence, check_count, paired_arrays

INTERVALS = ("bca", "percentile")
_CELLS_PER_CHUNK = 2**22  # resampled item indices per batch: 32 MB


def bootstrap_means(values, counts, *, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of samples stored as `counts` (shape (..., K)) of `values` (shape (K,)).

    Returns shape (..., n_resamples). Every sample needs at least one item.
    """
    values, counts = np.asarray(values, dtype=float), np.asarray(counts)
    n = counts.sum(axis=-1)
    draws = rng.multinomial(n, counts / n[..., None], size=(n_resamples, *n.shape))
    return np.moveaxis(draws @ values / n, 0, -1)


def mean_acceleration(values, counts):
    """BCa acceleration of the mean: the jackknife formula in closed form (nan for no spread).

    Leaving out one item of value v moves the mean by (mean - v) / (n - 1), so Efron's
    sum(u^3) / (6 sum(u^2)^1.5) over jackknife deviations u is the same ratio over (v - mean).
    """
    values, counts = np.asarray(values, dtype=float), np.asarray(counts)
    deviation = values - (counts @ values / counts.sum(axis=-1))[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (counts * deviation**3).sum(-1) / (6 * (counts * deviation**2).sum(-1) ** 1.5)


def bootstrap_interval(
    estimate, bootstrap, *, confidence: float = 0.95, interval: str = "bca", acceleration=None
):
    """(low, high) from a bootstrap distribution (last axis), computed as `scipy.stats.bootstrap`.

    'percentile' takes the (1 -+ confidence) / 2 quantiles; 'bca' (Efron & Tibshirani 1993,
    14.3) shifts them by the bias z0 and `acceleration` (required; nan, i.e. no spread, counts as
    0). Where z0 is infinite (the estimate lies outside every resample) BCa is undefined and the
    percentile interval is returned. Vectorised over leading axes; quantiles interpolate linearly.
    """
    from scipy.special import ndtr, ndtri

    check_choice("interval", interval, INTERVALS)
    alpha = (1 - check_confidence(confidence)) / 2
    ordered = np.sort(np.asarray(bootstrap, dtype=float), axis=-1)
    shape = ordered.shape[:-1]
    low, high = np.full(shape, alpha), np.full(shape, 1 - alpha)
    if interval == "bca":
        if acceleration is None:
            raise ValueError("interval='bca' needs the acceleration; see mean_acceleration()")
        estimate = np.asarray(estimate, dtype=float)[..., None]
        below = (ordered < estimate).sum(-1) + (ordered <= estimate).sum(-1)
        z0 = ndtri(below / (2 * ordered.shape[-1]))
        a = np.nan_to_num(np.asarray(acceleration, dtype=float), nan=0.0)
        with np.errstate(invalid="ignore"):
            shifted = [ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
                       for z in (ndtri(alpha), -ndtri(alpha))]
        low, high = (np.where(np.isfinite(z0) & ~np.isnan(q), q, default)
                     for q, default in zip(shifted, (low, high)))
    return _quantile_sorted(ordered, low), _quantile_sorted(ordered, high)


def _quantile_sorted(ordered: np.ndarray, q) -> np.ndarray:
    """Per-row quantile q of sorted rows, numpy's default linear interpolation."""
    position = np.asarray(q) * (ordered.shape[-1] - 1)
    below = np.clip(np.floor(position).astype(int), 0, ordered.shape[-1] - 1)
    above = np.minimum(below + 1, ordered.shape[-1] - 1)
    lower = np.take_along_axis(ordered, below[..., None], -1)[..., 0]
    upper = np.take_along_axis(ordered, above[..., None], -1)[..., 0]
    return lower + (position - below) * (upper - lower)


def paired_bootstrap_ci(
    merged,
    reference,
    *,
    confidence: float = 0.95,
    interval: str = "bca",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Paired bootstrap interval for mean(merged - reference), items resampled with replacement.

    The differences are sorted first, so item order does not matter. With many distinct
    differences (more than n/8) the draws are scipy's own (`rng.integers(0, n, (n_resamples, n))`
    on the sorted differences), so small samples match `scipy.stats.bootstrap` on those.
    """
    merged, reference = paired_arrays(merged, reference)
    check_count("n_resamples", n_resamples)
    check_choice("interval", interval, INTERVALS)
    d = np.sort(merged - reference)  # resamples ignore item order
    if d.size == 0:
        raise ValueError("paired_bootstrap_ci needs at least 1 item; got 0")
    rng = np.random.default_rng(seed)
    values, counts = np.unique(d, return_counts=True)
    if values.size * 8 <= d.size:
        means = bootstrap_means(values, counts, n_resamples=n_resamples, rng=rng)
    else:
        rows = max(1, _CELLS_PER_CHUNK // d.size)
        means = np.concatenate([
            d[rng.integers(0, d.size, (min(rows, n_resamples - start), d.size))].mean(axis=1)
            for start in range(0, n_resamples, rows)
        ])
    acceleration = mean_acceleration(values, counts) if interval == "bca" else None
    low, high = bootstrap_interval(
        d.mean(), means, confidence=confidence, interval=interval, acceleration=acceleration
    )
    return float(low), float(high)
