"""Adjusted p-values for a family of tests (many tasks, many parents): Holm by default.

Holm controls the chance of any false "fail" across the family; Benjamini-Hochberg controls only
the expected share of false ones, and is the option when many tasks make Holm too strict.
"""

from __future__ import annotations

import numpy as np

from mergeqa.stats._base import check_choice

CORRECTIONS = ("holm", "bh", "bonferroni", "none")


def adjust_pvalues(pvalues, method: str = "holm") -> np.ndarray:
    """Adjusted p-values, in the input's order, as statsmodels' `multipletests` computes them.

    'holm': Holm-Bonferroni step-down; 'bh': Benjamini-Hochberg step-up ('fdr_bh');
    'bonferroni': m * p; 'none': unchanged. All capped at 1.
    """
    check_choice("correction", method, CORRECTIONS)
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, one per test; got shape {p.shape}")
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"pvalues must lie in [0, 1]; got {p[np.isnan(p) | (p < 0) | (p > 1)]}")
    m = p.size
    if method == "none" or m == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, m * p)
    order = np.argsort(p, kind="stable")
    rank = np.arange(1, m + 1)
    if method == "holm":  # step-down: the i-th smallest is multiplied by m - i + 1, kept monotone
        adjusted = np.maximum.accumulate((m - rank + 1) * p[order])
    else:  # step-up: the i-th smallest is multiplied by m / i, kept monotone from the top
        adjusted = np.minimum.accumulate((m / rank * p[order])[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(1.0, adjusted)
    return out
