"""Progress lines (mergeqa.core.progress, mergeqa.pytest_plugin.progress): what they say, and that
they reach the person watching: through pytest's terminal (not into a test's captured output),
on stderr from an xdist worker, silenced by -q, from `mergeqa gate`, and while a family trains.

Cost: the pytester runs take a few seconds each (the xdist one about ten); the gate run merges the
shipped family and evaluates one merge on 10 items (no cache shared), and the training lines come
from a reduced family (a 1-layer model, 20 + 10 + 10 steps): about 45 s on a loaded 2-core machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mergeqa.core import progress

# A reduced recipe: the default's shape (the same parents, so the default merges apply), a tiny
# model trained for a few steps. Its family is useless for measuring, and quick to build.
SMALL_RECIPE = """
seed = 0
vocab_size = 512
grammar_sentences = 400
eval_items = 40

[arch]
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 2
max_position_embeddings = 128

[base]
steps = 20
batch_size = 8
lr = 4e-3
decoy_share = 0.25
one_digit_copies = 1
chat_every = 2
mixture = { grammar = 0.15, arithmetic = 0.5, lists = 0.35 }

[parents.arithmetic]
skill = "arithmetic"
steps = 10
batch_size = 8
lr = 5e-5
token_lr = 2e-2
replay = 0.1
chat_every = 3

[parents.lists]
skill = "lists"
steps = 10
batch_size = 8
lr = 5e-5
token_lr = 2e-2
replay = 0.1
chat_every = 3
"""


def test_durations_read_as_a_person_needs_them():
    assert [progress.duration(s) for s in (0.04, 3.21, 41.4, 119.6, 185, 3725)] == [
        "0.0 s", "3.2 s", "41 s", "120 s", "3 min 5 s", "62 min 5 s"]


def test_stages_count_and_time_a_long_step():
    lines: list[str] = []
    stages = progress.Stages("family", 3, report=lines.append)
    for message in ("training base", "step 4/20 loss 6.052", "fine-tuning arithmetic", "step 2/10 loss 4.8",
                    "fine-tuning lists"):
        stages(message)
    stages.done("built /c/family-x")
    pattern = [r"family: training base \(1/3\), \d\.\d s", r"family: stage 1/3, step 4/20 loss 6\.052, \d\.\d s",
               r"family: fine-tuning arithmetic \(2/3\), \d\.\d s", r"family: stage 2/3, step 2/10 loss 4\.8, \d\.\d s",
               r"family: fine-tuning lists \(3/3\), \d\.\d s", r"family: built /c/family-x in \d\.\d s"]
    assert len(lines) == len(pattern)
    for line, expected in zip(lines, pattern):
        assert re.fullmatch(expected, line), line


def test_without_a_sink_nothing_is_printed_and_the_newest_sink_wins(capsys):
    progress.say("nobody listens")
    first, second = [], []
    undo_first = progress.install(first.append)
    undo_second = progress.install(second.append)
    progress.say("one")
    undo_second()
    progress.say("two")
    undo_first()
    progress.say("three")
    assert (first, second) == (["two"], ["one"])
    assert capsys.readouterr() == ("", "")


TELLING_TEST = """
from mergeqa.core.progress import say

def test_long_step():
    for i in (1, 2):
        say(f"step under test ({i}/2), {i}.0 s")
    print("captured print")
"""


def test_the_plugin_writes_the_lines_through_the_terminal_between_the_dots(pytester):
    """A passing test's output stays captured; the progress lines do not: they are on the terminal
    as they happen, each once, prefixed "mergeqa: ". `-q` silences them."""
    pytester.makepyfile(test_telling=TELLING_TEST)
    shown = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    shown.assert_outcomes(passed=1)
    out = shown.stdout.str()
    assert "mergeqa: step under test (1/2), 1.0 s" in shown.outlines
    assert "mergeqa: step under test (2/2), 2.0 s" in shown.outlines
    assert out.count("step under test") == 2 and "captured print" not in out
    quiet = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    quiet.assert_outcomes(passed=1)
    assert "step under test" not in quiet.stdout.str() + quiet.stderr.str()


def test_an_xdist_worker_writes_its_lines_to_stderr_naming_itself(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_telling=TELLING_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=1)
    told = [line for line in result.errlines if "step under test" in line]
    assert len(told) == 2, result.errlines
    assert all(re.fullmatch(r"\[gw[01]\] mergeqa: step under test \([12]/2\), [12]\.0 s", line) for line in told)


def test_mergeqa_gate_on_a_fresh_cache_trains_nothing_and_tells_the_merge_and_the_evaluations(tmp_path):
    """`mergeqa gate` with an empty cache: the family ships with mergeqa, so nothing is trained and
    no family line is told; the merge and each evaluation are, on stdout, as they happen."""
    script = "import sys; from mergeqa.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", script, "gate", "--out", str(tmp_path / "out"),
         "--cache", str(tmp_path / "cache"), "-p", "no:cacheprovider", "--eval-limit", "10",
         "-k", "ties and not dare and (test_loads or test_retention)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("mergeqa: ")]
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: retention on 10 items
    told = "\n".join(lines)
    assert not [line for line in lines if line.startswith("mergeqa: family")], told
    assert "mergeqa: merge ties: building with mergekit (ties, 3 models, cpu)..." in lines
    assert re.search(r"^mergeqa: merge ties built in [\d.]+ s$", told, re.MULTILINE), told
    for model in ("ties", "arithmetic", "lists", "base"):
        assert (f"mergeqa: evaluating {model} on family_arithmetic (10 items), family_lists (10 items), "
                f"family_grammar (10 items)...") in lines, told
        assert re.search(rf"^mergeqa: evaluated {model} in [\d.]+ s$", told, re.MULTILINE), told
    order = [lines.index(next(line for line in lines if line.startswith(p)))
             for p in ("mergeqa: merge ties built", "mergeqa: evaluated ties")]
    assert order == sorted(order)


def test_training_the_family_from_a_recipe_is_told_stage_by_stage(tmp_path):
    """`mergeqa family --rebuild` trains the recipe (build_family_reporting): a line when training
    begins, one per stage with its count and the time since it began, steps within a stage, one when
    it is done; a family the cache holds is returned without a line. (The reduced recipe stands in
    for the default one, whose build takes 4 minutes: the code path is the same.)"""
    from mergeqa.models.session import build_family_reporting

    recipe = tmp_path / "small.toml"
    recipe.write_text(SMALL_RECIPE)
    told: list[str] = []
    undo = progress.install(told.append)
    try:
        family = build_family_reporting(tmp_path / "cache", recipe)
        assert build_family_reporting(tmp_path / "cache", recipe) == family
    finally:
        undo()
    text = "\n".join(told)
    assert told[0] == (f"family: not in {tmp_path / 'cache'} yet: training it from the recipe (the base, then "
                       "arithmetic and lists)")
    stages = re.findall(r"^family: .* \(([123])/3\), ([\d.]+) s$", text, re.MULTILINE)
    assert [n for n, _ in stages] == ["1", "2", "3"], text
    assert [float(t) for _, t in stages] == sorted(float(t) for _, t in stages)  # time since the build began
    assert re.search(r"^family: stage 1/3, step 20/20 loss [\d.]+, [\d.]+ s$", text, re.MULTILINE), text
    assert re.fullmatch(rf"family: built {re.escape(str(family.root))} in [\d.]+ s", told[-1]), text
