"""The statistics as the gate calls them, checked against independent computations, so that a
deliberate slip at a call site (a wrong n, a wrong level, a wrong share of alpha) fails a test.
bench/mutate_statistics.py applies such slips one at a time and runs these tests with
tests/test_intervals.py (the single-rate intervals: their level, rounding, the half win) and
tests/test_regression_each.py (regression against each parent).

Cost: milliseconds to a second; no models.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mergeqa.decision.significance import compare_paired
from mergeqa.decision.thresholds import load_thresholds
from mergeqa.retention.early_stop import _Loop
from mergeqa.stats import tango_interval
from mergeqa.stats.sequential import compare_sequential


def _items(wins: int, losses: int, n: int, right: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """0/1 arrays (merged, reference) with these discordant counts; the concordant items split
    right / wrong by `right`."""
    same = n - wins - losses
    both = round(right * same)
    merged = np.r_[np.ones(wins), np.zeros(losses), np.ones(both), np.zeros(same - both)]
    reference = np.r_[np.zeros(wins), np.ones(losses), np.ones(both), np.zeros(same - both)]
    return merged, reference


def _tango_p(wins: int, losses: int, n: int, margin: float) -> float:
    """Tango's non-inferiority p-value from scratch: the restricted maximum likelihood under
    H0: p(win) - p(loss) = -margin found numerically, then the score statistic's normal tail."""
    from scipy.optimize import minimize_scalar
    from scipy.special import ndtr

    effect0, rest = -margin, n - wins - losses

    def nll(p_loss):
        return -(losses * np.log(p_loss) + wins * np.log(p_loss + effect0) + rest * np.log(1 - 2 * p_loss - effect0))

    bounds = (max(0.0, -effect0) + 1e-12, (1 - effect0) / 2 - 1e-12)
    p_loss = minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-13}).x
    z = (wins - losses - n * effect0) / math.sqrt(n * (2 * p_loss + effect0 - effect0**2))
    return float(ndtr(-z))


@pytest.mark.parametrize("wins, losses, n, margin", [(5, 12, 80, 0.05), (30, 29, 400, 0.02), (3, 3, 60, 0.1),
                                                     (40, 52, 1000, 0.02)])
def test_the_gates_noninferiority_p_is_tangos_on_the_items_compared(wins, losses, n, margin):
    """compare_paired (what retention and regression run on 0/1 items) reports Tango's p for the
    n items compared: checked against the likelihood maximised here, not against mcnemar.py."""
    c = compare_paired(*_items(wins, losses, n), margin=margin, alpha=0.05)
    assert c.method == "mcnemar" and c.n == n
    assert c.p_noninferiority == pytest.approx(_tango_p(wins, losses, n, margin), rel=1e-6)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_the_interval_is_at_1_minus_2_alpha_and_agrees_with_the_verdict(alpha):
    """Each side of the interval is the one-sided test at alpha: pass <=> ci_low > -margin, and the
    interval is Tango's at 1 - 2 alpha, labelled so."""
    margin = 0.03
    for wins, losses, n in [(10, 14, 300), (20, 26, 300), (5, 12, 80), (0, 0, 150), (8, 21, 400)]:
        c = compare_paired(*_items(wins, losses, n), margin=margin, alpha=alpha)
        np.testing.assert_allclose(c.ci, tango_interval(wins, losses, n, confidence=1 - 2 * alpha), atol=1e-9)
        assert (c.p_noninferiority <= alpha) == (c.ci[0] > -margin), (wins, losses, n)
        assert f"{100 * (1 - 2 * alpha):g}% CI" in c.describe()


def test_each_sequential_comparison_runs_at_alpha_over_2_tasks():
    """Three tasks, two comparisons each: a copy of the owner is decided where the test at
    alpha / 6 decides, which is later than at full alpha (there it would stop too early, and the
    run's chance of a false verdict would be up to 6 x alpha)."""
    t = load_thresholds(None)
    t.values["retention"] = {**t.values["retention"], "capabilities": {"x": "a"}}
    loop = _Loop(None, [], t, None, None, 50, alpha=0.05, comparisons=6)
    owner = (np.random.default_rng(4).random(1000) < 0.9).astype(float)
    loop._retention("x", {"a": (owner.copy(), owner)}, {"a": float(owner.mean())}, 1000)
    decision = loop.decisions[("x", "retention")]
    margin = 0.05 * owner.mean()
    at_share = compare_sequential(owner, owner, margin=margin, alpha=0.05 / 6, n_max=1000)
    at_full = compare_sequential(owner, owner, margin=margin, alpha=0.05, n_max=1000)
    assert decision.alpha == pytest.approx(0.05 / 6) and decision.comparisons == 6
    assert decision.comparison.verdict == "pass" and decision.comparison.n == at_share.n > at_full.n
