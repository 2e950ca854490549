"""Regression against each parent (mergeqa.decision.significance.against_each): the merge must be
within the tolerance of its weakest parent, and which parent is weakest is not taken from the same
items. Pass needs non-inferiority against one parent at alpha / k; fail needs a regression against
every parent. Fixed-n through `assess`, and the sequential early stop at alpha / (2 x tasks x k).

Cost: milliseconds; planted per-item results, no models (bench/simulate_regression.py measures the
false-pass rate by simulation).
"""

from __future__ import annotations

import numpy as np
import pytest

from mergeqa.decision.significance import against_each, compare_paired
from mergeqa.decision.thresholds import load_thresholds
from mergeqa.evaluate.engine import EvalResult, ItemRecord, TaskResult
from mergeqa.retention.assess import assess
from mergeqa.retention.early_stop import _Loop
from mergeqa.stats import tango_pvalue
from mergeqa.stats.sequential import compare_sequential


def _result(values) -> EvalResult:
    out = EvalResult(model=None)
    items = [ItemRecord(doc_id=i, doc_hash=f"h{i}", metrics={"acc": float(v)}, choice=None, weights={})
             for i, v in enumerate(values)]
    out.tasks["x"] = TaskResult("x", {"acc": float(np.mean(values))}, items, "cfg", higher_is_better={"acc": True})
    return out


def _thresholds():
    t = load_thresholds(None)
    t.values["retention"] = {**t.values["retention"], "capabilities": {"x": "a"}}
    return t


def _planted():
    """400 items. merged: 200 right. b: merged with 3 wins and 2 losses (score 0.4975, the weaker);
    a: b with 4 more items right (0.5075). Against b alone, at full alpha, merged is shown within
    the 2 % tolerance (Tango p = 0.034); against each at alpha / 2 it is not (2 x 0.034 > 0.05)."""
    merged = np.r_[np.ones(200), np.zeros(200)]
    b = merged.copy()
    b[:3], b[200:202] = 0, 1
    a = b.copy()
    a[202:206] = 1
    return merged, {"a": a, "b": b}


def test_the_planted_case_is_what_it_claims():
    merged, parents = _planted()
    assert parents["b"].mean() < parents["a"].mean()
    p_b = float(tango_pvalue(3, 2, 400, effect0=-0.02 * parents["b"].mean()))
    assert 0.025 < p_b <= 0.05


def test_regression_is_not_decided_against_the_parent_weakest_on_the_same_items():
    """Old rule: against b (weakest here) at alpha: pass. New: against each at alpha / 2:
    non-inferiority is not shown against either, and no regression against both: inconclusive."""
    merged, parents = _planted()
    v = assess("m", _result(merged), {n: _result(p) for n, p in parents.items()}, ["x"], _thresholds())
    reg = v[("x", "regression")]
    assert reg.outcome == "inconclusive"
    assert reg.figures["references"] == 2 and reg.data["compared_with"] == "b"
    p_b = float(tango_pvalue(3, 2, 400, effect0=-0.02 * parents["b"].mean()))
    assert reg.figures["p_noninferiority"] == pytest.approx(2 * p_b)
    assert "against each of 2 parents" in reg.message() and "95% CI" in reg.message()  # 1 - 2 x alpha / 2


def test_a_merge_level_with_one_parent_passes_however_far_below_the_other():
    """Within the tolerance of the weaker parent is what regression asks (retention covers the owner)."""
    rng = np.random.default_rng(0)
    b = (rng.random(1000) < 0.3).astype(float)
    a = np.maximum(b, rng.random(1000) < 0.9)
    v = assess("m", _result(b.copy()), {"a": _result(a), "b": _result(b)}, ["x"], _thresholds())
    assert v[("x", "regression")].outcome == "pass" and v[("x", "regression")].data["compared_with"] == "b"
    assert v[("x", "retention")].outcome == "fail"


def test_fail_needs_a_regression_against_every_parent():
    """Far below a (p ~ 1e-12) but not significantly below b (5 wins, 7 losses), and too few items
    to show non-inferiority: inconclusive, not fail (the largest p_regression decides)."""
    b = np.r_[np.zeros(5), np.ones(7), np.ones(30), np.zeros(58)]
    merged = np.r_[np.ones(5), np.zeros(7), np.ones(30), np.zeros(58)]
    a = np.maximum(b, np.r_[np.zeros(12), np.zeros(30), np.ones(40), np.zeros(18)])
    v = assess("m", _result(merged), {"a": _result(a), "b": _result(b)}, ["x"], _thresholds())
    reg = v[("x", "regression")]
    each = {n: compare_paired(merged, p, margin=0.02 * p.mean(), alpha=0.025) for n, p in (("a", a), ("b", b))}
    assert each["a"].p_regression < 1e-6 < 0.05 < each["b"].p_regression
    assert reg.outcome == "inconclusive"
    assert reg.figures["p_regression"] == pytest.approx(each["b"].p_regression)


def test_against_each_combines_as_bonferroni_on_pass_and_intersection_union_on_fail():
    rng = np.random.default_rng(1)
    parent = (rng.random(500) < 0.7).astype(float)
    merged = parent.copy()
    each = {name: compare_paired(merged, p, margin=0.03, alpha=0.025)
            for name, p in (("a", parent), ("b", np.where(rng.random(500) < 0.1, 1 - parent, parent)))}
    name, c = against_each(each, 0.05)
    assert c.p_noninferiority == pytest.approx(min(1.0, 2 * min(x.p_noninferiority for x in each.values())))
    assert c.p_regression == max(x.p_regression for x in each.values())
    assert name == min(each, key=lambda n: each[n].p_noninferiority)  # the figures: the closest to passing
    assert c.alpha == 0.05 and c.references == 2 and c.verdict == "pass"
    assert (c.effect, c.ci) == (each[name].effect, each[name].ci)  # at 1 - 2 alpha / k, the test's own level
    with pytest.raises(ValueError, match="alpha / k = 0.025"):
        against_each({"a": compare_paired(merged, parent, margin=0.03, alpha=0.05), "b": each["b"]}, 0.05)
    with pytest.raises(ValueError, match="at least one"):
        against_each({}, 0.05)


def test_one_parent_is_the_comparison_itself():
    rng = np.random.default_rng(2)
    parent = (rng.random(300) < 0.6).astype(float)
    merged = np.where(rng.random(300) < 0.1, 1 - parent, parent)
    c = compare_paired(merged, parent, margin=0.02, alpha=0.05)
    assert against_each({"a": c}, 0.05)[1] == c


# -- the sequential early stop -------------------------------------------------------------------------
def _loop(comparisons: int) -> _Loop:
    return _Loop(None, [], _thresholds(), None, None, 50, alpha=0.05, comparisons=comparisons)


def test_sequential_regression_runs_against_each_parent_at_alpha_over_2_tasks_over_parents():
    """Three tasks, two parents: each regression comparison at 0.05 / 6 / 2. A copy of parent a
    passes where the test at that level passes, later than at 0.05 / 6 (the retention share)."""
    rng = np.random.default_rng(4)
    owner = (rng.random(1000) < 0.9).astype(float)
    other = (rng.random(1000) < 0.9).astype(float)
    outcomes = {"a": (owner.copy(), owner), "b": (owner.copy(), other)}
    scores = {"a": float(owner.mean()), "b": float(other.mean())}
    loop = _loop(comparisons=6)
    loop._regression("x", outcomes, scores, 1000)
    reg = loop.decisions[("x", "regression")]
    assert reg.alpha == pytest.approx(0.05 / 12) and (reg.comparisons, reg.parents) == (6, 2)
    margin = 0.02 * scores["a"]
    at_share = compare_sequential(owner, owner, margin=margin, alpha=0.05 / 12, n_max=1000)
    at_task = compare_sequential(owner, owner, margin=margin, alpha=0.05 / 6, n_max=1000)
    assert reg.comparison.verdict == "pass" and reg.reference == "a"
    assert reg.comparison.n == at_share.n > at_task.n


def test_sequential_regression_waits_for_every_parent_before_failing():
    """A regression shown against one parent while the other is undecided is not yet a fail."""
    rng = np.random.default_rng(5)
    weak = (rng.random(400) < 0.5).astype(float)
    strong = np.maximum(weak, rng.random(400) < 0.8)
    merged = np.where(rng.random(400) < 0.2, 1 - weak, weak)  # level with weak, noisy
    outcomes = {"a": (merged, strong), "b": (merged, weak)}
    scores = {"a": float(strong.mean()), "b": float(weak.mean())}
    loop = _loop(comparisons=2)
    loop._regression("x", {k: (m[:100], p[:100]) for k, (m, p) in outcomes.items()}, scores, 400)
    assert compare_sequential(merged[:100], strong[:100], margin=0.02 * scores["a"], alpha=0.0125,
                              n_max=400).verdict == "fail"
    assert ("x", "regression") not in loop.decisions  # b is undecided: keep scoring
