"""Greedy, batched, content-cached generation (mergeqa.evaluate.generation) on the tiny family.

Cost: a few seconds once the family is built: the arithmetic parent (0.58M parameters) answers a
dozen short prompts a few times, into a private cache.
"""

from __future__ import annotations

import json

import pytest

from mergeqa.evaluate.generation import GenerationSettings, entry_path, generate, prompts_hash, render
from mergeqa.models.refs import ModelRef

PROMPTS = [["12 + 7 ="], ["7 + 12 ="], ["23 + 14 =", "37 + 5 ="], ["sort [5 4 9] ="], ["reverse [3 1 2] ="],
           ["30 + 11 =", "41 + 2 ="]]
SETTINGS = GenerationSettings(max_new_tokens=8, batch_size=4)

pytestmark = pytest.mark.slow


@pytest.fixture
def parent(family):
    return ModelRef("arithmetic", family.parents["arithmetic"], "parent")


def test_answers_are_cached_by_content_and_read_back(parent, tmp_path):
    first = generate(parent, PROMPTS, SETTINGS, tmp_path)
    assert not first.cached and [len(t) for t in first.turns] == [1, 1, 2, 1, 1, 2]
    assert first.rendering == "template" and first.new_tokens > 0 and first.truncated == 0
    fresh = ModelRef("arithmetic", parent.path, "parent")  # a new process would see the same
    again = generate(fresh, PROMPTS, SETTINGS, tmp_path)
    assert again.cached and again.turns == first.turns
    path = entry_path(tmp_path, parent.content_hash, prompts_hash(PROMPTS), SETTINGS)
    assert json.loads(path.read_text())["turns"] == first.turns
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically
    # another prompt set or other settings are other entries; cached_only never generates
    assert generate(fresh, PROMPTS[:2], SETTINGS, tmp_path, cached_only=True) is None
    assert generate(fresh, PROMPTS, GenerationSettings(max_new_tokens=4, batch_size=4), tmp_path,
                    cached_only=True) is None


def test_batched_answers_equal_one_at_a_time(parent, tmp_path):
    batched = generate(parent, PROMPTS, SETTINGS, tmp_path)
    single = generate(parent, PROMPTS, GenerationSettings(max_new_tokens=8, batch_size=1), tmp_path)
    # left padding and its attention mask change nothing: a position or mask bug changes every
    # answer; one near-tied greedy step may differ in float32 across batch shapes, so allow one turn
    pairs = [(a, b) for x, y in zip(batched.turns, single.turns) for a, b in zip(x, y)]
    assert len(pairs) == 8 and sum(a != b for a, b in pairs) <= 1, (batched.turns, single.turns)


def test_the_second_turn_sees_the_models_own_first_answer(parent, tmp_path):
    two = generate(parent, [["23 + 14 =", "37 + 5 ="]], SETTINGS, tmp_path)
    one = generate(parent, [["23 + 14 ="]], SETTINGS, tmp_path)
    assert two.turns[0][0] == one.turns[0][0]
    tok = parent.tokenizer()
    history = [{"role": "user", "content": "23 + 14 ="}, {"role": "assistant", "content": two.turns[0][0]},
               {"role": "user", "content": "37 + 5 ="}]
    text = tok.decode(render(tok, history, "template"))
    assert text.endswith(f"<|user|> 23 + 14 =\n<|assistant|> {two.turns[0][0]}\n<|user|> 37 + 5 =\n<|assistant|>")


def test_a_corrupt_entry_is_generated_again(parent, tmp_path):
    first = generate(parent, PROMPTS[:1], SETTINGS, tmp_path)
    path = entry_path(tmp_path, parent.content_hash, prompts_hash(PROMPTS[:1]), SETTINGS)
    path.write_text("{half an entr")
    again = generate(parent, PROMPTS[:1], SETTINGS, tmp_path)
    assert not again.cached and again.turns == first.turns


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_and_counted(parent, tmp_path):
    long = " ".join(["1 + 1 ="] * 60)  # ~420 tokens; the family's context is 128
    got = generate(parent, [[long]], SETTINGS, tmp_path)
    assert got.truncated == 1 and isinstance(got.turns[0][0], str)


def test_template_required_without_one_is_a_usage_error(parent, tmp_path):
    from mergeqa.core.errors import MergeQAUsageError
    from mergeqa.evaluate.generation import _rendering

    tok = parent.tokenizer()
    saved = tok.chat_template
    try:
        tok.chat_template = None
        with pytest.raises(MergeQAUsageError, match="no chat template"):
            _rendering(tok, "template")
        assert _rendering(tok, "auto") == "plain"
    finally:
        tok.chat_template = saved


def test_settings_are_validated():
    with pytest.raises(ValueError, match="chat='chatty'"):
        GenerationSettings(chat="chatty")
    with pytest.raises(ValueError, match="must be >= 1"):
        GenerationSettings(max_new_tokens=0)
