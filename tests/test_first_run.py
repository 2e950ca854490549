"""The first run on your own merge, as a new user meets it: from an empty directory, a mergekit
merge of two random-weight Qwen2-shaped parents, gated without a thresholds file (the model-agnostic
checks, one line about suites, no family built), then `mergeqa init`, the file it writes, the run
with it, and `mergeqa plan`. Models are tiny (hidden 32, 2 layers, a 300-token BPE): seconds each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

NO_SUITE = "retention and regression not measured: no [retention] suite for a model that is not the embedded family"


def _save_tokenizer_and_model(directory: Path, tokenizer, seed: int) -> Path:
    from mergeqa.evaluate.synthetic_mc import ModelShape, build_model

    shape = ModelShape("qwen2", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, vocab=None,
                       max_positions=256)
    build_model(shape, len(tokenizer), seed=seed, init_std=0.5).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_merge(tmp_path_factory) -> dict[str, Path]:
    """Parents `math` and `code` (random Qwen2 weights, one tokenizer without a chat template) and
    their linear merge, built with mergekit's MergeConfiguration + run_merge as mergeqa.models.merging does."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from mergeqa.evaluate.synthetic_mc import train_tokenizer

    root = tmp_path_factory.mktemp("models")
    tokenizer = train_tokenizer(300, add_bos=False)  # Qwen2-style: no bos
    parents = [_save_tokenizer_and_model(root / name, tokenizer, seed) for seed, name in enumerate(["math", "code"])]
    config = MergeConfiguration.model_validate({
        "merge_method": "linear", "dtype": "float32",
        "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in parents]})
    run_merge(config, str(root / "merged"), options=MergeOptions(copy_tokenizer=True, lazy_unpickle=False, quiet=True))
    return {"merged": root / "merged", "math": parents[0], "code": parents[1], "root": root}


@pytest.fixture
def user_dir(tmp_path) -> Path:
    """The user's empty working directory (no thresholds.toml, no pytest.ini) and a private cache."""
    d = tmp_path / "empty"
    (d / "cache").mkdir(parents=True)
    return d


def run_gate(user_dir: Path, m: dict, *extra) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "pytest", f"--model={m['merged']}", "--parents", str(m["math"]), str(m["code"]),
            "--rootdir", ".", "-p", "no:cacheprovider", "--junitxml=junit.xml", "-o", "junit_family=xunit1", *extra]
    env = {**os.environ, "MERGEQA_CACHE_DIR": str(user_dir / "cache")}
    return subprocess.run(args, cwd=user_dir, env=env, text=True, capture_output=True, timeout=900)


def junit_cases(path: Path) -> dict[str, dict]:
    """{test name: {"outcome": passed|failure|error|skipped, "message": ..., "properties": {...}}}."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kind = next((k for k in ("failure", "error", "skipped") if case.find(k) is not None), "passed")
        node = case.find(kind) if kind != "passed" else None
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        out[case.get("name")] = {"outcome": kind, "message": (node.get("message") or "") if node is not None else "",
                                 "properties": props}
    return out


def events(cache: Path) -> list[dict]:
    path = cache / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_run_without_thresholds_file_gates_what_fits_any_model(tiny_merge, user_dir):
    proc = run_gate(user_dir, tiny_merge, "--report-dir", "report")
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: random weights are not coherent
    cases = junit_cases(user_dir / "junit.xml")
    ran = {name for name, c in cases.items() if c["outcome"] in ("passed", "failure")}
    for test in ("test_loads[merged]", "test_config_matches_parents[merged]", "test_lint[merged-finite]",
                 "test_generates[merged]", "test_coherent[merged]", "test_no_degenerate_repetition[merged]"):
        assert test in ran, (test, cases.get(test))
    assert {f"test_probing[{p}-merged]" for p in ("agreement", "verb_tense", "part_of_speech")} <= set(cases)
    # The merge guide's prompts, not the family's; the chat one is skipped: no chat template.
    outputs = {k.rsplit(".", 1)[1] for k in cases["test_coherent[merged]"]["properties"] if ".output." in k}
    assert outputs == {"greeting", "capital", "about_ai"}
    assert "no chat template" in cases["test_follows_chat_instruction[merged]"]["message"]
    assert "perplexity_task" in cases["test_perplexity[merged]"]["message"]
    # Retention and regression: skipped with the one line, which the terminal shows once.
    for test in ("test_retention[merged-no-suite]", "test_no_regression[merged-no-suite]"):
        assert cases[test]["outcome"] == "skipped" and NO_SUITE in cases[test]["message"]
    line = next(ln for ln in proc.stdout.splitlines() if NO_SUITE in ln)
    assert proc.stdout.count(NO_SUITE) == 1
    assert "code, leaderboard_v1, leaderboard_v2" in line and "mergeqa init" in line
    # Judge, A/B and conflict would run on the family's questions and pairs: not run, each saying
    # how to enable it, and the report's checklist shows them as "not run", never "pass".
    for test, enable in (("test_judged_score[merged]", "--questions"), ("test_ab_win_rate[merged]", "--questions"),
                         ("test_conflict_rate[merged]", "--conflict-pairs"),
                         ("test_conflict_vs_parents[merged]", "--conflict-pairs"),
                         ("test_agrees_with_skill_owner[merged]", "--conflict-pairs")):
        assert cases[test]["outcome"] == "skipped", (test, cases[test])
        assert "not the embedded family" in cases[test]["message"] and enable in cases[test]["message"]
    html = (user_dir / "report" / "report.html").read_text()
    for item in ("Judged conversation score &gt;= avg(parents)", "A/B win rate &gt;= 45 %"):
        row = html[html.index(item):].split("</tr>", 1)[0]
        assert "not run" in row and ">pass<" not in row, row
    # Nothing of the family: not built, not evaluated on.
    log = events(user_dir / "cache")
    assert log and not [e for e in log if e["event"] == "family_built"], log
    assert not [e for e in log if e["event"] == "evaluated"]
    assert not list((user_dir / "cache").glob("family-*"))


TINY_TASK = """task: capital_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


@pytest.fixture
def user_tasks(user_dir) -> Path:
    """The user's own lm-eval task: 40 multiple-choice items in a local JSONL file."""
    tasks = user_dir / "tasks"
    tasks.mkdir()
    rows = [{"question": f"Q{i}: the capital of country {i} is", "choices": [" Paris", " Rome", " Oslo"],
             "label": i % 3} for i in range(40)]
    (tasks / "capital_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks / "capital_mc.yaml").write_text(TINY_TASK.format(data=tasks / "capital_mc.jsonl"))
    return tasks


def test_init_writes_the_chat_prompt_only_with_a_chat_template(tiny_merge, tmp_path, monkeypatch, capsys):
    import shutil

    from mergeqa.cli.main import main

    chat = tmp_path / "chat-merged"
    shutil.copytree(tiny_merge["merged"], chat)
    config = json.loads((chat / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (chat / "tokenizer_config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty HF cache: no benchmark is here
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    argv = ["init", "--model", str(chat), "--parents", str(tiny_merge["math"]), str(tiny_merge["code"])]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    text = (tmp_path / "thresholds.toml").read_text()
    assert 'chat_capital = { prompt = "What is the capital of France?", chat = true, expect = ["Paris"] }' in text
    assert 'suite = "leaderboard_v1"  # no leaderboard suite has its datasets on this machine' in text
    assert "#   arc_challenge: allenai/ai2_arc (ARC-Challenge): NOT available offline" in text
    assert "#   mmlu: 0 of 57 subtasks available offline (cais/mmlu: 0 of 57)" in text
    assert "a run stops at the first missing one" in printed
    assert main([*argv, "--suite", "code", "--force"]) == 0
    assert "#   mergeqa_humaneval: custom loader: available" in (tmp_path / "thresholds.toml").read_text()
    assert main(["init", "--model", str(chat), "--parents", str(tiny_merge["math"]), "--suite", "leaderbord_v1",
                 "--force"]) == 4
    assert "Did you mean 'leaderboard_v1'?" in capsys.readouterr().err


def test_init_then_the_run_with_its_file_then_the_plan(tiny_merge, user_dir, user_tasks, monkeypatch, capsys):
    """`mergeqa init` writes a commented file (never over an existing one); the run with it measures
    retention on the chosen suite; `mergeqa plan` then shows hashes, the cache, power and work."""
    from mergeqa.cli.main import main
    from mergeqa.decision.thresholds import load_thresholds
    from mergeqa.models.refs import content_hash
    from mergeqa.stats.power import minimum_detectable_effect

    monkeypatch.chdir(user_dir)
    monkeypatch.setenv("HF_HOME", str(user_dir / "hf"))  # an empty HF cache: the same file on every machine
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    argv = ["init", "--model", str(tiny_merge["merged"]), "--parents", str(tiny_merge["math"]),
            str(tiny_merge["code"]), "--tasks", "capital_mc", "--tasks-path", str(user_tasks)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    text = (user_dir / "thresholds.toml").read_text()
    assert "1 of 1 dataset(s) available offline" in printed
    t = load_thresholds(user_dir / "thresholds.toml", embedded=False)
    assert t.get("retention", "suite") == "custom" and t.suite("custom")["tasks"] == ["capital_mc"]
    assert t.get("retention", "capabilities") == {}  # placeholders only, commented:
    assert '# "TASK-FOR-math" = "math"' in text and '# "TASK-FOR-code" = "code"' in text
    assert set(t.get("sanity", "prompts")) == {"greeting", "capital", "about_ai"}  # no chat template
    assert "no chat prompt" in text
    assert "#   capital_mc: json: " in text and ": available (local files)" in text
    assert f"--tasks-path={user_tasks}" in text  # the command to run it with
    # judge and conflict sections written commented: uncommented, they are what a user enables
    enable = [ln[2:] for ln in text.splitlines() if ln.startswith("# [judge]") or ln.startswith("# [conflict]")
              or ln.startswith(("# questions =", "# judge =", "# pairs =", "# owners ="))]
    assert len(enable) == 6, enable
    import tomllib

    enabled = tomllib.loads("\n".join(enable).replace("SKILL", "arithmetic"))
    assert enabled["judge"]["questions"] == "question.jsonl" and enabled["conflict"]["owners"] == {"arithmetic": "math"}
    assert main(argv) == 4
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (user_dir / "thresholds.toml").read_text() == text
    assert main([*argv, "--force"]) == 0

    proc = run_gate(user_dir, tiny_merge, f"--tasks-path={user_tasks}")
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = junit_cases(user_dir / "junit.xml")
    assert {"test_retention[merged-capital_mc]", "test_no_regression[merged-capital_mc]"} <= set(cases), sorted(cases)
    assert NO_SUITE not in proc.stdout and "comparison" in proc.stdout
    assert cases["test_judged_score[merged]"]["outcome"] == "skipped"  # its section is still commented
    assert "--questions" in cases["test_judged_score[merged]"]["message"]
    log = events(user_dir / "cache")
    evaluated = {(e["model"], e["task"]) for e in log if e["event"] == "evaluated"}
    assert evaluated == {("merged", "capital_mc"), ("math", "capital_mc"), ("code", "capital_mc")}
    assert not [e for e in log if e["event"] == "family_built"]

    monkeypatch.setenv("MERGEQA_CACHE_DIR", str(user_dir / "cache"))
    capsys.readouterr()
    assert main(["plan", "--model", str(tiny_merge["merged"]), "--parents", str(tiny_merge["math"]),
                 str(tiny_merge["code"]), "--tasks-path", str(user_tasks)]) == 0
    out = capsys.readouterr().out
    merged_line = next(ln for ln in out.splitlines() if ln.strip().startswith("merged"))
    assert f"sha256 {content_hash(tiny_merge['merged'])[:12]}" in merged_line
    assert "results cached: 1/1 tasks, 7/7 probing sets" in merged_line  # the run above filled the cache
    mde = minimum_detectable_effect(40, 0.2)
    assert f"capital_mc: n=40 items; smallest drop detectable: {100 * mde:.1f} points" in out
    assert "work left: about" in out and "(evaluation 0, probing 0, sanity" in out
    print(printed, text, proc.stdout[-2500:], out, sep="\n")  # with -s: what the user sees


def test_plan_of_the_embedded_default_builds_nothing(tmp_path, monkeypatch, capsys):
    from mergeqa.cli.main import main

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    assert main(["plan", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "mergeqa plan: the embedded default" in out
    assert "family: shipped, not in this cache yet" in out and "ties" in out and "not built yet" in out
    from mergeqa.family import load_recipe
    from mergeqa.stats.power import minimum_detectable_effect

    n = load_recipe()["eval_items"]
    assert (f"family_arithmetic: n={n} items (the family recipe's eval_items; written with the family's cache entry); "
            f"smallest drop detectable: {100 * minimum_detectable_effect(n, 0.2):.1f} points") in out
    from mergeqa.decision.blocking import blocking_rate

    blocked = blocking_rate(n, 0.05 * 0.8, discordance=0.2)  # default min_retention 0.95, owner at 0.8
    assert f"blocking rate {blocked:.2f} (a merge exactly as good as its owner is blocked when not shown" in out
    assert "alpha bounds a false fail; with inconclusive = fail the blocking rate" in out
    whole = 1 - (1 - blocked) ** 3  # three tasks in the family suite
    assert f"blocked by one of these 3 retention comparisons about {whole:.2f} of the time" in out
    from mergeqa.stats.exact_paired import items_to_pass

    assert "judge A/B (40 questions, both orders, a tie half a win)" in out
    assert f"needs about {items_to_pass(0.0, 1.0, -0.1)} questions with no ties" in out
    assert "even a copy of a parent needs 131 test items (alpha / 2 against each parent)" in out
    assert not list(cache.glob("family-*")) and not events(cache)


@pytest.mark.slow
def test_a_dry_run_finds_the_shipped_family_once_its_cache_entry_is_written(family, cache_dir):
    from mergeqa.models.session import GateSession

    gate = GateSession.from_options(models=[], parents=None, base=None, merge_configs=[], cache_dir=cache_dir,
                                    device="cpu", dtype="float32", seed=0)
    assert gate.built_family() is not None and gate.built_family().root == family.root
