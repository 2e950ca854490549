"""Sequential early stop in the gate (`[statistics] sequential = true`): a comparison stops once
decided, the cache scores and holds exactly the items used, later runs extend it, and a bad
setting is a usage error. Outcomes asserted only where they hold by construction (a model
against an identical copy of itself); the rest are item counts read from the event log."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict

import pytest

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.decision.thresholds import load_thresholds
from mergeqa.evaluate.engine import EvalSettings, evaluate
from mergeqa.models.refs import ModelRef

TASK = "family_arithmetic"  # 400 items, 0/1 acc, zero-shot, owned by the arithmetic parent
SEQUENTIAL = f"""
[statistics]
sequential = true
alpha = {{alpha}}
[retention]
suite = "one"
min_retention = 0.9
tolerance = 0.05
[suites.one]
tasks = ["{TASK}"]
"""


def _thresholds(tmp_path, alpha=0.05, name="thresholds.toml"):
    path = tmp_path / name
    path.write_text(SEQUENTIAL.format(alpha=alpha))
    return load_thresholds(path)


def _evaluated(cache, task=TASK):
    lines = (cache / "events.jsonl").read_text().splitlines() if (cache / "events.jsonl").exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == "evaluated" and e["task"] == task]


def _docs_by_model(events):
    """{model hash: (documents scored over all events, documents the entry holds at the end)}."""
    scored, held = defaultdict(int), {}
    for e in events:
        scored[e["model_hash"]] += e["docs"]
        held[e["model_hash"]] = e["held"]
    return {h: (scored[h], held[h]) for h in held}


@pytest.fixture
def refs(family, tmp_path):
    """A merge that is a byte-identical copy of the arithmetic parent, and the two parents."""
    copy = tmp_path / "copy_of_arithmetic"
    shutil.copytree(family.parents["arithmetic"], copy)
    parents = [ModelRef(name, family.parents[name], "parent") for name in ("arithmetic", "lists")]
    return ModelRef("copy", copy, "merged"), parents


def _gate(merged, parents, thresholds, settings):
    from mergeqa.retention.assess import assess
    from mergeqa.retention.early_stop import evaluate_early

    early = evaluate_early(merged, parents, None, [TASK], thresholds, settings)
    return early, assess(merged.name, early.merged, early.parents, [TASK], thresholds, early=early)


@pytest.mark.slow
def test_a_copy_of_the_owner_passes_early_and_only_the_items_used_are_scored(family, private_cache, refs, tmp_path):
    merged, parents = refs
    settings = EvalSettings(cache_dir=private_cache, device="cpu", task_paths=(str(family.tasks_dir),))
    early, verdicts = _gate(merged, parents, _thresholds(tmp_path), settings)
    v = verdicts[(TASK, "retention")]
    used, total = v.figures["items_used"], v.figures["items_total"]
    assert v.outcome == "pass" and v.figures["effect"] == 0 and v.figures["sequential"] == "yes"
    assert total == 400 and 0 < used < total
    assert f"decided after {used} of 400 items" in v.message()
    assert verdicts[(TASK, "regression")].figures["items_used"] <= 400
    scored = len(early.merged.tasks[TASK].items)
    assert used <= scored < total
    by_model = _docs_by_model(_evaluated(private_cache))
    assert set(by_model) == {merged.content_hash[:16], parents[1].content_hash[:16]}  # the copy is the parent
    assert all(docs == held == scored for docs, held in by_model.values()), by_model


@pytest.mark.slow
def test_later_runs_extend_the_entries_and_never_score_an_item_twice(family, private_cache, refs, tmp_path):
    """Run 1 stops early; run 2 (a stricter alpha) and run 3 (another merge, the same parents)
    score only items beyond what the cache holds; a fixed-n evaluation then scores only the
    rest, and the completed entry equals one scored in a single run."""
    from safetensors.torch import load_file, save_file

    merged, parents = refs
    settings = EvalSettings(cache_dir=private_cache, device="cpu", task_paths=(str(family.tasks_dir),))
    first, _ = _gate(merged, parents, _thresholds(tmp_path), settings)
    n1 = len(first.merged.tasks[TASK].items)
    before = len(_evaluated(private_cache))
    strict, _ = _gate(merged, parents, _thresholds(tmp_path, alpha=0.0005, name="strict.toml"), settings)
    n2 = len(strict.merged.tasks[TASK].items)
    assert n1 < n2 <= 400
    second = _evaluated(private_cache)[before:]
    assert len(second) == 2 * (n2 - n1) // 50  # two models, one new batch of 50 per look past n1
    assert all(e["docs"] == 50 and e["held"] > n1 for e in second)

    other = tmp_path / "other_merge"  # a different model (one weight nudged), the same parents
    shutil.copytree(merged.path, other)
    tensors = load_file(other / "model.safetensors")
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-6
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    before = len(_evaluated(private_cache))
    third, _ = _gate(ModelRef("other", other, "merged"), parents, _thresholds(tmp_path), settings)
    new = _evaluated(private_cache)[before:]
    hashes = {p.content_hash[:16] for p in parents}
    assert any(e["model_hash"] not in hashes for e in new)
    assert all(e["held"] > n2 for e in new if e["model_hash"] in hashes), "parents were re-scored"

    arithmetic = parents[0]
    held = _docs_by_model(_evaluated(private_cache))[arithmetic.content_hash[:16]][1]
    full = evaluate(arithmetic, [TASK], settings).tasks[TASK]
    last = _evaluated(private_cache)[-1]
    assert last["docs"] == 400 - held and last["held"] == 400 and full.complete
    for docs, held in _docs_by_model(_evaluated(private_cache)).values():
        assert docs == held, "an item was scored twice"
    fresh = evaluate(arithmetic, [TASK], EvalSettings(cache_dir=tmp_path / "fresh", device="cpu",
                                                       task_paths=settings.task_paths)).tasks[TASK]
    assert full.metrics == pytest.approx(fresh.metrics)
    assert {(i.doc_id, i.doc_hash, i.metrics["acc"]) for i in full.items} == \
           {(i.doc_id, i.doc_hash, i.metrics["acc"]) for i in fresh.items}


@pytest.mark.slow
def test_a_perplexity_task_falls_back_to_fixed_n_and_says_so(family, private_cache, refs, tmp_path):
    from mergeqa.retention.assess import assess
    from mergeqa.retention.early_stop import evaluate_early

    path = tmp_path / "ppl.toml"
    path.write_text('[statistics]\nsequential = true\n[retention]\nsuite = "ppl"\n'
                    '[retention.capabilities]\nfamily_grammar_ppl = "arithmetic"\n'
                    '[suites.ppl]\ntasks = ["family_grammar_ppl"]\n')
    thresholds = load_thresholds(path)
    merged, parents = refs
    settings = EvalSettings(cache_dir=private_cache, device="cpu", task_paths=(str(family.tasks_dir),))
    early = evaluate_early(merged, parents, None, ["family_grammar_ppl"], thresholds, settings)
    assert "not a 0/1 score" in early.fixed_n["family_grammar_ppl"]
    v = assess("copy", early.merged, early.parents, ["family_grammar_ppl"], thresholds, early=early)[
        ("family_grammar_ppl", "retention")]
    assert v.figures["sequential"] == "no" and v.figures["n"] == 200 and "items_used" not in v.figures
    assert any("sequential early stop not used" in d and "fixed-n" in d for d in v.details)
    for docs, held in _docs_by_model(_evaluated(private_cache, "family_grammar_ppl")).values():
        assert docs == held == 200  # the first batch is extended to the whole task, not re-scored


@pytest.mark.parametrize("body, message", [
    ("[statistics]\nsequential = \"yes\"\n", "[statistics] sequential = 'yes': expected true or false"),
    ("[statistics]\nsequential = 1\n", "[statistics] sequential = 1: expected true or false"),
    ("[statistics]\nsequental = true\n", "unknown key 'sequental'. Did you mean 'sequential'?"),
    ("[statistics]\nsequential = true\n[retention]\nmode = \"point\"\n", "needs [retention] mode = \"significance\""),
    ("[statistics]\nsequential = true\ndecision = \"significant_drop\"\n", "needs decision = \"non_inferiority\""),
])
def test_a_bad_sequential_setting_is_a_usage_error_naming_the_file(tmp_path, body, message):
    path = tmp_path / "thresholds.toml"
    path.write_text(body)
    with pytest.raises(MergeQAUsageError) as err:
        load_thresholds(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert load_thresholds(None).get("statistics", "sequential") is False


@pytest.mark.slow
def test_the_gate_reports_the_items_used_in_junit(family, private_cache, refs, tmp_path):
    """The plugin path: `pytest --model ... --thresholds` with sequential = true."""
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    merged, parents = refs
    path = tmp_path / "thresholds.toml"
    path.write_text(SEQUENTIAL.format(alpha=0.05) + '[retention.capabilities]\nfamily_arithmetic = "arithmetic"\n')
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--model", str(merged.path), "--parents", *(str(p.path) for p in parents),
         "--thresholds", str(path), "--mergeqa-cache", str(private_cache), "--device", "cpu",
         "-k", "test_retention or test_no_regression", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
         f"--junitxml={junit}", "-rA"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    props = {x.get("name"): x.get("value") for x in ET.parse(junit).iter("property")}
    used = int(props["mergeqa.retention.items_used"])
    assert props["mergeqa.retention.outcome"] == "pass" and props["mergeqa.retention.items_total"] == "400"
    assert used < 400 and props["mergeqa.retention.sequential"] == "yes"
    scored = {e["held"] for e in _evaluated(private_cache)}
    assert max(scored) < 400


def test_a_bad_sequential_setting_stops_the_run_with_one_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "thresholds.toml"
    path.write_text('[statistics]\nsequential = "on"\n')
    proc = subprocess.run([sys.executable, "-m", "pytest", "--gate", "--thresholds", str(path), "--collect-only"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 4 and len(err) == 1, proc.stdout[-2000:] + proc.stderr
    assert err[0].endswith(f"{path}: [statistics] sequential = 'on': expected true or false")
