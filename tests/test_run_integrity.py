"""A merge is deployable only when every check collected for it ran and passed, and every place a
person reads the verdict (terminal lines, summary.md, report.html, the GitHub step summary, junit)
agrees with the exit code: clean and failing runs, -x, a killed xdist worker, a merge whose build
fails, and a real SIGINT sent to a running gate at two moments."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mergeqa.decision.verdict import Verdict
from mergeqa.pytest_plugin.ledger import merge_of
from mergeqa.report.status import RunRecord, TestOutcome, headline, merge_status, merge_statuses, run_state


def _v(subject: str, outcome: str = "pass", check: str = "custom.a", test: str = "") -> Verdict:
    v = Verdict(check, subject, outcome, figures={"obtained": 1, "threshold": 1}, reason="why")
    v.test = test
    return v


# -- the rule, on plain data ------------------------------------------------------------------
def test_a_merge_is_deployable_only_when_every_collected_test_ran_to_a_pass():
    tests = {"t.py::test_a[m]": TestOutcome("m", "passed"), "t.py::test_b[m]": TestOutcome("m", "not_applicable")}
    assert merge_status("m", [_v("m")], tests, "fail").state == "deployable"
    for outcome in ("error", "skipped", "not_run"):
        s = merge_status("m", [_v("m")], {**tests, "t.py::test_c[m]": TestOutcome("m", outcome, "boom")}, "fail")
        assert s.state == "not_deployable" and "1 of 3 tests ended without a verdict" in s.line, s.line
        assert s.first.startswith("test_c[m]: "), s.first


def test_a_failed_verdict_is_named_first_and_unfinished_tests_are_counted_beside_it():
    tests = {"t.py::test_a[m]": TestOutcome("m", "failed"), "t.py::test_b[m]": TestOutcome("m", "error", "oops")}
    s = merge_status("m", [_v("m", "fail", test="t.py::test_a[m]")], tests, "fail")
    assert s.line.startswith("m: NOT deployable: 1 of 1 checks did not pass; 1 of 2 tests ended without a verdict "
                             "(1 errored); first: custom.a: fail"), s.line


def test_an_interrupted_run_has_no_verdict_for_any_merge():
    record = RunRecord({"t.py::test_a[m]": TestOutcome("m", "passed"), "t.py::test_a[n]": TestOutcome("n")},
                       interrupted=True)
    statuses = merge_statuses([_v("m")], record, ["m", "n"])
    assert [s.line for s in statuses] == ["m: interrupted: no verdict (1 of 1 tests ran)",
                                          "n: interrupted: no verdict (0 of 1 tests ran)"]
    assert run_state(statuses, record) == "interrupted" and headline(statuses, record).startswith("interrupted")


def test_a_merge_with_nothing_run_still_gets_a_line():
    [s] = merge_statuses([], RunRecord(), ["m"])
    assert s.line == "m: NOT deployable: no check ran" and not s.deployable


def test_without_a_record_the_verdicts_decide_as_before():
    assert merge_status("m", [_v("m")], {}, "fail").line == "m: deployable: all 1 checks pass"
    warn = merge_status("m", [_v("m", "inconclusive")], {}, "warn")
    assert warn.deployable and "accepted by inconclusive" in warn.line
    assert not merge_status("m", [_v("m", "inconclusive")], {}, "fail").deployable


@pytest.mark.parametrize("nodeid, merge", [("a.py::test_x[ties]", "ties"),
                                           ("a.py::test_y[subject_number-dare_ties]", "dare_ties"),
                                           ("a.py::test_y[ties-family_lists]", "ties"),
                                           ("a.py::test_z[merged-2-no-suite]", "merged-2"),
                                           ("a.py::test_plain", None), ("a.py::test_q[other]", None)])
def test_a_test_id_is_matched_to_its_merge(nodeid, merge):
    assert merge_of(nodeid, ["ties", "dare_ties", "merged", "merged-2"]) == merge


# -- through pytest: every place a person reads agrees with the exit code -------------------
STEERED = '''
import os, time
from mergeqa import Verdict, decide


def test_kept(merged_model, request):
    decide(request, Verdict.threshold("custom.kept", merged_model.name, obtained=1, threshold=1, op=">="))


def test_steered(merged_model, request):
    how = dict(x.split("=") for x in os.environ.get("STEER", "").split(",") if x).get(merged_model.name, "")
    if how == "fail":
        decide(request, Verdict.threshold("custom.steered", merged_model.name, obtained=0, threshold=1, op=">="))
    elif how == "crash":
        os._exit(3)  # the xdist worker dies
    elif how == "raise":
        raise RuntimeError("a check that broke")
    else:
        decide(request, Verdict.threshold("custom.steered", merged_model.name, obtained=1, threshold=1, op=">="))


def test_last(merged_model, request):
    decide(request, Verdict.threshold("custom.last", merged_model.name, obtained=1, threshold=1, op=">="))
'''


def _run(tmp_path: Path, cache: Path, family, *args, steer: str = "", models=None) -> dict:
    """Run the steered checks on two models of the family as merges; everything a person reads."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "test_steered.py").write_text(STEERED)
    models = models or [family.parents["arithmetic"], family.parents["lists"]]
    out = tmp_path / "out"
    env = {**os.environ, "STEER": steer, "GITHUB_STEP_SUMMARY": str(tmp_path / "step.md")}
    cmd = [sys.executable, "-m", "pytest", "test_steered.py", "--model", *map(str, models), "--parents",
           str(family.parents["arithmetic"]), str(family.parents["lists"]), "--mergeqa-cache", str(cache),
           "-p", "no:cacheprovider", "-o", "junit_family=xunit1", f"--junitxml={out / 'junit.xml'}", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return _readings(proc, out, tmp_path / "step.md")


def _readings(proc, out: Path, step: Path) -> dict:
    junit = {p.get("name"): p.get("value") for p in ET.parse(out / "junit.xml").getroot().iter("property")
             if p.get("name", "").startswith("mergeqa.run.")} if (out / "junit.xml").is_file() else {}
    lines = [ln for ln in proc.stdout.splitlines() if re.match(r"^[\w.-]+: (deployable|NOT deployable|interrupted)", ln)]
    return {"code": proc.returncode, "lines": lines, "stdout": proc.stdout, "stderr": proc.stderr,
            "summary": (out / "summary.md").read_text() if (out / "summary.md").is_file() else "",
            "html": (out / "report.html").read_text() if (out / "report.html").is_file() else "",
            "step": step.read_text() if step.is_file() else "", "junit": junit}


def _row(case: str, r: dict) -> None:
    """One row of the table `pytest tests/test_run_integrity.py -m slow -s` prints."""
    first = r["summary"].splitlines()[0] if r["summary"] else "(no summary.md)"
    print(f"\n| {case} | {r['code']} | {' / '.join(r['lines'])} | {first} |")


def _agree(r: dict, deployable: dict[str, bool], case: str = "") -> None:
    """Every reading says the same as the exit code."""
    _row(case, r)
    everything = all(deployable.values())
    assert (r["code"] == 0) == everything, (r["code"], r["lines"], r["stdout"][-2000:])
    for merge, ok in deployable.items():
        [line] = [ln for ln in r["lines"] if ln.startswith(f"{merge}: ")]
        assert line.startswith(f"{merge}: deployable" if ok else f"{merge}: NOT deployable"), line
        assert f"- {line}" in r["summary"]
        assert r["junit"][f"mergeqa.run.merge.{merge}.verdict"] == ("deployable" if ok else "not_deployable")
        assert (f"{merge}: deployable" in r["html"]) == ok
        assert (f":white_check_mark: **{merge}**: deployable" in r["step"]) == ok
    first = r["summary"].splitlines()[0]
    assert first.startswith("# mergeqa gate: deployable" if everything else "# mergeqa gate: NOT deployable"), first
    assert r["junit"]["mergeqa.run.verdict"] == ("deployable" if everything else "not_deployable")


@pytest.mark.slow
def test_a_clean_run_and_a_failing_merge(tmp_path, family, private_cache):
    clean = _run(tmp_path / "clean", private_cache, family)
    _agree(clean, {"arithmetic": True, "lists": True}, "clean run")
    assert "arithmetic: deployable: all 3 checks pass" in clean["lines"]
    failing = _run(tmp_path / "failing", private_cache, family, steer="lists=fail")
    _agree(failing, {"arithmetic": True, "lists": False}, "a failing merge")
    assert "first: custom.steered: fail" in next(ln for ln in failing["lines"] if ln.startswith("lists"))


@pytest.mark.slow
def test_a_check_that_errors_or_never_runs_is_not_a_pass(tmp_path, family, private_cache):
    raised = _run(tmp_path / "raised", private_cache, family, steer="lists=raise")
    _agree(raised, {"arithmetic": True, "lists": False}, "a check that raises")
    assert "1 of 3 tests ended without a verdict (1 failed without a verdict)" in raised["lines"][1]
    stopped = _run(tmp_path / "x", private_cache, family, "-x", steer="arithmetic=raise")
    _agree(stopped, {"arithmetic": False, "lists": False}, "-x")  # -x: lists's checks never ran
    assert "did not run" in stopped["lines"][1], stopped["lines"]
    assert "first: test_steered[arithmetic]: failed: RuntimeError" in stopped["lines"][0], stopped["lines"]


@pytest.mark.slow
def test_a_killed_xdist_worker_is_not_a_pass(tmp_path, family, private_cache):
    r = _run(tmp_path, private_cache, family, "-n", "2", steer="lists=crash")
    _agree(r, {"arithmetic": True, "lists": False}, "xdist worker killed")
    assert "errored" in r["lines"][1] and "crashed" in r["lines"][1], r["lines"]


@pytest.mark.slow
def test_a_merge_whose_build_fails_gets_its_line(tmp_path, family, private_cache):
    """A mergekit build that fails at run time (two models of different widths): every check of
    that merge errors, its line says so, the other merge keeps its verdict."""
    import transformers

    narrow = tmp_path / "narrow"
    config = transformers.AutoConfig.from_pretrained(family.base)
    config.hidden_size, config.intermediate_size = config.hidden_size // 2, config.intermediate_size // 2
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(narrow)
    yaml = tmp_path / "broken.yaml"
    yaml.write_text(f"merge_method: linear\nmodels:\n  - model: {family.parents['arithmetic']}\n"
                    f"    parameters: {{weight: 0.5}}\n  - model: {narrow}\n    parameters: {{weight: 0.5}}\n"
                    "dtype: float32\n")
    (tmp_path / "test_steered.py").write_text(STEERED)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_steered.py", "--model", str(family.parents["lists"]),
                           "--merge-config", str(yaml), "--parents", str(family.parents["arithmetic"]),
                           str(family.parents["lists"]), "--mergeqa-cache", str(private_cache), "-p",
                           "no:cacheprovider", f"--junitxml={out / 'junit.xml'}", "-o", "junit_family=xunit1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "GITHUB_STEP_SUMMARY": str(tmp_path / "step.md")})
    r = _readings(proc, out, tmp_path / "step.md")
    _agree(r, {"lists": True, "broken": False}, "a merge whose build fails")
    broken = next(ln for ln in r["lines"] if ln.startswith("broken: "))
    assert "3 of 3 tests ended without a verdict (3 errored)" in broken and "ValueError" in broken, broken


# -- a real SIGINT on a running gate ---------------------------------------------------------
def _interrupt_gate(tmp_path: Path, cache: Path, when: str) -> tuple[dict, float]:
    """Run `mergeqa gate -v`, send SIGINT once `when` appears on its output, read everything."""
    out = tmp_path / "report"
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(tmp_path / "step.md"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mergeqa")), "gate", "--out", str(out),
                             "--cache", str(cache), "-v", "-p", "no:randomly"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a suite started in the background (`cmd &` in a script)
                            # hands its children SIGINT ignored, and Python then never raises KeyboardInterrupt
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started, seen = time.monotonic(), []
    for line in proc.stdout:
        seen.append(line)
        if re.search(when, line):
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic() - started
            break
    else:
        pytest.fail("the gate ended before the moment to interrupt it:\n" + "".join(seen[-30:]))
    try:
        rest, err = proc.communicate(timeout=120)  # the first Ctrl-C must stop it
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("one SIGINT did not stop the gate within 120 s")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(seen) + rest, err)
    return _readings(done, out, tmp_path / "step.md"), sent


def _cache_is_consistent(cache: Path) -> None:
    """Nothing half-written: no temporary entry left, every results entry parses."""
    leftovers = [p for p in cache.rglob(".*") if not p.name.endswith(".lock")]
    assert leftovers == [], leftovers
    for entry in (cache / "results").rglob("*.json"):
        json.loads(entry.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["collected", "PASSED|FAILED"], ids=["before-any-check", "mid-run"])
def test_one_sigint_stops_a_running_gate_and_every_report_says_interrupted(tmp_path, private_cache, moment):
    r, sent = _interrupt_gate(tmp_path, private_cache, moment)
    _row(f"SIGINT at {sent:.1f} s ({moment})", r)
    assert r["code"] == pytest.ExitCode.INTERRUPTED, r["stdout"][-3000:] + r["stderr"][-2000:]
    merges = ["dare_ties", "linear_lopsided", "slerp_lopsided", "task_arithmetic", "ties"]
    assert [ln.split(":")[0] for ln in r["lines"]] == merges, r["lines"]
    assert all(": interrupted: no verdict" in ln for ln in r["lines"]), r["lines"]
    assert not any("deployable" in ln for ln in r["lines"])
    assert r["summary"].splitlines()[0].startswith("# mergeqa gate: interrupted: no verdict")
    assert r["junit"].get("mergeqa.run.verdict") == "interrupted"
    assert "interrupted" in r["html"] and ": deployable</b>" not in r["html"]
    assert "interrupted: no verdict" in r["step"] and ":white_check_mark:" not in r["step"]
    _cache_is_consistent(private_cache)


def test_not_applicable_checks_are_said_and_a_merge_where_none_applied_is_not_deployable():
    tests = {"t.py::test_a[m]": TestOutcome("m", "passed"), "t.py::test_b[m]": TestOutcome("m", "not_applicable")}
    assert merge_status("m", [_v("m")], tests, "fail").line == "m: deployable: all 1 checks pass (1 not applicable)"
    none = merge_status("m", [_v("m", "not_applicable")], {"t.py::test_b[m]": TestOutcome("m", "not_applicable")},
                        "fail")
    assert none.state == "no_checks" and none.line == "m: NOT deployable: no check applied (1 not applicable)"


@pytest.mark.slow
def test_eval_limit_zero_stops_the_run_before_any_verdict(tmp_path, family, private_cache):
    """It used to end 'deployable: all 43 checks pass' with 1 failure and 4 errors; now the run
    never starts: one line, exit 4, and nothing that reads as a verdict."""
    r = _run(tmp_path, private_cache, family, "--eval-limit", "0")
    _row("--eval-limit 0", r)
    assert r["code"] == pytest.ExitCode.USAGE_ERROR and r["lines"] == [] and r["summary"] == ""
    assert [ln for ln in r["stderr"].splitlines() if ln.strip()] == [
        "ERROR: --eval-limit 0: must be at least 1 (items per task); leave it out to evaluate every item"]


BROKEN_REPORTER = '''
import pytest


@pytest.hookimpl(trylast=True)
def pytest_keyboard_interrupt(excinfo):
    raise TypeError("unsupported operand type(s) for -: 'NoneType' and 'int'")  # as pytest's reporter did
'''

INTERRUPTED_CHECK = '''
from mergeqa import Verdict, decide


def test_first(merged_model, request):
    decide(request, Verdict.threshold("custom.first", merged_model.name, obtained=1, threshold=1, op=">="))


def test_interrupted(merged_model):
    raise KeyboardInterrupt


def test_after(merged_model, request):
    decide(request, Verdict.threshold("custom.after", merged_model.name, obtained=1, threshold=1, op=">="))
'''


@pytest.mark.slow
def test_a_ctrl_c_stays_an_interrupt_when_the_reporter_fails_to_show_it(tmp_path, family, private_cache):
    """Seen in a fresh-clone CI run: a SIGINT right after collection landed in a frame without a
    line number, pytest's reporter raised formatting it, and the gate exited 1 with no
    'interrupted' anywhere. A reporter hook that raises the same way stands in for it here."""
    (tmp_path / "conftest.py").write_text(BROKEN_REPORTER)
    (tmp_path / "test_steered.py").write_text(INTERRUPTED_CHECK)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_steered.py", "--model", str(family.parents["lists"]),
                           "--parents", str(family.parents["arithmetic"]), str(family.parents["lists"]),
                           "--mergeqa-cache", str(private_cache), "-p", "no:cacheprovider", "-o",
                           "junit_family=xunit1", f"--junitxml={out / 'junit.xml'}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    r = _readings(proc, out, tmp_path / "step.md")
    _row("Ctrl-C whose traceback cannot be shown", r)
    assert r["code"] == pytest.ExitCode.INTERRUPTED, r["stdout"][-2000:] + r["stderr"][-2000:]
    assert r["lines"] == ["lists: interrupted: no verdict (1 of 3 tests ran)"], r["lines"]
    assert r["junit"]["mergeqa.run.verdict"] == "interrupted"
    assert "mergeqa: interrupted (the traceback could not be shown: TypeError" in r["stderr"]
