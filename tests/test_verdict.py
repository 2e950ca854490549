"""The one Verdict model and decide(): outcomes -> test results under each policy, junit
properties, the run's reports (also across xdist workers), messages."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from mergeqa.decision.verdict import Verdict

CHECKS = '''
import pytest
from mergeqa.decision.verdict import Verdict, decide

@pytest.mark.parametrize("outcome", ["pass", "fail", "inconclusive", "error", "not_applicable"])
def test_outcome(outcome, request):
    decide(request, Verdict("custom.demo", "m-" + outcome, outcome, {"obtained": 0.5, "threshold": 0.9},
                            summary="demo figure", expected=">= 0.9", reason="no such thing here",
                            cause="planted", fix="none needed"))
'''


def _props(junit):
    return {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
            for c in ET.parse(junit).iter("testcase")}


@pytest.mark.parametrize("policy, expected", [
    ("fail", dict(passed=1, failed=3, skipped=1)),
    ("warn", dict(passed=2, failed=2, skipped=1)),
])
def test_outcomes_map_to_test_results_under_each_policy(pytester, policy, expected):
    pytester.makefile(".toml", thresholds=f'[statistics]\ninconclusive = "{policy}"\n')
    pytester.makepyfile(test_demo=CHECKS)
    junit = pytester.path / "out" / "junit.xml"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "junit_family=xunit1",
                                           f"--junitxml={junit}", "-rA")
    result.assert_outcomes(**expected, warnings=1 if policy == "warn" else 0)
    props = _props(junit)
    assert props["test_outcome[fail]"]["mergeqa.custom.demo.outcome"] == "fail"
    assert props["test_outcome[fail]"]["mergeqa.custom.demo.obtained"] == "0.5"
    assert props["test_outcome[inconclusive]"]["mergeqa.custom.demo.inconclusive_policy"] == policy
    out = result.stdout.str()
    assert "m-fail: demo figure" in out and "Likely cause: planted" in out
    assert "m-error: custom.demo error: no such thing here" in out
    summary = (junit.parent / "summary.md").read_text()
    assert "- m-pass: deployable: all 1 checks pass" in summary
    assert "- m-fail: NOT deployable: 1 of 1 checks did not pass; first: custom.demo: fail: demo figure" in summary
    # every check of m-not_applicable was not applicable: nothing was measured, so nothing is shown
    assert "- m-not_applicable: NOT deployable: no check applied (1 not applicable)" in summary
    if policy == "warn":
        assert "- m-inconclusive: deployable: all 1 checks pass (1 inconclusive, accepted" in summary
    else:
        assert "- m-inconclusive: NOT deployable" in summary


def test_verdicts_reach_the_reports_from_xdist_workers(pytester):
    pytester.makepyfile(test_demo=CHECKS)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", f"--junitxml={junit}")
    result.assert_outcomes(passed=1, failed=3, skipped=1)
    summary = (pytester.path / "summary.md").read_text()
    lines = [ln for ln in summary.splitlines() if ln.startswith("- m-")]
    assert len(lines) == 5 and "| 5 | 1 | 1 | 1 | 1 | 1 |" in summary
    assert summary.splitlines()[0] == "# mergeqa gate: NOT deployable: 1 of 5 merges pass every check"
    assert "mergeqa verdict per merge" in result.stdout.str()


def test_threshold_rule_and_messages():
    ok = Verdict.threshold("c", "m", obtained=3, threshold=2, op=">=")
    bad = Verdict.threshold("c", "m", obtained=1.0, threshold=2.0, op=">=", summary="x", cause="y", fix="z")
    assert ok.outcome == "pass" and bad.outcome == "fail" and bad.delta == -1.0
    assert bad.message().splitlines()[:3] == ["m: x", "  obtained: 1", "  expected: >= 2"]
    with pytest.raises(ValueError, match="outcome='maybe'"):
        Verdict("c", "m", "maybe")
    with pytest.raises(ValueError, match="op='=>'"):
        Verdict.threshold("c", "m", obtained=1, threshold=1, op="=>")
    findings = Verdict("c", "m", details=["a", "b"]).settle()
    assert findings.outcome == "fail"
    assert Verdict("c", "m", reason="no template").settle().outcome == "not_applicable"
    assert Verdict.from_dict(bad.to_dict()) == bad
    assert Verdict("c", "m", figures={"x": float("nan")}).to_dict()["figures"]["x"] == "nan"
