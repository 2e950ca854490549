"""Retention and regression verdicts: pairing by document, metric direction, multiplicity, the
burden of proof; on planted per-item results (known by construction) and on the embedded family."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.decision.thresholds import load_thresholds
from mergeqa.evaluate.engine import EvalResult, ItemRecord, TaskResult, paired_values
from mergeqa.retention.assess import assess


def _result(tasks: dict[str, list[float]], *, metric="acc", hib=True, weights=None, hashes=None,
            groups=None) -> EvalResult:
    """An EvalResult with one record per document: values[i] is document i's metric."""
    out = EvalResult(model=None, groups=groups or {})
    for task, values in tasks.items():
        items = [ItemRecord(doc_id=i, doc_hash=(hashes or {}).get(i, f"h{i}"), metrics={metric: float(v)},
                            choice=None, weights={metric: weights[i]} if weights else {})
                 for i, v in enumerate(values)]
        if weights:  # lm-eval's weighted perplexity: exp(-sum ll / sum weight)
            agg = float(np.exp(-sum(values) / sum(weights)))
        else:
            agg = float(np.mean(values)) if values else float("nan")
        out.tasks[task] = TaskResult(task, {metric: agg}, items, "cfg", higher_is_better={metric: hib})
    return out


def _thresholds(**sections):
    t = load_thresholds(None)
    for section, values in sections.items():
        t.values[section] = {**t.values[section], **values}
    return t


def _binary(rate: float, n: int, seed: int) -> list[float]:
    return list((np.random.default_rng(seed).random(n) < rate).astype(float))


def test_point_mode_is_the_guides_rule():
    t = _thresholds(retention={"mode": "point", "capabilities": {"x": "a"}})
    merged = _result({"x": [1] * 90 + [0] * 10})
    parents = {"a": _result({"x": [1] * 100}), "b": _result({"x": [0] * 100})}
    verdicts = assess("m", merged, parents, ["x"], t)
    ret = verdicts[("x", "retention")]
    assert ret.outcome == "fail" and ret.figures["retention"] == pytest.approx(0.9)
    assert verdicts[("x", "regression")].outcome == "pass"
    message = ret.message()
    assert "obtained: 0.9" in message and "expected: >= 0.95" in message


def test_a_copy_of_the_owner_passes_and_a_lost_skill_fails():
    t = _thresholds(retention={"capabilities": {"x": "a"}})
    owner = _binary(0.9, 400, 0)
    parents = {"a": _result({"x": owner}), "b": _result({"x": _binary(0.2, 400, 1)})}
    same = assess("copy", _result({"x": owner}), parents, ["x"], t)
    assert same[("x", "retention")].outcome == "pass"
    assert same[("x", "regression")].outcome == "pass"
    lost = assess("lost", _result({"x": _binary(0.3, 400, 2)}), parents, ["x"], t)
    v = lost[("x", "retention")]
    assert v.outcome == "fail" and v.figures["p_regression"] < 1e-6
    assert v.data["lost_examples"] and v.data["lost_examples"][0]["task"] == "x"


def test_inconclusive_says_how_many_items_would_decide():
    t = _thresholds(retention={"capabilities": {"x": "a"}})
    rng = np.random.default_rng(3)
    owner = (rng.random(120) < 0.8).astype(float)
    merged = owner.copy()
    ones, zeros = np.flatnonzero(owner == 1), np.flatnonzero(owner == 0)
    merged[ones[:6]], merged[zeros[:6]] = 0, 1  # 10 % discordance, no drop: too few items to show it
    v = assess("m", _result({"x": list(merged)}), {"a": _result({"x": list(owner)}),
                                                  "b": _result({"x": [0.0] * 120})}, ["x"], t)[("x", "retention")]
    assert v.outcome == "inconclusive"
    assert 120 < v.figures["items_to_decide"] < 100_000
    assert "items would decide it" in v.message() and "--eval-limit" in v.message()
    assert "blocking rate" in v.message() and "alpha bounds only a false fail" in v.message()


def test_too_few_items_to_ever_decide_is_an_error_and_zero_items_too():
    t = _thresholds(retention={"capabilities": {"x": "a"}})
    parents = {"a": _result({"x": [1.0, 0.0]}), "b": _result({"x": [0.0] * 2})}
    v = assess("m", _result({"x": [1.0, 0.0]}), parents, ["x"], t)[("x", "retention")]
    assert v.outcome == "error" and "no outcome on fewer than 3 items" in v.reason and "x: 2 items" in v.reason
    # a perfect copy on 20 items cannot show non-inferiority at a 4.75-point margin: inconclusive,
    # and the message says how many items would
    parents = {"a": _result({"x": [1.0] * 15 + [0.0] * 5}), "b": _result({"x": [0.0] * 20})}
    v = assess("m", _result({"x": [1.0] * 15 + [0.0] * 5}), parents, ["x"], t)[("x", "retention")]
    assert v.outcome == "inconclusive" and v.figures["items_to_decide"] > 20
    empty = {"a": _result({"x": []}), "b": _result({"x": []})}
    empty["a"].tasks["x"].metrics["acc"] = empty["b"].tasks["x"].metrics["acc"] = 0.5
    merged = _result({"x": []})
    merged.tasks["x"].metrics["acc"] = 0.5
    v = assess("m", merged, empty, ["x"], t)[("x", "retention")]
    assert v.outcome == "error" and "n=0" in v.reason


def test_items_pair_by_document_not_by_position():
    a = _result({"x": [1.0, 0.0, 1.0]})
    b = _result({"x": [1.0, 0.0, 1.0]}, hashes={1: "other"})
    with pytest.raises(MergeQAUsageError, match=r"task 'x'.*document 1 has content hash"):
        paired_values("x", a, b, names=("merged", "p"))
    short = _result({"x": [1.0, 0.0]})
    with pytest.raises(MergeQAUsageError, match=r"3 vs 2 items; document 2 is in merged's results only"):
        paired_values("x", a, short, names=("merged", "p"))
    dup = _result({"x": [1.0, 0.0, 1.0]})
    dup.tasks["x"].items[2].doc_id = 1
    dup.tasks["x"].items[2].doc_hash = "h1"
    with pytest.raises(MergeQAUsageError, match="appears twice"):
        paired_values("x", dup, a)
    # shuffled records still pair by document
    shuffled = _result({"x": [1.0, 0.0, 1.0]})
    shuffled.tasks["x"].items.reverse()
    x, y, docs = paired_values("x", a, shuffled)
    assert list(x) == list(y) and docs == [("x", 0), ("x", 1), ("x", 2)]


def test_holm_counts_a_shared_hypothesis_once():
    """One parent: retention and regression test the same 'merged < parent' hypothesis."""
    t = _thresholds(retention={"capabilities": {"x": "a"}})
    parent = _binary(0.9, 300, 5)
    merged = list(np.array(parent) * (np.random.default_rng(6).random(300) > 0.12))  # ~11 point drop
    v = assess("m", _result({"x": merged}), {"a": _result({"x": parent})}, ["x"], t)
    ret, reg = v[("x", "retention")], v[("x", "regression")]
    from mergeqa.stats import discordant_counts, mcnemar_pvalue

    wins, losses, _ = discordant_counts(np.array(merged), np.array(parent))
    raw = float(mcnemar_pvalue(wins, losses, alternative="less"))
    assert ret.figures["p_regression"] == pytest.approx(raw)  # a family of one: unadjusted
    assert reg.figures["p_regression"] == pytest.approx(raw)
    assert ret.outcome == reg.outcome == "fail"


def test_fixed_n_comparisons_beside_sequential_ones_spend_only_the_alpha_left():
    """Sequential comparisons spend alpha / (2 x tasks) each; the fixed-n family of the same run is
    Holm-adjusted at the share left, so the run's chance of a false fail stays within alpha
    (without it: 2 x alpha / 4 sequential + alpha fixed-n, 1.5 x alpha)."""
    from mergeqa.retention.early_stop import EarlyStop, SequentialDecision
    from mergeqa.stats import discordant_counts, mcnemar_pvalue
    from mergeqa.stats.sequential import compare_sequential

    t = _thresholds(retention={"capabilities": {"x": "a", "y": "a"}})
    parent_x, parent_y = _binary(0.9, 300, 5), _binary(0.9, 300, 7)
    merged_x = list(np.array(parent_x) * (np.random.default_rng(6).random(300) > 0.04))  # ~4 point drop
    merged, parents = _result({"x": merged_x, "y": parent_y}), {"a": _result({"x": parent_x, "y": parent_y})}
    seq = compare_sequential(np.array(parent_y), np.array(parent_y), margin=0.05, alpha=0.05 / 4)
    decided = {("y", kind): SequentialDecision(seq, "a", 0.05 / 4, 4) for kind in ("retention", "regression")}
    alone = assess("m", merged, parents, ["x"], t)[("x", "retention")]
    early = EarlyStop(merged, parents, None, decisions=decided, fixed_n={"x": "decided fixed-n"})
    beside = assess("m", merged, parents, ["x", "y"], t, early=early)[("x", "retention")]
    wins, losses, _ = discordant_counts(np.array(merged_x), np.array(parent_x))
    raw = float(mcnemar_pvalue(wins, losses, alternative="less"))
    assert alone.figures["p_regression"] == pytest.approx(raw)  # one hypothesis, all of alpha
    assert beside.figures["p_regression"] == pytest.approx(min(1.0, 2 * raw))  # half of alpha is left
    assert "at 0.5 of alpha" in beside.figures["correction"]
    with pytest.raises(ValueError, match="share"):
        from mergeqa.decision.significance import adjust_comparisons

        adjust_comparisons([], share=0.0)


def test_a_task_no_parent_owns_is_decided_against_the_parents_per_item_mean():
    t = _thresholds(retention={"capabilities": {}})
    a, b = _binary(0.9, 400, 7), _binary(0.7, 400, 8)
    mean_copy = [(x + y) / 2 for x, y in zip(a, b)]
    v = assess("m", _result({"g": mean_copy}), {"a": _result({"g": a}), "b": _result({"g": b})}, ["g"], t)
    ret = v[("g", "retention")]
    # acc lies in [0, 1]: the betting test rests on that range (the sign-flip assumes symmetry)
    assert ret.figures["reference"] == "parents' mean" and ret.figures["method"] == "betting"
    assert ret.outcome == "pass" and ret.figures["n"] == 400
    chance = assess("m", _result({"g": _binary(0.25, 400, 9)}), {"a": _result({"g": a}), "b": _result({"g": b})},
                    ["g"], t)[("g", "retention")]
    assert chance.outcome == "fail"


def test_graded_items_rest_on_the_metrics_range_where_it_has_one():
    """f1 in [0, 1]: the betting test, valid for a skill lost on a few items; a metric with no
    range by definition (or values outside it): the sign-flip test, which assumes symmetry."""
    t = _thresholds(retention={"capabilities": {"g": "a"}})
    rng = np.random.default_rng(11)
    parent = list(np.round(rng.random(300), 2))
    for metric, values, method in (("f1", parent, "betting"), ("score", parent, "permutation"),
                                   ("f1", [2 * v for v in parent], "permutation")):
        v = assess("m", _result({"g": values}, metric=metric), {"a": _result({"g": values}, metric=metric)}, ["g"], t)
        assert v[("g", "retention")].figures["method"] == method, (metric, method)


def test_the_comparison_is_on_the_configured_metric():
    """[retention.metrics] names the gated metric: the paired test runs on it, not on the task's
    first metric."""
    t = _thresholds(retention={"capabilities": {"g": "a"}, "metrics": {"g": "acc_norm"}})

    def two(acc, acc_norm):
        r = _result({"g": acc})
        items = [ItemRecord(doc_id=i, doc_hash=f"h{i}", metrics={"acc": float(x), "acc_norm": float(y)}, choice=None)
                 for i, (x, y) in enumerate(zip(acc, acc_norm))]
        r.tasks["g"] = TaskResult("g", {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm))}, items,
                                  "cfg", higher_is_better={"acc": True, "acc_norm": True})
        return r

    good, bad = [1.0] * 300, [1.0] * 150 + [0.0] * 150
    v = assess("m", two(good, bad), {"a": two(good, good)}, ["g"], t)[("g", "retention")]
    assert v.figures["metric"] == "acc_norm" and v.outcome == "fail" and v.figures["effect"] == pytest.approx(-0.5)


def test_perplexity_is_gated_lower_is_better_in_log_units():
    t = _thresholds(retention={"capabilities": {"p": "a"}})
    rng = np.random.default_rng(10)
    words = list(rng.integers(5, 30, 300).astype(float))
    ll_parent = [-2.0 * w + rng.normal(0, 0.5) for w in words]
    same = assess("m", _result({"p": ll_parent}, metric="word_perplexity", hib=False, weights=words),
                  {"a": _result({"p": ll_parent}, metric="word_perplexity", hib=False, weights=words)}, ["p"], t)
    ret = same[("p", "retention")]
    assert ret.outcome == "pass" and ret.figures["higher_is_better"] is False
    assert ret.figures["margin"] == pytest.approx(-np.log(0.95))  # the threshold's units: log perplexity
    assert ret.figures["threshold"] == pytest.approx(ret.figures["reference_score"] / 0.95)
    worse = [ll - 0.3 * w for ll, w in zip(ll_parent, words)]  # perplexity x e^0.3 = 1.35
    v = assess("m", _result({"p": worse}, metric="word_perplexity", hib=False, weights=words),
               {"a": _result({"p": ll_parent}, metric="word_perplexity", hib=False, weights=words)}, ["p"], t)
    assert v[("p", "retention")].outcome == "fail"
    assert v[("p", "retention")].figures["obtained"] > v[("p", "retention")].figures["threshold"]


def test_significant_drop_rule_puts_the_burden_on_the_gate():
    t = _thresholds(retention={"capabilities": {"x": "a"}}, statistics={"decision": "significant_drop"})
    rng = np.random.default_rng(3)
    owner = (rng.random(120) < 0.8).astype(float)
    merged = owner.copy()
    ones, zeros = np.flatnonzero(owner == 1), np.flatnonzero(owner == 0)
    merged[ones[:6]], merged[zeros[:6]] = 0, 1
    v = assess("m", _result({"x": list(merged)}), {"a": _result({"x": list(owner)})}, ["x"], t)
    assert v[("x", "retention")].outcome == "pass"
    assert v[("x", "retention")].figures["decision"] == "significant_drop"


def test_groups_are_broken_down_by_subtask():
    t = _thresholds(retention={"mode": "point", "capabilities": {}})
    groups = {"grp": ["a", "b"]}
    merged = _result({"a": [1, 1], "b": [0, 0]}, groups=groups)
    parents = {"p": _result({"a": [1, 1], "b": [1, 0]}, groups=groups),
               "q": _result({"a": [0, 1], "b": [1, 1]}, groups=groups)}
    figures = assess("m", merged, parents, ["grp"], t)[("grp", "retention")].figures
    assert figures["subtask.a.merged"] == 1.0 and figures["subtask.b.merged"] == 0.0
    assert figures["subtask.b.p"] == 0.5 and figures["subtask.a.q"] == 0.5


@pytest.mark.slow
def test_a_merge_that_leaves_out_a_parent_fails_retention_on_its_skill(tmp_path, family, private_cache):
    """task_arithmetic with only the arithmetic task vector *is* the arithmetic parent (base +
    (arithmetic - base)): it keeps arithmetic exactly and has none of lists' fine-tuning."""
    cfg = tmp_path / "only_arithmetic.yaml"
    cfg.write_text(f"""merge_method: task_arithmetic
base_model: {family.base}
models:
  - model: {family.parents['arithmetic']}
    parameters: {{weight: 1.0}}
dtype: float32
""")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--merge-config", str(cfg), "--parents", str(family.parents["arithmetic"]),
         str(family.parents["lists"]), "--base", str(family.base), "--mergeqa-cache", str(private_cache),
         "--thresholds", str(Path("thresholds.toml").resolve()), "-k", "test_retention", "-rA", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:]
    assert "FAILED" in out and "test_retention[only_arithmetic-family_lists]" in out
    assert "PASSED" in out and "test_retention[only_arithmetic-family_arithmetic]" in out
    assert "family_lists retention against lists" in out
    assert "Likely cause: the merge lost the skill that lists carries" in out
    assert "only_arithmetic: NOT deployable" in out and "first: retention[family_lists]" in out
