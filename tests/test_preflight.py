"""What a user can misspell stops the run at configure time (mergeqa.pytest_plugin.preflight):
exit code 4, one stderr line naming the option or the file, before any model is loaded.

Each case is the gate as a user runs it (`pytest --gate ...` in a subprocess) on an empty cache:
had the check missed, the run would go on to build the family there. A task name that is neither
the family's nor in --tasks-path is looked up in lm-eval's own index (~10 s of YAML parsing, which
the engine reuses later in the same process): that case gets a wider bound than the rest (~2-3 s).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

FAST, LM_EVAL_INDEX = 20, 60  # seconds to the error
QUESTION = '{"question_id": 1, "category": "math", "turns": ["23 + 14 =", "37 + 5 ="]}\n'
PAIR = '{"a": "12 + 7 =", "b": "7 + 12 =", "consistent": true, "kind": "commutative"}\n'

# id -> (files to write, arguments, what the one line says, the option or file it names, bound)
CASES = {
    "capability_not_in_suite": (
        {"t.toml": '[retention.capabilities]\nmy_listz = "lists"\nfamily_arithmetic = "arithmetic"\n'},
        ["--thresholds", "t.toml"],
        ("[retention.capabilities] my_listz is not a task of the suite 'family' (the entry is ignored and the "
         "task you meant is measured against the parents' mean, not its owner). Did you mean 'family_lists'?"),
        "t.toml", FAST),
    "capability_without_a_suite": (
        {"t.toml": '[retention]\nsuite = ""\n[retention.capabilities]\nfamily_lists = "lists"\n'},
        ["--thresholds", "t.toml"], "[retention.capabilities] family_lists: no [retention] suite is set",
        "t.toml", FAST),
    "metric_not_in_suite": (
        {"t.toml": '[retention.metrics]\nfamily_arithmetc = "acc"\n'}, ["--thresholds", "t.toml"],
        "[retention.metrics] family_arithmetc is not a task of the suite 'family'", "t.toml", FAST),
    "questions_option_missing": (
        {}, ["--questions", "nope.jsonl"], "no such file; name an MT-Bench question.jsonl",
        "--questions nope.jsonl", FAST),
    "questions_key_relative_to_the_file": (
        {"q.jsonl": QUESTION, "conf/t.toml": '[judge]\nquestions = "q.jsonl"\n'},  # q.jsonl is next to cwd, not conf/
        ["--thresholds", "conf/t.toml"],
        ("[judge] questions = 'q.jsonl' (conf/q.jsonl: a relative path is read from the thresholds file's "
         "directory): no such file"), "conf/t.toml", FAST),
    "questions_malformed": (
        {"q.jsonl": QUESTION + "not json\n"}, ["--questions", "q.jsonl"], "not JSON", "q.jsonl:2", FAST),
    "questions_a_directory": (
        {"qdir/x": ""}, ["--questions", "qdir"], "a directory, not a file", "--questions qdir", FAST),
    "pairs_option_missing": (
        {}, ["--conflict-pairs", "nope.jsonl"], "no such file; name a JSONL file of consistency pairs",
        "--conflict-pairs nope.jsonl", FAST),
    "pairs_key_missing": (
        {"p.jsonl": PAIR, "conf/t.toml": '[conflict]\npairs = "p.jsonl"\n'}, ["--thresholds", "conf/t.toml"],
        "[conflict] pairs = 'p.jsonl' (conf/p.jsonl", "conf/t.toml", FAST),
    "judge_url_without_model": (
        {}, ["--judge-url", "http://127.0.0.1:9/v1"], "name the model the endpoint serves with --judge-model NAME",
        "--judge-url http://127.0.0.1:9/v1", FAST),
    "judge_url_key_without_model": (
        {"t.toml": '[judge]\nurl = "http://127.0.0.1:9/v1"\n'}, ["--thresholds", "t.toml"],
        "[judge] url = 'http://127.0.0.1:9/v1': name the model the endpoint serves", "t.toml", FAST),
    "judge_model_without_url": (
        {}, ["--judge-model", "m"], "pass --judge-url URL too", "--judge-model m", FAST),
    "judge_and_judge_url": (
        {}, ["--judge", "reference", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"],
        "--judge and --judge-url both name a judge", "--judge", FAST),
    "judge_directory_missing": (
        {}, ["--judge", "nowhere"], "no such directory", "--judge nowhere", FAST),
    "eval_limit_zero": ({}, ["--eval-limit", "0"], "must be at least 1", "--eval-limit 0", FAST),
    "eval_limit_negative": ({}, ["--eval-limit", "-5"], "must be at least 1", "--eval-limit -5", FAST),
    "perplexity_task_not_rolling": (
        {"t.toml": '[sanity]\nperplexity_task = "family_grammar"\n'}, ["--thresholds", "t.toml"],
        "not a perplexity (loglikelihood_rolling) task of the family; use family_grammar_ppl", "t.toml", FAST),
    "perplexity_task_misspelt_family": (
        {"t.toml": '[sanity]\nperplexity_task = "family_grammar_pll"\n'}, ["--thresholds", "t.toml"],
        "the embedded family has no such task. Did you mean 'family_grammar_ppl'?", "t.toml", FAST),
    "perplexity_task_unknown": (
        {"t.toml": '[sanity]\nperplexity_task = "wikitxt"\n'}, ["--thresholds", "t.toml"],
        "lm-eval has no such task (add its YAML directory with --tasks-path). Did you mean 'wikitext'?",
        "t.toml", LM_EVAL_INDEX),
}


def _no_data_case(tmp_path: Path):
    """A task of our own whose data file is not on this machine (what a wikitext without its
    cache looks like, without depending on this machine's Hugging Face cache)."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "my_ppl.yaml").write_text(
        "task: my_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: /nonexistent/held_out.jsonl\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n")
    return ({"t.toml": '[sanity]\nperplexity_task = "my_ppl"\n'}, ["--thresholds", "t.toml", "--tasks-path", str(tasks)],
            "its data is not on this machine (my_ppl: json: /nonexistent/held_out.jsonl: NOT available offline",
            "t.toml", FAST)  # found in --tasks-path: lm-eval's own index is not needed


@pytest.mark.parametrize("case", [*CASES, "perplexity_task_without_data"])
def test_a_misspelt_input_stops_the_run_in_one_line_before_any_model(tmp_path, case):
    files, args, says, names, bound = _no_data_case(tmp_path) if case not in CASES else CASES[case]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    cache = tmp_path / "cache"  # empty: a run that got past configure would start building the family here
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "--gate", "--mergeqa-cache", str(cache),
                           "-p", "no:cacheprovider", *args], cwd=tmp_path, text=True, capture_output=True,
                          timeout=300, check=False)
    took = time.monotonic() - start
    print(f"{case}: exit {proc.returncode} after {took:.1f} s: {proc.stderr.strip()}")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 4 and len(err) == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert says in err[0] and names in err[0] and "Traceback" not in proc.stdout + proc.stderr, err[0]
    assert not cache.exists() or not any(cache.iterdir()), "something was built or cached before the error"
    assert took < bound, f"{took:.1f} s to the error"


def test_the_family_perplexity_task_named_here_is_the_familys_rolling_one():
    """preflight names it without importing a change into mergeqa/family (the family's cache key)."""
    from mergeqa.family import tasks
    from mergeqa.pytest_plugin.preflight import FAMILY_PERPLEXITY_TASKS

    assert FAMILY_PERPLEXITY_TASKS == ("family_grammar_ppl",) and "family_grammar_ppl" in tasks.ALL_TASKS
    assert tasks._PPL.startswith("task: family_grammar_ppl\n") and "output_type: loglikelihood_rolling" in tasks._PPL
    others = (tasks._MC, tasks._GEN, tasks._PAIRS)
    assert not any("loglikelihood_rolling" in t for t in others)


def test_the_defaults_and_the_repository_thresholds_pass_the_preflight(tmp_path):
    """Nothing the built-in defaults or thresholds.toml name is refused (the family not built:
    its perplexity task is taken as the build writes it)."""
    from types import SimpleNamespace

    from mergeqa.decision.thresholds import load_thresholds
    from mergeqa.models.session import GateSession
    from mergeqa.pytest_plugin.preflight import preflight

    repo = Path(__file__).resolve().parent.parent
    opt = SimpleNamespace(eval_limit=1, questions=None, judge=None, judge_url=None, judge_model=None,
                          conflict_pairs=None, tasks_path=[])
    for embedded, path in ((True, None), (True, repo / "thresholds.toml"), (False, None)):
        gate = GateSession(cache_dir=tmp_path, embedded=embedded)
        preflight(SimpleNamespace(option=opt), load_thresholds(path, embedded=embedded), gate)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["capability_not_in_suite", "eval_limit_zero", "perplexity_task_misspelt_family",
                                  "judge_url_key_without_model", "pairs_key_missing"])
def test_mergeqa_plan_refuses_what_the_gate_refuses(tmp_path, monkeypatch, capsys, case):
    """`mergeqa plan` runs the same preflight: one line, exit 4 (it printed a plan for a run that
    would stop, or a traceback for --eval-limit 0)."""
    from mergeqa.cli.main import main

    files, args, says, names, _ = CASES[case]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "--cache", str(tmp_path / "cache"), *args]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and err[0].startswith("mergeqa plan: "), err
