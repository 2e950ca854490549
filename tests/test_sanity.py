"""Sanity prompts the parents fail too (mergeqa.inspect.sanity): a prompt every parent also fails
is reported as "parents fail too" and, by default, left out instead of failing the merge; a prompt
only the merge fails still fails it, with the parents' continuations in the message.

The verdict logic on fake generations (no model), then once through the gate on the tiny family
(its base as the model under test, its two parents as the parents: ~15 s once the family is built).
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from mergeqa.inspect.sanity import (
    Generation,
    SanityRun,
    check_chat_instruction,
    check_coherent,
    parse_prompts,
)

PROMPTS = {p.name: p for p in parse_prompts({
    "capital": {"prompt": "The capital of France is", "expect": ["Paris"]},
    "greeting": {"prompt": "Hello, how are you?", "match": "[A-Za-z]"},
    "chat_capital": {"prompt": "What is the capital of France?", "chat": True, "expect": ["Paris"]},
})}


def gen(prompt: str, text: str = "", *, skipped: str | None = None) -> Generation:
    return Generation(PROMPTS[prompt], [1] * len(text), text, skipped=skipped)


def run(**outputs: str) -> SanityRun:
    first = [gen(name, text) for name, text in outputs.items()]
    return SanityRun("merged", first, list(first))


def parents(**by_parent: dict[str, str]) -> dict[str, dict[str, Generation]]:
    return {p: {name: gen(name, text) for name, text in outs.items()} for p, outs in by_parent.items()}


def test_a_prompt_every_parent_fails_too_is_left_out_and_none_left_is_not_applicable():
    v = check_coherent(run(capital=" a city."), parents(a={"capital": " Lyon."}, b={"capital": " big."}))
    assert v.outcome == "not_applicable" and v.reason.startswith("parents fail too: every parent also fails 'capital'")
    assert "merge -> ' a city.', a -> ' Lyon.', b -> ' big.'" in v.reason and "parents_fail" in v.fix
    assert v.figures["parents_fail_too"] == 1 and v.figures["n"] == 0 and v.figures["obtained"] == 0
    assert v.figures["parent_output.a.capital"] == " Lyon." and v.figures["left_out"] == "capital"


def test_the_other_prompts_still_decide():
    v = check_coherent(run(capital=" a city.", greeting=" Fine, thanks."),
                       parents(a={"capital": " Lyon."}, b={"capital": " big."}))
    assert v.outcome == "pass" and v.figures["n"] == 1 and v.figures["parents_fail_too"] == 1
    assert "left out, every parent fails them too: capital" in v.summary
    v = check_coherent(run(capital=" a city.", greeting=" 123"), parents(a={"capital": " x", "greeting": " 4"},
                                                                         b={"capital": " y", "greeting": " Hi"}))
    assert v.outcome == "fail" and v.figures["obtained"] == 1 and v.figures["n"] == 1  # greeting: b answers
    assert "prompt 'greeting' ('Hello, how are you?') gave ' 123' (parents: a -> ' 4', b -> ' Hi'); 1 of 1 prompts " \
           "fail (1 more that every parent fails too left out: capital)" in v.message()
    assert "lost the parents' skills" in v.cause


def test_a_prompt_only_the_merge_fails_fails_it_with_the_parents_outputs():
    v = check_coherent(run(capital=" a city."), parents(a={"capital": " Paris."}, b={"capital": " big."}))
    assert v.outcome == "fail" and v.figures["parents_fail_too"] == 0
    message = v.message()
    assert "prompt 'capital' ('The capital of France is') gave ' a city.' (parents: a -> ' Paris.', b -> ' big.')" \
        in message
    assert "capital: 'The capital of France is' -> ' a city.', expected: contains 'Paris'; parents: a -> ' Paris.'" \
        in message


def test_parents_fail_fail_keeps_failing_and_says_the_parents_fail_too():
    v = check_coherent(run(capital=" a city."), parents(a={"capital": " Lyon."}, b={"capital": " big."}), "fail")
    assert v.outcome == "fail" and v.figures["parents_fail_too"] == 1 and v.figures["n"] == 1
    assert "every parent fails it too" in v.details[0] and "every parent fails these prompts too" in v.cause
    assert 'parents_fail = "not_applicable"' in v.fix
    with pytest.raises(ValueError, match="parents_fail='skip'"):
        check_coherent(run(capital=" x"), None, "skip")


def test_a_parent_that_could_not_run_the_prompt_does_not_excuse_the_merge():
    skipped = {"a": {"chat_capital": gen("chat_capital", skipped="the tokenizer has no chat template")},
               "b": {"chat_capital": gen("chat_capital", " Rome.")}}
    v = check_chat_instruction(run(chat_capital=" Rome."), skipped)
    assert v.outcome == "fail" and v.figures["parents_fail_too"] == 0
    assert "a -> the tokenizer has no chat template, b -> ' Rome.'" in v.message()
    # no parents to ask (a caller of the old signature): the merge's failure stands as before
    assert check_coherent(run(capital=" a city.")).outcome == "fail"
    assert check_coherent(run(capital=" a city."), {}).outcome == "fail"


SUMS = ((23, 14), (31, 25), (12, 40))  # chat sums: the arithmetic parent's skill, not the base's


@pytest.mark.slow
def test_through_the_gate_a_prompt_no_family_model_answers_is_not_the_merges_fault(tmp_path, family, private_cache):
    """The family's base under test against its parents: no model of the family knows capitals
    (coherent: not applicable, parents fail too); the chat sum 23 + 14 = 37 is the arithmetic
    parent's skill and the base writes 2314 (chat_instruction: fails, naming the parents' answers);
    three sums, so that one sum the parent gets wrong on another machine decides nothing."""
    from mergeqa.core.state import CHECKS_DIR

    t = tmp_path / "thresholds.toml"
    t.write_text('[sanity.prompts]\ncapital = { prompt = "The capital of France is", expect = ["Paris"] }\n'
                 + "".join(f'chat_sum_{a}_{b} = {{ prompt = "{a} + {b} =", chat = true, expect = ["{a + b}"] }}\n'
                           for a, b in SUMS))
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(CHECKS_DIR / "test_sanity.py"), "--model", str(family.base),
         "--parents", *map(str, family.parents.values()), "--thresholds", str(t), "--mergeqa-cache",
         str(private_cache), "--device", "cpu", "-k", "test_coherent or test_follows_chat_instruction",
         "-p", "no:cacheprovider", "-o", "junit_family=xunit1", f"--junitxml={junit}", "-rA"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    cases = {c.get("name"): c for c in ET.parse(junit).iter("testcase")}

    def props(name: str) -> dict[str, str]:
        return {p.get("name"): p.get("value") for p in cases[name].iter("property")}

    coherent, chat = cases["test_coherent[base]"], cases["test_follows_chat_instruction[base]"]
    assert coherent.find("skipped") is not None and "parents fail too" in coherent.find("skipped").get("message")
    c = props("test_coherent[base]")
    assert c["mergeqa.sanity.coherent.outcome"] == "not_applicable" and c["mergeqa.sanity.coherent.parents_fail_too"] == "1"
    assert "Paris" not in c["mergeqa.sanity.coherent.output.capital"]
    assert all("Paris" not in c[f"mergeqa.sanity.coherent.parent_output.{p}.capital"] for p in family.parents)
    failure = chat.find("failure").text
    h = props("test_follows_chat_instruction[base]")
    assert h["mergeqa.sanity.chat_instruction.outcome"] == "fail" and int(h["mergeqa.sanity.chat_instruction.obtained"]) >= 1
    # the arithmetic parent gets ~97 % of sums right, so not every one of three on every machine
    # (the family trains to other weights elsewhere): the merge is blamed for one it gets right
    blamed = [f"chat_sum_{a}_{b}" for a, b in SUMS
              if str(a + b) in h.get(f"mergeqa.sanity.chat_instruction.parent_output.arithmetic.chat_sum_{a}_{b}", "")
              and str(a + b) not in h[f"mergeqa.sanity.chat_instruction.output.chat_sum_{a}_{b}"]]
    assert blamed, h
    assert "(parents: arithmetic -> " in failure and "lost the parents' skills" in failure
    print(f"coherent: {coherent.find('skipped').get('message')}\nchat: {failure.splitlines()[0]}")
