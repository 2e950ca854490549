"""Held-out evaluation sets of the tiny family, written as lm-eval task YAML + JSONL.

Each skill gets a multiple-choice task and a generation variant; the grammar gets a two-choice
agreement task, BLiMP-style minimal pairs and a perplexity task. They load offline through
`TaskManager(include_path=tasks_dir, include_defaults=False)`.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from .grammar import generate_sentence
from .skills import Item

MC_TASKS = ("family_arithmetic", "family_lists", "family_grammar")
GEN_TASKS = ("family_arithmetic_gen", "family_lists_gen")
ALL_TASKS = MC_TASKS + GEN_TASKS + ("family_grammar_pairs", "family_grammar_ppl")
SKILL_TASKS = {"arithmetic": "family_arithmetic", "lists": "family_lists"}

_MC = """task: {name}
tag: [mergeqa_family]
dataset_path: json
custom_dataset: !function jsonl_dataset.load
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
_GEN = """task: {name}
tag: [mergeqa_family_gen]
dataset_path: json
custom_dataset: !function jsonl_dataset.load
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 24
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore: ["^\\\\s+", "\\\\s+$"]
metadata:
  version: 1.0
"""
_PAIRS = """task: family_grammar_pairs
dataset_path: json
custom_dataset: !function jsonl_dataset.load
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: ""
doc_to_choice: "{{{{[sentence_good, sentence_bad]}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""
_PPL = """task: family_grammar_ppl
dataset_path: json
custom_dataset: !function jsonl_dataset.load
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""
_GROUP = """group: family
task: [family_arithmetic, family_lists, family_grammar]
aggregate_metric_list:
  - metric: acc
    weight_by_size: false
metadata:
  version: 1.0
"""


def _mc_row(item: Item, rng: random.Random) -> dict:
    choices = [item.answer, *item.distractors]
    rng.shuffle(choices)
    return {"prompt": item.prompt, "choices": choices, "label": choices.index(item.answer),
            "answer": item.answer}


def grammar_sets(seed: int, n: int, exclude: set[str]) -> tuple[list[dict], list[dict], list[dict]]:
    """(agreement MC rows, minimal pairs, perplexity rows): present tense, third person, unseen."""
    rng = random.Random(seed)
    mc, pairs, ppl = [], [], []
    while len(mc) < n:
        s = generate_sentence(rng, tense="present", pronoun_rate=0.0, attractor_rate=0.5)
        if s.text in exclude:
            continue
        good, bad = s.words[s.verb_index], s.wrong_number_verb()
        prefix = " ".join(s.words[: s.verb_index])
        rest = " ".join(s.words[s.verb_index + 1:])
        tail = (" " + rest if rest else "") + " ."
        choices = [f" {good}{tail}", f" {bad}{tail}"]
        rng.shuffle(choices)
        mc.append({"prompt": prefix, "choices": choices, "label": choices.index(f" {good}{tail}"),
                   "attractor": s.attractor_number is not None})
        pairs.append({"sentence_good": s.text, "sentence_bad": s.with_verb(bad).text})
    while len(ppl) < n // 2:
        text = " ".join(generate_sentence(rng).text for _ in range(4))
        ppl.append({"text": text})
    return mc, pairs, ppl


def write_tasks(out: Path, *, skills: dict[str, list[Item]], grammar: tuple[list, list, list],
                seed: int) -> None:
    """Write every task's JSONL and YAML under `out`, with the loader they name.

    The YAML names its data relative to itself (`jsonl_dataset.load` resolves it at load time), so
    the directory can move: a family copied elsewhere evaluates the same.
    """
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("jsonl_dataset.py"), out / "jsonl_dataset.py")
    rng = random.Random(seed)

    def dump(name: str, rows: list[dict], template: str, **fmt) -> None:
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / f"{name}.yaml").write_text(template.format(name=name, data=json.dumps(f"{name}.jsonl"), **fmt))

    for skill, items in skills.items():
        rows = [_mc_row(item, rng) for item in items]
        dump(SKILL_TASKS[skill], rows, _MC)
        dump(SKILL_TASKS[skill] + "_gen", rows, _GEN)
    mc, pairs, ppl = grammar
    dump("family_grammar", mc, _MC)
    dump("family_grammar_pairs", pairs, _PAIRS)
    dump("family_grammar_ppl", ppl, _PPL)
    (out / "family.yaml").write_text(_GROUP)
