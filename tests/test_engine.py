"""The evaluation engine: per-item records, the content-addressed cache, offline task errors."""

from __future__ import annotations

import json
import shutil

import pytest

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.evaluate.engine import EvalSettings, evaluate
from mergeqa.models.refs import ModelRef

pytestmark = pytest.mark.slow


@pytest.fixture
def settings(family, tmp_path):
    return EvalSettings(cache_dir=tmp_path, device="cpu", task_paths=(str(family.tasks_dir),), limit=40)


def _evaluations(cache):
    path = cache / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == "evaluated"]


def test_records_per_item_and_reuses_the_cache(family, settings):
    ref = ModelRef("arithmetic", family.parents["arithmetic"], "parent")
    first = evaluate(ref, ["family_arithmetic", "family_arithmetic_gen"], settings)
    items = first.tasks["family_arithmetic"].items
    assert len(items) == 40 and {i.doc_id for i in items} == set(range(40))
    assert all(set(i.metrics) == {"acc"} and i.choice in range(4) and i.doc_hash for i in items)
    assert first.score("family_arithmetic") == pytest.approx(sum(i.metrics["acc"] for i in items) / 40)
    gen = first.tasks["family_arithmetic_gen"].items[0]
    assert isinstance(gen.choice, str) and "exact_match" in gen.metrics
    assert len(_evaluations(settings.cache_dir)) == 2
    second = evaluate(ref, ["family_arithmetic", "family_arithmetic_gen"], settings)
    assert len(_evaluations(settings.cache_dir)) == 2, "the second evaluation must come from the cache"
    assert all(t.cached for t in second.tasks.values())
    assert second.tasks["family_arithmetic"].scores() == first.tasks["family_arithmetic"].scores()


def test_changed_model_never_gets_another_models_results(family, settings, tmp_path):
    copy = tmp_path / "arithmetic"
    shutil.copytree(family.parents["arithmetic"], copy)
    a = evaluate(ModelRef("a", copy, "parent"), ["family_lists"], settings)
    # same path, different weights: overwrite with the lists parent's weights
    shutil.copy(family.parents["lists"] / "model.safetensors", copy / "model.safetensors")
    b = evaluate(ModelRef("a", copy, "parent"), ["family_lists"], settings)
    assert not b.tasks["family_lists"].cached
    assert b.score("family_lists") > a.score("family_lists") + 0.3


def test_group_expands_to_leaf_tasks(family, settings):
    res = evaluate(ModelRef("base", family.base, "base"), ["family"], settings)
    assert res.groups["family"] == ["family_arithmetic", "family_lists", "family_grammar"]
    assert res.score("family") == pytest.approx(sum(res.score(t) for t in res.groups["family"]) / 3)


def test_partial_cache_entry_is_never_read(family, settings):
    ref = ModelRef("base", family.base, "base")
    evaluate(ref, ["family_grammar"], settings)
    [entry] = (settings.cache_dir / "results").rglob("family_grammar-*.json")
    entry.write_text(entry.read_text()[:100])  # what a killed writer would leave without rename
    again = evaluate(ref, ["family_grammar"], settings)
    assert not again.tasks["family_grammar"].cached and len(again.tasks["family_grammar"].items) == 40
    assert not list((settings.cache_dir / "results").rglob("*.tmp"))


def test_unknown_task_is_a_usage_error(settings, family):
    with pytest.raises(MergeQAUsageError, match="'family_arithmetc' is not known. Did you mean 'family_arithmetic'"):
        evaluate(ModelRef("base", family.base, "base"), ["family_arithmetc"], settings)


def test_unavailable_dataset_is_one_line_naming_the_task(settings, family):
    import time

    started = time.perf_counter()
    with pytest.raises(MergeQAUsageError) as err:
        evaluate(ModelRef("base", family.base, "base"), ["arc_easy"], settings)
    message = str(err.value)
    assert "'arc_easy'" in message and "offline" in message and "\n" not in message
    assert time.perf_counter() - started < 60, "must not hang on network retries"


def test_lm_evals_own_gsm8k_yaml_keeps_each_filter_apart(family, tmp_path):
    """lm-eval's gsm8k.yaml as shipped (strict-match and flexible-extract filters), pointed at 20
    local documents: one record per document per filter, the filters' metrics under their own
    keys, strict-match gated by default, and n = 20 for the paired test."""
    from importlib.resources import files

    import yaml

    from mergeqa.evaluate.engine import paired_values

    spec = yaml.safe_load(files("lm_eval").joinpath("tasks/gsm8k/gsm8k.yaml").read_text())
    assert [f["name"] for f in spec["filter_list"]] == ["strict-match", "flexible-extract"]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"})
                              for i in range(20)) + "\n")
    spec.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {"train": str(data), "test": str(data)}},
                num_fewshot=0)
    spec["generation_kwargs"]["max_gen_toks"] = 12  # the tiny model's context is 128 tokens
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "gsm8k.yaml").write_text(yaml.safe_dump(spec))
    settings = EvalSettings(cache_dir=tmp_path / "cache", device="cpu", task_paths=(str(tasks),))
    result = evaluate(ModelRef("base", family.base, "base"), ["gsm8k"], settings)
    task = result.tasks["gsm8k"]
    assert len(task.items) == 40
    assert sorted((i.doc_id, i.filter) for i in task.items) == sorted(
        (d, f) for d in range(20) for f in ("strict-match", "flexible-extract"))
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(task.metrics)
    assert task.main_metric == "exact_match,strict-match" and task.higher_is_better["exact_match"] is True
    a, b, docs = paired_values("gsm8k", result, result)
    assert len(a) == 20 and len(set(docs)) == 20
    cached = evaluate(ModelRef("base", family.base, "base"), ["gsm8k"], settings).tasks["gsm8k"]
    assert cached.cached and len(cached.items) == 40 and cached.metrics == task.metrics
