"""Retention and regression gates on the embedded family, as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mergeqa.retention import assess
from mergeqa.thresholds import load_thresholds

pytestmark = pytest.mark.slow


def test_a_merge_that_leaves_out_a_parent_fails_retention_on_its_skill(tmp_path, family, private_cache):
    """task_arithmetic with only the arithmetic task vector keeps arithmetic and loses lists."""
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
    assert "family_lists retention against lists is fail" in out
    assert "Likely cause: the merge lost the skill that lists carries" in out


class _Result:
    """The part of EvalResult that assess() reads in point mode."""

    groups: dict = {}

    def __init__(self, scores):
        self.scores_ = scores

    def score(self, task):
        return sum(self.scores_[task]) / len(self.scores_[task])


def test_point_mode_is_the_guides_rule():
    t = load_thresholds(None)
    t.values["retention"].update(mode="point", capabilities={"x": "a"})
    merged = _Result({"x": [1] * 90 + [0] * 10})
    parents = {"a": _Result({"x": [1] * 100}), "b": _Result({"x": [0] * 100})}
    findings = assess("m", merged, parents, ["x"], t)
    ret = findings[("x", "retention")]
    assert ret.verdict == "fail" and ret.figures["retention"] == pytest.approx(0.9)
    assert ret.figures["retention_vs_mean"] == pytest.approx(1.8)
    assert findings[("x", "regression")].verdict == "pass"
    assert "obtained: 0.9" in ret.message and "expected: >= 0.95" in ret.message


class _GroupResult(_Result):
    def __init__(self, scores):
        super().__init__(scores)
        self.groups = {"grp": ["a", "b"]}

    def score(self, task):
        if task in self.groups:
            return sum(self.score(t) for t in self.groups[task]) / 2
        return super().score(task)


def test_groups_are_broken_down_by_subtask():
    t = load_thresholds(None)
    t.values["retention"].update(mode="point")
    merged = _GroupResult({"a": [1, 1], "b": [0, 0]})
    parents = {"p": _GroupResult({"a": [1, 1], "b": [1, 0]}), "q": _GroupResult({"a": [0, 1], "b": [1, 1]})}
    figures = assess("m", merged, parents, ["grp"], t)[("grp", "retention")].figures
    assert figures["subtask.a.merged"] == 1.0 and figures["subtask.b.merged"] == 0.0
    assert figures["subtask.b.p"] == 0.5 and figures["subtask.a.q"] == 0.5
