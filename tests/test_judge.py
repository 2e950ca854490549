"""Judged evaluation (mergeqa.judge): FastChat's question format, the verdict-tag parsers, the
reference judge, pairwise discipline (both orders, flips as ties, ceilings), the verdicts, and
the OpenAI-compatible endpoint judge against a local HTTP server this file starts on 127.0.0.1.

Cost: the endpoint tests take about a second each (bounded: a handful of requests, timeouts of
0.5 s, every server thread stops by itself); the family tests generate 40 two-turn answers per
model once per cache (seconds), then read them back.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.judge import (
    EndpointJudge,
    JudgeSetup,
    JudgeUnavailable,
    Judgment,
    PairItem,
    RateItem,
    ReferenceJudge,
    read_questions,
)
from mergeqa.judge.evaluation import ModelScores, Pairwise, ab_verdict, combine_orders, score_verdict
from mergeqa.judge.prompts import builtin, parse_pair, parse_rating

# -- a local OpenAI-compatible server ---------------------------------------------------------------
STALL_S = 1.5  # how long the stalling server sleeps (each stalled request; the client gives up at 0.5 s)


class FakeEndpoint:
    """A chat-completions server on 127.0.0.1 that answers from a script: each request takes the
    next step ("ok:<text>", "429", "500", "stall"); the last step repeats. Records every request."""

    def __init__(self, steps: list[str]):
        self.steps, self.requests = list(steps), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                step = outer.steps.pop(0) if len(outer.steps) > 1 else outer.steps[0]
                if step == "stall":
                    time.sleep(STALL_S)
                    return self._reply(200, _completion("too late [[A]]"))
                if step in ("429", "500"):
                    return self._reply(int(step), {"error": {"message": "busy", "type": "rate_limit"}},
                                       {"retry-after-ms": "20"})
                return self._reply(200, _completion(step.removeprefix("ok:")))

            def _reply(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the stall test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _completion(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "judge-1",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _judge(url, tmp_path, **kw) -> EndpointJudge:
    return EndpointJudge(url, "judge-1", tmp_path, timeout=kw.pop("timeout", 0.5), retries=kw.pop("retries", 2), **kw)


ITEM = RateItem(("23 + 14 =",), ("37",), "37")
PAIR = PairItem(("23 + 14 =",), ("37",), ("36",), ("37",))


def test_endpoint_sends_a_correct_chat_request_and_parses_the_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    with FakeEndpoint(["ok:Correct. Rating: [[9]]", "ok:A is right. [[A]]"]) as server:
        judge = _judge(server.url, tmp_path, key_env="MY_JUDGE_KEY")
        assert judge.rate([ITEM]) == [Judgment(9.0, "Correct. Rating: [[9]]")]
        assert judge.compare([PAIR])[0].value == "A"
    first = server.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    body = first["body"]
    assert body["model"] == "judge-1" and body["temperature"] == 0 and body["max_tokens"] == 96
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "[[rating]]" in body["messages"][1]["content"] and "37" in body["messages"][1]["content"]
    assert "[[A]]" in server.requests[1]["body"]["messages"][0]["content"]


def test_endpoint_replies_are_cached_per_request(tmp_path):
    with FakeEndpoint(["ok:[[7]]"]) as server:
        judge = _judge(server.url, tmp_path)
        judge.rate([ITEM])
        again = _judge(server.url, tmp_path).rate([ITEM])
    assert len(server.requests) == 1 and again[0].value == 7.0


def test_a_reply_without_a_verdict_tag_is_a_counted_parse_error(tmp_path):
    with FakeEndpoint(["ok:I think the answer is fine, probably an eight."]) as server:
        got = _judge(server.url, tmp_path).rate([ITEM])
    assert got[0].value is None and got[0].error == "parse" and "eight" in got[0].reply
    assert len(server.requests) == 1  # not retried: the reply is kept and counted


def test_429_then_success_is_retried(tmp_path):
    with FakeEndpoint(["429", "500", "ok:[[8]]"]) as server:
        started = time.perf_counter()
        got = _judge(server.url, tmp_path, retries=3).rate([ITEM])
    assert got[0].value == 8.0 and len(server.requests) == 3
    assert time.perf_counter() - started < 5  # Retry-After of 20 ms honoured, no long backoff


def test_429_past_the_retries_is_judge_unavailable(tmp_path):
    with FakeEndpoint(["429"]) as server, pytest.raises(JudgeUnavailable, match="429.*after 2 attempts"):
        _judge(server.url, tmp_path, retries=1).rate([ITEM])
    assert len(server.requests) == 2


def test_a_stall_past_the_timeout_is_judge_unavailable_and_nothing_hangs(tmp_path):
    with FakeEndpoint(["stall"]) as server:
        started = time.perf_counter()
        with pytest.raises(JudgeUnavailable, match=r"did not answer within 0.5 s \(2 attempts\)"):
            _judge(server.url, tmp_path, retries=1).rate([ITEM])
        took = time.perf_counter() - started
    assert took < 2 * 0.5 + 2, took  # two timed-out attempts and one short backoff, not a hang
    assert not list((tmp_path / "judgments").rglob("*.json"))  # nothing cached for a failed request


def test_a_stalled_endpoint_spends_its_budget_telling_each_stall_then_fails_fast(tmp_path):
    """A server that never answers within the timeout (each request sleeps STALL_S > 0.4 s), with
    3 retries and a budget of 1.5 s for the run: every timed-out try is told as it happens with the
    time so far; the request ends when the budget is spent (not after 4 tries x 0.4 s plus
    backoff), and every later request fails at once without reaching the server."""
    import openai  # noqa: F401 - imported before the clock starts (seconds on a loaded machine)

    from mergeqa.core import progress

    lines: list[str] = []
    uninstall = progress.install(lines.append)
    try:
        with FakeEndpoint(["stall"]) as server:
            judge = _judge(server.url, tmp_path, timeout=0.4, retries=3, budget_s=1.5)
            started = time.perf_counter()
            with pytest.raises(JudgeUnavailable, match=r"^judge unavailable: budget of 1\.5 s spent waiting on "):
                judge.rate([ITEM])
            first = time.perf_counter() - started
            tried = len(server.requests)
            started = time.perf_counter()
            for _ in range(3):  # the other judged checks of the run
                with pytest.raises(JudgeUnavailable, match="budget of 1.5 s spent") as info:
                    judge.compare([PAIR])
            after = time.perf_counter() - started
            assert len(server.requests) == tried
    finally:
        uninstall()
    assert first < 1.5 + 1.0, first  # the budget and slack: no try outlasts what is left of it
    assert after < 0.1, after
    assert 2 <= tried <= 3
    url = re.escape(server.url)
    timed_out = [line for line in lines if "did not answer within" in line]
    assert len(timed_out) == tried, lines
    assert re.fullmatch(rf"judge: {url} did not answer within 0\.4 s \(try 1/4, 0\.\d s\); retrying in 0\.5 s; "
                        r"0\.\d s of the judge's 1\.5 s budget spent", timed_out[0]), timed_out[0]
    assert re.fullmatch(rf"judge: budget of 1\.5 s spent waiting on {url} \({tried} tries without an answer\): "
                        "the remaining judge requests fail at once", lines[-1]), lines
    assert sum("budget of 1.5 s spent" in line for line in lines) == 1  # told once, not per request
    from mergeqa.judge.evaluation import unavailable_verdict

    verdict = unavailable_verdict("ab.lists", "ties", info.value)
    assert verdict.outcome == "error" and verdict.reason.startswith("judge unavailable: budget of 1.5 s spent")
    assert "budget_s" in verdict.fix


def test_the_budget_is_the_runs_not_each_workers(tmp_path):
    """Two judges as two xdist workers of one run share the budget file (their testrunuid): once
    one has spent the budget on a stalled endpoint, the other fails at once without a request."""
    import openai  # noqa: F401

    from mergeqa.judge.evaluation import budget_file

    shared = budget_file(f"test-{tmp_path.name}")
    shared.unlink(missing_ok=True)
    try:
        with FakeEndpoint(["stall"]) as server:
            first = _judge(server.url, tmp_path / "w0", timeout=0.4, retries=3, budget_s=1.0, budget_file=shared)
            second = _judge(server.url, tmp_path / "w1", timeout=0.4, retries=3, budget_s=1.0, budget_file=shared)
            with pytest.raises(JudgeUnavailable, match="budget of 1 s spent"):
                first.rate([ITEM])
            tried = len(server.requests)
            started = time.perf_counter()
            with pytest.raises(JudgeUnavailable, match="budget of 1 s spent"):
                second.rate([ITEM])
            assert time.perf_counter() - started < 0.1 and len(server.requests) == tried
        assert second.lost_s >= 1.0 and float(shared.read_text()) >= 1.0
    finally:
        shared.unlink(missing_ok=True)


def test_a_server_that_is_down_is_judge_unavailable_naming_the_url(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    started = time.perf_counter()
    with pytest.raises(JudgeUnavailable, match=f"{url} is unreachable") as info:
        _judge(url, tmp_path, retries=1).rate([ITEM])
    assert "Fix: start the server or correct --judge-url" in str(info.value)
    assert time.perf_counter() - started < 5


def test_the_check_turns_an_unavailable_judge_into_an_error_verdict():
    from mergeqa.judge.evaluation import unavailable_verdict

    v = unavailable_verdict("ab.lists", "ties", JudgeUnavailable("judge endpoint http://x is unreachable. Fix: start it"))
    assert v.outcome == "error" and v.reason == "judge endpoint http://x is unreachable." and v.fix == "start it"


def test_endpoint_without_a_model_name_is_a_usage_error(tmp_path):
    with pytest.raises(MergeQAUsageError, match="--judge-model"):
        EndpointJudge("http://127.0.0.1:9/v1", "", tmp_path)


# -- prompts and parsers ----------------------------------------------------------------------------
@pytest.mark.parametrize("reply, value", [("Rating: [[7]]", 7.0), ("[[ 8.5 ]]", 8.5), ("[[3]] then [[9]]", 9.0),
                                          ("Rating: [6]", 6.0), ("no tag, 7/10", None), ("[[11]]", None)])
def test_parse_rating(reply, value):
    assert parse_rating(reply) == value


@pytest.mark.parametrize("reply, value", [("[[A]]", "A"), ("so [[B]].", "B"), ("[[C]]", "C"),
                                          ("[[A]] or [[B]]", None), ("A is better", None)])
def test_parse_pair(reply, value):
    assert parse_pair(reply) == value


def test_prompts_show_no_model_names_and_put_the_reference_first():
    name, single = builtin().single(["23 + 14 =", "37 + 5 ="], ["37", "42"], ["37", "42"], "math")
    assert name == "single-math-v1-multi-turn" and single[1]["content"].startswith("<|The Start of Reference Answer|>") and "### Reference answer:\n42" in single[1]["content"]
    _, pair = builtin().pair(["q"], ["x"], ["y"], [None])
    text = pair[0]["content"] + pair[1]["content"]
    assert "Reference" not in pair[1]["content"] and "Assistant A" in text and "Assistant B" in text
    assert "order" in pair[0]["content"] and "length" in pair[0]["content"]


# -- questions ----------------------------------------------------------------------------------------
FASTCHAT_LINES = [  # FastChat's exact format: question_id, category, turns, optional reference
    {"question_id": 81, "category": "writing", "turns": ["Compose a haiku about merging models.",
                                                         "Rewrite it so every line starts with M."]},
    {"question_id": 111, "category": "math", "turns": ["What is 23 + 14?", "And that plus 5?"],
     "reference": ["37", "42"]},
    {"question_id": 121, "category": "coding", "turns": ["sort [5 4 9] =", "reverse [4 5 9] ="],
     "reference": ["[4 5 9]", "[9 5 4]"]},
]


def test_a_fastchat_question_file_reads_unchanged(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in FASTCHAT_LINES) + "\n")
    qs = read_questions(path)
    assert [q.question_id for q in qs] == [81, 111, 121] and qs[0].reference is None
    assert qs[1].turns == ("What is 23 + 14?", "And that plus 5?") and qs[1].reference_for(1) == "42"


@pytest.mark.parametrize("line, message", [
    ("{not json", ":1: not JSON"),
    (json.dumps({"question_id": 1, "turns": "one"}), ":1: needs question_id and turns"),
    (json.dumps({"question_id": 1, "turns": ["a"], "reference": "x"}), ":1: reference must be a list"),
])
def test_a_malformed_question_line_is_a_usage_error_naming_it(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(MergeQAUsageError, match=f"{path}{message}"):
        read_questions(path)


# -- the reference judge and the pairwise discipline ------------------------------------------------
def test_reference_judge_grades_against_the_reference():
    judge = ReferenceJudge()
    got = judge.rate([RateItem(("q",), ("37",), "37"), RateItem(("q",), ("the answer is 37",), "37"),
                      RateItem(("q",), ("36",), "37"), RateItem(("q",), ("cat",), "37"), RateItem(("q",), ("37",))])
    assert [j.value for j in got] == [10.0, 10.0, 3.0, 1.0, None] and got[-1].error == "ungradable"
    pairs = judge.compare([PAIR, PairItem(("q",), ("36",), ("37",), ("37",)), PairItem(("q",), ("1",), ("2",), ("3",))])
    assert [j.value for j in pairs] == ["A", "B", "C"]


@pytest.mark.parametrize("first, second, outcome, flipped", [
    ("A", "B", "win", False),   # the merge wins in both orders
    ("B", "A", "loss", False),
    ("C", "C", "tie", False),
    ("A", "A", "tie", True),    # position bias: whoever is first wins -> a flip, counted as a tie
    ("A", "C", "tie", True),
])
def test_both_orders_combine_and_a_flip_is_a_tie(first, second, outcome, flipped):
    got, was_flipped, parse_error = combine_orders(Judgment(first), Judgment(second))
    assert (got, was_flipped, parse_error) == (outcome, flipped, False)


def test_a_parse_error_in_either_order_leaves_the_question_out_and_counts():
    assert combine_orders(Judgment("A"), Judgment(None, error="parse")) == (None, False, True)


def _setup(**kw) -> JudgeSetup:
    return JudgeSetup([], ReferenceJudge(), None, Path("."), **kw)


def test_win_rate_verdicts_pass_fail_and_inconclusive_on_the_exact_interval():
    setup = _setup()
    strong = Pairwise("m", "p", ["win"] * 30 + ["tie"] * 10, 0, 0)
    weak = Pairwise("m", "p", ["loss"] * 30 + ["tie"] * 10, 0, 0)
    close = Pairwise("m", "p", ["win"] * 9 + ["loss"] * 11, 0, 0)
    assert [ab_verdict(setup, x).outcome for x in (strong, weak, close)] == ["pass", "fail", "inconclusive"]
    v = ab_verdict(setup, strong)
    assert v.check == "ab.p" and v.obtained == 0.875 and v.figures["ci_low"] < 0.875 < v.figures["ci_high"]
    assert v.data["win_rate"] == 0.875 and v.figures["judge"] == "reference:v2"


def test_swap_disagreement_and_parse_errors_past_their_ceilings_are_errors():
    setup = _setup(max_swap_disagreement=0.3, max_parse_errors=0.1)
    biased = Pairwise("m", "p", ["tie"] * 16 + ["win"] * 24, flips=16, parse_errors=0)
    garbled = Pairwise("m", "p", ["win"] * 30 + [None] * 10, flips=0, parse_errors=10)
    v = ab_verdict(setup, biased)
    assert v.outcome == "error" and "swapped places on 16 of 40" in v.reason
    assert ab_verdict(setup, garbled).outcome == "error"
    assert ab_verdict(_setup(max_swap_disagreement=0.5), biased).outcome == "pass"


def _scores(name, per_question, parse_errors=0):
    return ModelScores(name, [[s, s] for s in per_question], parse_errors, 0, 10.0, 20.0)


def test_score_gate_uses_the_paired_test_over_questions():
    setup = _setup(score_margin=0.5)
    parents = {"a": _scores("a", [10, 1] * 20), "b": _scores("b", [1, 10] * 20)}  # mean 5.5 on each question
    good = score_verdict(setup, _scores("m", [10] * 40), parents)
    bad = score_verdict(setup, _scores("m", [1] * 40), parents)
    assert (good.outcome, bad.outcome) == ("pass", "fail")
    assert good.figures["reference"] == 5.5 and good.figures["method"] == "betting"
    assert good.data["scores"]["m"]["score"] == 10.0 and good.data["scores"]["a"]["bleu"] == 10.0
    garbled = score_verdict(setup, _scores("m", [10] * 40, parse_errors=20), parents)
    assert garbled.outcome == "error" and "no [[rating]] in 20 of 100" in garbled.reason


def test_a_judged_skill_lost_on_a_few_questions_is_not_passed_by_the_default_test():
    """The merge equals its parents' mean except on 1 question in 18, where it loses 9 points (the
    mean drop is exactly the 0.5 margin): the shifted sign-flip passed such merges 0.31 of the time
    at 20 questions (issue 26); the default betting test holds alpha (bench/simulate_skewed.py)."""
    import numpy as np

    from mergeqa.decision.significance import compare_paired

    rng = np.random.default_rng(0)
    parents_mean = [10.0] * 36
    passed = {"betting": 0, "permutation": 0}
    for _ in range(200):
        lost = rng.random(36) < 1 / 18  # the skill lost: 10 -> 1 on these, a mean drop of 9 / 18 = 0.5
        merged = [1.0 if x else 10.0 for x in lost]
        for test in passed:
            c = compare_paired(merged, parents_mean, margin=0.5, alpha=0.05, method=test, bounds=(1.0, 10.0))
            passed[test] += c.verdict == "pass"
    assert passed["betting"] / 200 <= 0.05, passed
    # the same null at 100 questions, where a merge with at most two lost questions looks fine
    # (probability 0.08): the betting test told only half the range passes those
    worst = 0
    for _ in range(400):
        merged = [1.0 if x else 10.0 for x in rng.random(100) < 1 / 18]
        c = compare_paired(merged, [10.0] * 100, margin=0.5, alpha=0.05, method="betting", bounds=(1.0, 10.0))
        worst += c.verdict == "pass"
    assert worst / 400 <= 0.05, worst
    assert passed["permutation"] / 200 > 0.075, passed  # the old default: every draw without a loss, (17/18)^36 = 0.13


# -- through the gate on the family ------------------------------------------------------------------
@pytest.mark.slow
def test_the_gate_decides_judged_and_conflict_checks_with_figures_in_junit(family, cache_dir, tmp_path):
    """The built-in checks on one default merge (ties) of the embedded family: decided through the
    verdict machinery (no errors), figures in junit as mergeqa.judge.*, mergeqa.ab.*, mergeqa.conflict.*."""
    import os
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    from mergeqa.core.state import CHECKS_DIR
    from mergeqa.models.session import FIXTURES_DIR

    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(CHECKS_DIR / "test_judge.py"),
                           str(CHECKS_DIR / "test_conflict.py"), "-k", "ties and not dare", "--device", "cpu",
                           "--mergeqa-cache", str(cache_dir), "--thresholds", str(FIXTURES_DIR.parent / "thresholds.toml"),
                           "-p", "no:cacheprovider", "-q", f"--junitxml={junit}", "-o", "junit_family=xunit1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"test_judged_score[ties]", "test_ab_win_rate[ties]", "test_conflict_rate[ties]",
                          "test_conflict_vs_parents[ties]", "test_agrees_with_skill_owner[ties]"}, out[-3000:]
    props = {p.get("name"): p.get("value") for c in cases.values() for p in c.iter("property")}
    for name in ("judge.score", "ab.arithmetic", "ab.lists", "conflict.rate", "conflict.paired.arithmetic",
                 "conflict.owner.lists"):
        assert props[f"mergeqa.{name}.outcome"] in ("pass", "fail", "inconclusive"), (name, out[-3000:])
    assert props["mergeqa.judge.score.judge"] == "reference:v2" and props["mergeqa.ab.lists.n"] == "40"
    assert props["mergeqa.ab.arithmetic.swap_disagreement"] == "0.0"  # the reference judge is symmetric
    assert 0 <= float(props["mergeqa.ab.lists.ci_low"]) <= float(props["mergeqa.ab.lists.obtained"]) <= 1
    assert {"mergeqa.judge.score.bleu", "mergeqa.judge.score.chrf", "mergeqa.judge.score.p_noninferiority",
            "mergeqa.conflict.rate.ci_high", "mergeqa.conflict.owner.arithmetic.obtained"} <= set(props)
    assert not [n for n, c in cases.items() if c.find("error") is not None], out[-3000:]


@pytest.mark.slow
def test_a_stalled_judge_endpoint_in_the_gate_is_told_on_the_terminal_and_ends_in_error_verdicts(
        family, cache_dir, tmp_path):
    """The judged checks of one merge against an endpoint that never answers in time, with a budget
    of 1 s: the stall is told on pytest's terminal as it happens, and the three judged verdicts are
    errors naming the spent budget (the answers of the family's models are cached: seconds)."""
    import os
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    from mergeqa.core.state import CHECKS_DIR

    (tmp_path / "thresholds.toml").write_text("[judge]\ntimeout = 0.3\nretries = 1\nbudget_s = 1.0\n")
    junit = tmp_path / "junit.xml"
    with FakeEndpoint(["stall"]) as server:
        proc = subprocess.run([sys.executable, "-m", "pytest", str(CHECKS_DIR / "test_judge.py"), "-k", "ties and not dare",
                               "--device", "cpu", "--mergeqa-cache", str(cache_dir), "--judge-url", server.url,
                               "--judge-model", "judge-1", "-p", "no:cacheprovider", f"--junitxml={junit}",
                               "-o", "junit_family=xunit1"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout
    url = re.escape(server.url)
    assert re.search(rf"^mergeqa: judge: {url} did not answer within 0\.3 s \(try 1/2, [\d.]+ s\); retrying in "
                     r"0\.\d s; [\d.]+ s of the judge's 1 s budget spent$", out, re.MULTILINE), out[-3000:]
    assert re.search(rf"^mergeqa: judge: budget of 1 s spent waiting on {url} \(\d tries without an answer\): "
                     "the remaining judge requests fail at once$", out, re.MULTILINE), out[-3000:]
    assert len(server.requests) <= 4
    props = {p.get("name"): p.get("value") for c in ET.parse(junit).getroot().iter("testcase")
             for p in c.iter("property")}
    for name in ("judge.score", "ab.arithmetic", "ab.lists"):
        assert props[f"mergeqa.{name}.outcome"] == "error", (name, props)
    assert "budget of 1 s spent" in out.split("FAILURES", 1)[-1]


@pytest.mark.slow
def test_a_local_model_judge_is_prompted_cached_and_its_untagged_replies_counted(family, tmp_path):
    """The family's base as a (hopeless) judge: it never writes [[rating]], so every reply is a
    counted parse error and the verdict an error naming the judge, not a silent drop."""
    from mergeqa.decision.thresholds import load_thresholds

    qs = tmp_path / "q.jsonl"
    qs.write_text("\n".join(json.dumps(q) for q in FASTCHAT_LINES[1:]) + "\n")
    setup = JudgeSetup.from_thresholds(load_thresholds(None), tmp_path, "cpu", "float32", questions=str(qs),
                                       judge=str(family.base))
    assert setup.judge.identity.startswith("local:base:")
    from mergeqa.models.refs import ModelRef

    parent = ModelRef("arithmetic", family.parents["arithmetic"], "parent")
    scores = setup.scores(parent)
    assert scores.parse_errors == 4 and scores.judged == 0  # 2 questions x 2 turns, none tagged
    v = score_verdict(setup, scores, {"arithmetic": scores})
    assert v.outcome == "error" and "no [[rating]] in 4 of 4 replies" in v.reason and setup.judge.identity in v.reason
    again = JudgeSetup.from_thresholds(load_thresholds(None), tmp_path, "cpu", "float32", questions=str(qs),
                                       judge=str(family.base))
    assert again.answers(parent).cached and again.scores(parent).turns == scores.turns


def test_judge_and_judge_url_together_is_a_usage_error(tmp_path):
    from mergeqa.decision.thresholds import load_thresholds

    with pytest.raises(MergeQAUsageError, match="--judge and --judge-url"):
        JudgeSetup.from_thresholds(load_thresholds(None), tmp_path, "cpu", "float32", judge="x",
                                   judge_url="http://127.0.0.1:1/v1")
    with pytest.raises(MergeQAUsageError, match="--judge nowhere: no such directory"):
        JudgeSetup.from_thresholds(load_thresholds(None), tmp_path, "cpu", "float32", judge="nowhere")


# -- what the reference judge can grade, and what it must not guess at --------------------------------
@pytest.mark.parametrize("reference, form", [
    ("12000", "number"), ("$12,000", "number"), ("-3.5", "number"), ("40%", "number"), ("[0 2 4 8 9]", "list"),
    ("B", "choice"), ("(c)", "choice"),
    ("You are in second place.", None), ("Uncertain.", None), ("Area is 3", None), ("", None), (None, None),
])
def test_the_reference_judge_grades_only_short_exact_references(reference, form):
    from mergeqa.judge.judges import reference_form

    assert reference_form(reference) == form


@pytest.mark.parametrize("answer, reference, score", [
    ("The total cost is $12,000.", "12000", 10.0),  # was 3: "12" and "000" read as two numbers
    ("$12,000", "12000", 10.0), ("about 12,500 dollars", "$12,000", 3.0), ("no idea", "12000", 1.0),
    ("The answer is (B).", "B", 10.0), ("I would pick option C", "B", 3.0),
    ("You have overtaken the second person, so you are now second.", "You are in second place.", None),
])
def test_the_reference_judge_reads_values_as_people_write_them(answer, reference, score):
    assert ReferenceJudge().score(answer, reference) == score


MT_BENCH_LIKE = [  # FastChat's question.jsonl shape; 81 and 82 have no reference, 101's is a sentence
    {"question_id": 81, "category": "writing", "turns": ["Write a travel blog post about Hawaii.", "Rewrite it."]},
    {"question_id": 82, "category": "roleplay", "turns": ["Draft an email.", "Shorten it."]},
    {"question_id": 101, "category": "reasoning", "turns": ["You overtake the second person: your position?",
                                                            "And if it were the last person?"],
     "reference": ["You are in second place.", "Uncertain."]},
    *({"question_id": 110 + i, "category": "math", "turns": [f"{i} + 30 =", f"{i} + 40 ="],
       "reference": [str(i + 30), f"{i + 40:,}"]} for i in range(5)),
]


def _judged_on(questions, answers_by_model, judge=None, **kw):
    """JudgeSetup on real-format questions with the reference judge (or `judge`) and given answers (no model)."""
    from types import SimpleNamespace

    from mergeqa.judge.questions import Question

    qs = [Question(q["question_id"], q["category"], tuple(q["turns"]), tuple(q["reference"]) if "reference" in q
                   else None) for q in questions]
    setup = JudgeSetup(qs, judge or ReferenceJudge(), None, Path("."), **kw)
    refs = {}
    for name, answers in answers_by_model.items():
        refs[name] = SimpleNamespace(name=name, path=Path(name))
        setup._answers[Path(name)] = SimpleNamespace(turns=answers)
    return setup, refs


def test_ungradable_turns_are_counted_and_too_many_make_an_error_never_a_silent_drop():
    right = [["a poem", "again"], ["mail", "short"], ["second", "unsure"],
             *([f"{i + 30}", f"{i + 40}"] for i in range(5))]
    setup, refs = _judged_on(MT_BENCH_LIKE, {"m": right, "p": right, "q": right})
    scores = {n: setup.scores(r) for n, r in refs.items()}
    assert scores["m"].unjudged == 6 and scores["m"].judged == 10  # 3 questions x 2 turns cannot be graded
    v = score_verdict(setup, scores["m"], {"p": scores["p"], "q": scores["q"]})
    assert v.outcome == "error" and "could not grade 6 of 16 turns" in v.reason and "--judge" in v.fix
    ab = ab_verdict(setup, setup.pairwise(refs["m"], refs["p"]))
    assert ab.outcome == "error" and "could not grade 3 of 8 questions" in ab.reason
    # accepted knowingly: the verdict says on how many questions it stands
    setup.max_ungradable = 0.5
    v = score_verdict(setup, scores["m"], {"p": scores["p"], "q": scores["q"]})
    assert v.outcome != "error" and "on 5 of 8 questions (6 ungradable turns)" in v.summary
    assert v.figures["ungradable"] == 6


# -- FastChat's prompt format, selection and reference files --------------------------------------------
# The shape of FastChat's llm_judge/data/judge_prompts.jsonl (names, placeholders, verdict tags), with
# stand-in wording: a user's own FastChat file is read the same way.
FASTCHAT_SHAPED = [
    {"name": "pair-v2", "type": "pairwise", "system_prompt": "P. [[A]] [[B]] [[C]]",
     "prompt_template": "[User Question]\n{question}\n\n[A]\n{answer_a}\n\n[B]\n{answer_b}", "output_format": "[[A]]"},
    {"name": "pair-v2-multi-turn", "type": "pairwise", "system_prompt": "PM",
     "prompt_template": "{question_1}|{answer_a_1}|{question_2}|{answer_a_2}|{answer_b_1}|{answer_b_2}",
     "output_format": "[[A]]"},
    {"name": "pair-math-v1", "type": "pairwise", "system_prompt": "PR",
     "prompt_template": "{question}|{ref_answer_1}|{answer_a}|{answer_b}", "output_format": "[[A]]"},
    {"name": "single-v1", "type": "single", "system_prompt": "You are a helpful assistant.",
     "prompt_template": "[Instruction]\nRate [[rating]].\n\n[Question]\n{question}\n\n[Answer]\n{answer}",
     "output_format": "[[rating]]"},
    {"name": "single-math-v1", "type": "single", "system_prompt": "You are a helpful assistant.",
     "prompt_template": "Q {question} REF {ref_answer_1} A {answer}", "output_format": "[[rating]]"},
    {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "SM",
     "prompt_template": "{question_1}|{answer_1}|{question_2}|{answer_2}", "output_format": "[[rating]]"},
]


def test_prompts_are_chosen_as_fastchat_chooses_them(tmp_path):
    from mergeqa.judge.prompts import PromptSet, builtin

    path = tmp_path / "judge_prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in FASTCHAT_SHAPED))
    prompts = PromptSet.load(path)
    # math / reasoning / coding with a reference: reference-guided; writing: general; turn 2: multi-turn
    assert prompts.single(["2+2?"], ["4"], ["4"], "math") == ("single-math-v1", [
        {"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Q 2+2? REF 4 A 4"}])
    assert prompts.single(["Poem?"], ["roses"], [None], "writing")[0] == "single-v1"
    assert prompts.single(["a?", "b?"], ["x", "y"], [None, None], "writing")[1][1]["content"] == "a?|x|b?|y"
    # no single-math-v1-multi-turn in this file: the general multi-turn prompt, as a fallback
    assert prompts.single(["a?", "b?"], ["x", "y"], ["1", "2"], "math")[0] == "single-v1-multi-turn"
    assert prompts.pair(["q"], ["x"], ["y"], ["r"], "reasoning") == ("pair-math-v1", [
        {"role": "system", "content": "PR"}, {"role": "user", "content": "q|r|x|y"}])
    assert prompts.pair(["q1", "q2"], ["a1", "a2"], ["b1", "b2"], [None, None], "roleplay")[1][1]["content"] == \
        "q1|a1|q2|a2|b1|b2"
    assert prompts.hash != builtin().hash and prompts.source == str(path)
    # the built-in set has every FastChat name, with FastChat's placeholders
    assert sorted(builtin().prompts) == sorted(["single-v1", "single-math-v1", "single-v1-multi-turn",
                                                "single-math-v1-multi-turn", "pair-v2", "pair-math-v1",
                                                "pair-v2-multi-turn", "pair-math-v1-multi-turn"])


@pytest.mark.parametrize("lines, says", [
    ([{"name": "single-v1", "system_prompt": "s", "prompt_template": "{question} {answer}"}], "no prompt named"),
    ([*FASTCHAT_SHAPED[:3], {**FASTCHAT_SHAPED[3], "prompt_template": "{question} {reply}"}, *FASTCHAT_SHAPED[4:]],
     "uses a placeholder FastChat does not fill"),
    (["not json"], "not a FastChat judge prompt"),
])
def test_a_bad_prompt_file_is_one_usage_error(tmp_path, lines, says):
    from mergeqa.judge.prompts import PromptSet

    path = tmp_path / "judge_prompts.jsonl"
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    with pytest.raises(MergeQAUsageError, match=says):
        PromptSet.load(path)


def test_fastchat_reference_answers_win_over_the_questions_own(tmp_path):
    from mergeqa.judge.questions import with_references

    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in FASTCHAT_LINES))
    refs = tmp_path / "gpt-4.jsonl"  # FastChat's reference_answer/gpt-4.jsonl shape
    refs.write_text(json.dumps({"question_id": 111, "answer_id": "x", "model_id": "gpt-4", "tstamp": 1.0,
                                "choices": [{"index": 0, "turns": ["$37", "42.0"]}]}) + "\n")
    got = {q.question_id: q for q in with_references(read_questions(questions), refs)}
    assert got[111].reference == ("$37", "42.0") and got[121].reference == ("[4 5 9]", "[9 5 4]")
    assert got[81].reference is None
    refs.write_text('{"question_id": 111, "choices": []}\n')
    with pytest.raises(MergeQAUsageError, match="choices\\[0\\].turns"):
        with_references(read_questions(questions), refs)


def test_an_endpoint_judge_grades_every_mt_bench_question_with_fastchats_prompts(tmp_path):
    """The same 8 questions through an OpenAI-compatible endpoint answering in FastChat's formats:
    every turn is graded (writing and roleplay included: an LLM judge needs no reference), each
    with the prompt FastChat picks, and A/B uses its pair prompts."""
    right = [["a poem", "again"], ["mail", "short"], ["second", "unsure"],
             *([f"{i + 30}", f"{i + 40}"] for i in range(5))]
    with FakeEndpoint(["ok:Fine. Rating: [[8]]"]) as server:
        setup, refs = _judged_on(MT_BENCH_LIKE, {"m": right, "p": right}, judge=_judge(server.url, tmp_path))
        scores = setup.scores(refs["m"])
        assert scores.judged == 16 and scores.unjudged == 0 and scores.parse_errors == 0
        sent = [r["body"]["messages"] for r in server.requests]
    assert len(sent) == 16 and all([m["role"] for m in msgs] == ["system", "user"] for msgs in sent)
    users = [msgs[1]["content"] for msgs in sent]
    # question 81 (writing), turn 1: single-v1's shape; turn 2: single-v1-multi-turn's
    assert users[0].endswith("[The Start of Assistant's Answer]\na poem\n[The End of Assistant's Answer]")
    assert users[1].startswith("<|The Start of Assistant A's Conversation with User|>") and "### User:\nRewrite it." in users[1]
    # question 110 (math, references): single-math-v1, then single-math-v1-multi-turn
    assert "[The Start of Reference Answer]\n30\n[The End of Reference Answer]" in users[6]
    assert users[7].startswith("<|The Start of Reference Answer|>") and "### Reference answer:\n40" in users[7]
    # question 101 (reasoning with sentence references): reference-guided too, as FastChat grades it
    assert "You are in second place." in users[4]
    with FakeEndpoint(["ok:Equal. [[C]]"]) as server:
        setup.judge = _judge(server.url, tmp_path / "pair")
        ab = setup.pairwise(refs["m"], refs["p"])
        pair_users = [r["body"]["messages"][1]["content"] for r in server.requests]
    assert ab.judged == 8 and ab.unjudged == 0 and ab.count("tie") == 8
    assert "<|The Start of Assistant B's Conversation with User|>" in pair_users[0]


@pytest.mark.slow
def test_a_local_model_judge_grades_or_counts_every_turn(family, cache_dir):
    """A family model standing in for a local judge (--judge PATH) on the 8 MT-Bench-format
    questions: every turn is either rated or counted as a reply without a tag (a tiny model
    rarely writes one), and too many such replies make judge.score an error, never a drop."""
    from mergeqa.evaluate.generation import GenerationSettings
    from mergeqa.judge.judges import LocalJudge
    from mergeqa.models.refs import ModelRef

    judge = LocalJudge(ModelRef("lists", family.parents["lists"], "judge"),
                       GenerationSettings(max_new_tokens=16, device="cpu", dtype="float32"), cache_dir)
    right = [["a poem", "again"], ["mail", "short"], ["second", "unsure"],
             *([f"{i + 30}", f"{i + 40}"] for i in range(5))]
    setup, refs = _judged_on(MT_BENCH_LIKE, {"m": right, "p": right, "q": right}, judge=judge)
    scores = {n: setup.scores(r) for n, r in refs.items()}
    assert all(s.judged + s.parse_errors == 16 and s.unjudged == 0 for s in scores.values())
    v = score_verdict(setup, scores["m"], {"p": scores["p"], "q": scores["q"]})
    if scores["m"].parse_errors / 16 > setup.max_parse_errors:
        assert v.outcome == "error" and "gave no [[rating]]" in v.reason
    assert v.figures["judge"].startswith("local:lists:") and v.figures["prompts"] == "builtin"
