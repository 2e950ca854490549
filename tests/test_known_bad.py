"""Known-bad merges through the gate, as a user runs it: each broken variant of a tiny-family merge
(mergeqa.models.badmerges) must fail in the right check with a message that names the tensor or token and
the likely cause, a healthy copy must pass, and junit must carry every figure.

Cost: deriving the variants (~4 s) and one gate run in a subprocess over all of them (lint + sanity
modules, ~10 s), once the family is built; perplexity is evaluated only for the healthy copy and
the truncated vocabulary (the others would add an lm-eval run each and prove nothing the lint does not).
"""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from mergeqa.models.badmerges import VARIANTS, BadMerge, from_family, gate_argv

REPO = Path(__file__).resolve().parent.parent


@dataclass
class GateRun:
    returncode: int
    stdout: str
    junit: ET.Element
    variants: dict[str, BadMerge]

    def case(self, name: str) -> ET.Element:
        found = [c for c in self.junit.iter("testcase") if c.get("name") == name]
        assert len(found) == 1, f"{name}: {len(found)} testcases in the junit XML\n{self.stdout[-3000:]}"
        return found[0]

    def cases(self, model: str) -> list[ET.Element]:
        return [c for c in self.junit.iter("testcase") if f"[{model}" in c.get("name", "")]


def outcome(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return tag
    return "passed"


def properties(case: ET.Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in case.iter("property")}


def run_gate(out: Path, cache_dir: Path) -> None:
    """Derive the variants into `out` and run the gate once over them and a healthy copy."""
    healthy, variants = from_family(cache_dir, out)
    argv = gate_argv([healthy, *(v.path for v in variants.values())], cache_dir, out / "gate.xml",
                     "-rf", "-k", "not test_perplexity or healthy or vocab_truncated")
    # one torch thread: tiny models gain nothing from more, and on a busy 2-core machine two
    # threads per process make greedy generation ~20x slower (oversubscribed OpenMP barriers)
    proc = subprocess.run(argv, cwd=out, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    (out / "gate.out").write_text(proc.stdout + proc.stderr)
    (out / "gate.json").write_text(json.dumps({"returncode": proc.returncode, "variants": {
        n: {**asdict(v), "path": str(v.path)} for n, v in variants.items()}}))


@pytest.fixture(scope="module")
def gate(tmp_path_factory, family, cache_dir) -> GateRun:
    """The gate run, once per test run: under xdist the first worker runs it, the others read it."""
    from filelock import FileLock

    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.mktemp("gate")
    out = root / "known_bad"
    with FileLock(str(root / "known_bad.lock")):
        if not (out / "gate.json").is_file():
            out.mkdir(exist_ok=True)
            run_gate(out, cache_dir)
    summary = json.loads((out / "gate.json").read_text())
    stdout = (out / "gate.out").read_text()
    assert (out / "gate.xml").is_file(), stdout[-3000:]
    variants = {n: BadMerge(**{**v, "path": Path(v["path"])}) for n, v in summary["variants"].items()}
    return GateRun(summary["returncode"], stdout, ET.parse(out / "gate.xml").getroot(), variants)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_gate_fails_the_known_bad_merge_in_the_right_check(gate, name):
    variant = gate.variants[name]
    case = gate.case(variant.test_name)
    assert outcome(case) == "failure", f"{variant.test_name} did not fail\n{gate.stdout[-3000:]}"
    message = case.find("failure").text
    first = message.splitlines()[0]
    cause = next((line for line in message.splitlines() if line.startswith("Likely cause:")), "")
    assert first.startswith(f"{name}: ") and variant.subject in first, message
    assert variant.cause in cause, message
    assert any(line.startswith("Fix: ") for line in message.splitlines()), message
    assert "obtained:" in message and "expected:" in message
    assert len(message.splitlines()) <= 12, message  # a few lines, never a tensor dump
    # what the user reads on the terminal: the failing test and the message's first line
    assert f"::{variant.test_name}" in gate.stdout and first in gate.stdout


@pytest.mark.slow
def test_gate_passes_the_healthy_merge_and_errors_on_nothing(gate):
    assert gate.returncode == 1, gate.stdout[-3000:]
    healthy = {c.get("name"): outcome(c) for c in gate.cases("healthy")}
    # What a healthy mergekit merge of healthy parents passes by construction: every static check,
    # finite logits and deterministic greedy output. Whether its continuations of the family's
    # prompts are coherent depends on weights that differ between machines (ties of this family
    # loses much of both skills), so those checks are not asserted here.
    by_construction = {n: o for n, o in healthy.items()
                       if n.startswith("test_lint[") or "logits_finite" in n or "deterministic" in n}
    assert len(healthy) >= 15 and len(by_construction) == 10, healthy
    assert set(by_construction.values()) == {"passed"}, by_construction
    errors = [c.get("name") for c in gate.junit.iter("testcase") if outcome(c) == "error"]
    assert not errors, f"broken merges must fail checks, not crash them: {errors}"


@pytest.mark.slow
def test_junit_carries_the_figures_of_passing_and_failing_checks(gate):
    passing = properties(gate.case("test_lint[healthy-finite]"))
    assert passing["mergeqa.lint.finite.obtained"] == "0" and passing["mergeqa.lint.finite.threshold"] == "0"
    assert int(passing["mergeqa.lint.finite.n"]) > 0
    failing = properties(gate.case("test_lint[nan_tensor-finite]"))
    assert failing["mergeqa.lint.finite.obtained"] == "1"
    assert failing["mergeqa.lint.finite.first"] == gate.variants["nan_tensor"].subject
    loop = properties(gate.case("test_no_degenerate_repetition[healthy]"))
    assert {"obtained", "threshold", "n", "max_repeated_span"} <= {k.rsplit(".", 1)[1] for k in loop}
    ppl = properties(gate.case("test_perplexity[healthy]"))
    # the figures, not the outcome: how the ties merge's perplexity compares differs between machines
    assert float(ppl["mergeqa.sanity.perplexity.obtained"]) > 0 and float(ppl["mergeqa.sanity.perplexity.threshold"]) == 1.5
    suite = {p.get("name"): p.get("value") for p in gate.junit.find("testsuite").find("properties")}
    assert suite["mergeqa.run.merged.healthy.path"].endswith("healthy")
    assert "mergeqa.run.merged.nan_tensor.content_hash" in suite and "mergeqa.run.version.mergekit" in suite


# -- the measures behind the verdicts (no model needed) ------------------------------------------
def test_repetition_measures_flag_a_loop_and_not_ordinary_text():
    from mergeqa.inspect.sanity import longest_repeated_span, repetition_rate

    loop = [5, 6, 7, 8] * 6
    assert longest_repeated_span(loop) == 20 and repetition_rate(loop) == pytest.approx(18 / 22)
    sentence = [1, 2, 3, 4, 2, 3, 9, 10]
    assert longest_repeated_span(sentence) == 2 and repetition_rate(sentence) == 0.0
    assert repetition_rate([]) == 0.0 and longest_repeated_span([]) == 0


def test_a_malformed_sanity_prompt_is_a_usage_error_naming_it():
    from mergeqa.core.errors import MergeQAUsageError
    from mergeqa.inspect.sanity import parse_prompts

    with pytest.raises(MergeQAUsageError, match="capital: give expect"):
        parse_prompts({"capital": {"prompt": "The capital of France is"}})
    with pytest.raises(MergeQAUsageError, match="capital: unknown key 'expected'"):
        parse_prompts({"capital": {"prompt": "x", "expected": ["Paris"]}})
    (p,) = parse_prompts({"capital": {"prompt": "The capital of France is", "expect": "Paris"}})
    assert p.accepts(" Paris.") and not p.accepts(" Lyon.")


def test_thresholds_file_and_defaults_agree_on_sanity_and_lint():
    from mergeqa.decision.thresholds import DEFAULTS, load_thresholds

    t = load_thresholds(REPO / "thresholds.toml")
    for section in ("sanity", "lint"):
        assert t.values[section] == DEFAULTS[section], section
