"""What every paired test here shares: input validation and the result type.

Arguments are checked up front and misuse raises a `ValueError` that names the argument, the bad
value and the fix; the statistics modules then work on clean 1-D float arrays only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from mergeqa.core.errors import did_you_mean

ALTERNATIVES = ("two-sided", "less", "greater")


class PairedTestResult(NamedTuple):
    """A test's statistic and p-value; `alternative` is about mean(merged - reference)."""

    statistic: float
    pvalue: float


def paired_arrays(merged, reference) -> tuple[np.ndarray, np.ndarray]:
    """Per-item scores of the two models as aligned 1-D float arrays, or a precise ValueError."""
    arrays = []
    for name, values in (("merged", merged), ("reference", reference)):
        array = np.asarray(values)
        if array.ndim != 1:
            raise ValueError(f"{name} must be 1-D per-item scores; got shape {array.shape}")
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name} must hold numbers (0/1 or scores); got dtype {array.dtype}")
        array = array.astype(float)
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            raise ValueError(
                f"{name}[{bad[0]}] is {array[bad[0]]}: per-item scores must be finite "
                f"({bad.size} non-finite values); drop or re-score those items in both models"
            )
        arrays.append(array)
    if arrays[0].shape != arrays[1].shape:
        raise ValueError(
            f"merged has {arrays[0].size} items but reference has {arrays[1].size}: "
            "a paired comparison needs the same items, in the same order, for both models"
        )
    return arrays[0], arrays[1]


def is_binary(*arrays: np.ndarray) -> bool:
    """True when every value is 0 or 1 (an empty array counts as binary)."""
    return all(bool(np.isin(array, (0.0, 1.0)).all()) for array in arrays)


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`, else a ValueError listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}.{did_you_mean(str(value), choices)}")
    return value


def check_alternative(alternative: str) -> str:
    """One of 'two-sided', 'less' (merged worse), 'greater' (merged better)."""
    return check_choice("alternative", alternative, ALTERNATIVES)


def check_open_interval(name: str, value: float, low: float, high: float, hint: str = "") -> float:
    """`value` as a float strictly between `low` and `high`, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if not low < float(value) < high:
        raise ValueError(f"{name}={value} must be in ({low:g}, {high:g}){hint}")
    return float(value)


def check_alpha(alpha: float) -> float:
    """One-sided level in (0, 0.5): above 0.5 a one-sided test rejects more than it accepts."""
    return check_open_interval(
        "alpha", alpha, 0.0, 0.5, "; it is the one-sided significance level, e.g. 0.05"
    )


def check_confidence(confidence: float) -> float:
    """Two-sided confidence level in (0, 1), e.g. 0.95."""
    return check_open_interval("confidence", confidence, 0.0, 1.0, ", e.g. 0.95")


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """`value` as an int >= `minimum`, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def check_margin(margin: float) -> float:
    """The tolerated drop: a finite number >= 0 in the metric's own units."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float, np.number)):
        raise ValueError(f"margin must be a number; got {margin!r}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(
            f"margin={margin} must be finite and >= 0: it is the tolerated drop of the merged "
            "model, a positive number in metric units (0.01 = one accuracy point)"
        )
    return float(margin)


def check_counts(successes, n) -> tuple[np.ndarray, np.ndarray]:
    """Binomial counts as arrays: integers with 0 <= successes <= n and n >= 1 (vectorised)."""
    successes, n = np.asarray(successes), np.asarray(n)
    if successes.dtype.kind not in "iu" or n.dtype.kind not in "iu":
        raise ValueError(f"successes and n must be integer counts; got {successes!r}, {n!r}")
    if np.any(n < 1) or np.any(successes < 0) or np.any(successes > n):
        raise ValueError(f"need 0 <= successes <= n and n >= 1; got successes={successes}, n={n}")
    return successes, n
