"""Greedy answer generation on CPU for one model directory: load time, turns/s and new tokens/s for
the embedded judge questions (40 x 2 turns) and conflict prompts (118), then the cache hit.

    .venv/bin/python bench/answer_speed.py MODEL_DIR        # e.g. the family's base
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    from mergeqa.conflict.consistency import default_pairs_path, prompts_of, read_pairs
    from mergeqa.evaluate.generation import GenerationSettings, generate
    from mergeqa.judge import default_questions_path, read_questions
    from mergeqa.models.refs import ModelRef, validate_model_dir

    path = validate_model_dir(sys.argv[1])
    questions = [list(q.turns) for q in read_questions(default_questions_path())]
    prompts = [[p] for p in prompts_of(read_pairs(default_pairs_path()))]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ref = ModelRef(path.name, path, "model")
        ref.model("cpu", "float32")
        print(f"{path}: model load {time.perf_counter() - started:.2f} s (1 torch thread while generating)")
        for name, conversations, tokens in (("judge questions (40 x 2 turns)", questions, 24),
                                            ("conflict prompts (118)", prompts, 16)):
            settings = GenerationSettings(max_new_tokens=tokens)
            t = time.perf_counter()
            first = generate(ref, conversations, settings, Path(tmp))
            seconds = time.perf_counter() - t
            t = time.perf_counter()
            again = generate(ModelRef(path.name, path, "model"), conversations, settings, Path(tmp))
            hit = time.perf_counter() - t
            turns = sum(len(c) for c in first.turns)
            print(f"{name}: {seconds:.2f} s, {turns / seconds:.1f} turns/s, {first.new_tokens / seconds:.0f} new "
                  f"tokens/s; second run {1000 * hit:.1f} ms, cached={again.cached}, identical={again.turns == first.turns}")


if __name__ == "__main__":
    main()
