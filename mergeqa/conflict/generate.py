"""Consistency pairs derived from an lm-eval task the user already has locally, so a model that is
not the embedded family gets a conflict rate without hand-written pairs:

    mergeqa pairs --task my_mc_task [--tasks-path DIR] [--limit 200] --out pairs.jsonl

Relations, each from the task's own documents (lm-eval's doc_to_text / doc_to_choice /
doc_to_target, so the prompts are what lm-eval would ask):

- `rephrased` (must agree): the question as the task asks it, and under a fixed second template;
- `choices_permuted` (must agree, multiple choice): the question with its options listed, and with
  the options in reverse order; the answer is the option's text, so the order must not change it;
- `operands_swapped` (must agree): a question with `a + b` or `a * b` in it, and with `b + a`;
- `different_question` (must differ): two questions whose correct answers differ.

Every pair's `skill` is the task's name: `[conflict] owners = { TASK = "parent" }` names the
parent whose answers the merge should follow. The output is JSONL in the format of
`--conflict-pairs` (mergeqa.conflict.consistency.read_pairs).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError

REPHRASE = "Answer the following question.\n{question}"
OPERANDS = re.compile(r"(?<![\d.])(\d+)\s*([+*×])\s*(\d+)(?![\d.])")


def _options(question: str, choices: list[str]) -> str:
    return f"{question}\nOptions: {'; '.join(c.strip() for c in choices)}\nAnswer with the option's text:"


def _swap_operands(text: str) -> str | None:
    found = OPERANDS.search(text)
    if found is None or found.group(1) == found.group(3):
        return None
    a, op, b = found.groups()
    return text[:found.start()] + f"{b} {op} {a}" + text[found.end():]


def pairs_from_docs(task: str, docs: list[dict], *, limit: int = 200, seed: int = 0) -> list[dict]:
    """Pairs from `docs`: each {"text": str, "choices": list[str] | None, "target": str}, as
    `task_docs` gives them. At most `limit` pairs per relation."""
    rng = random.Random(seed)
    out: list[dict] = []

    def add(a: str, b: str, consistent: bool, kind: str) -> None:
        out.append({"a": a, "b": b, "consistent": consistent, "kind": kind, "skill": task})

    usable = [d for d in docs if d["text"].strip()]
    for d in usable[:limit]:
        add(d["text"], REPHRASE.format(question=d["text"]), True, "rephrased")
    mc = [d for d in usable if d["choices"] and len(d["choices"]) >= 2]
    for d in mc[:limit]:
        add(_options(d["text"], d["choices"]), _options(d["text"], list(reversed(d["choices"]))), True,
            "choices_permuted")
    swapped = [(d["text"], _swap_operands(d["text"])) for d in usable]
    for a, b in [(a, b) for a, b in swapped if b is not None][:limit]:
        add(a, b, True, "operands_swapped")
    shuffled = list(usable)
    rng.shuffle(shuffled)
    differing = [(x, y) for x, y in zip(shuffled[::2], shuffled[1::2]) if x["target"].strip() != y["target"].strip()]
    for x, y in differing[:limit]:
        add(x["text"], y["text"], False, "different_question")
    return out


def task_docs(task: str, task_paths: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """The task's evaluation documents through lm-eval (local data only): question text, the
    choices of a multiple-choice task, the correct answer's text."""
    from mergeqa.core.state import BUNDLED_TASKS
    from mergeqa.evaluate.engine import EvalSettings, load_tasks

    for p in task_paths:
        if not Path(p).is_dir():
            raise MergeQAUsageError(f"--tasks-path {p}: no such directory of lm-eval task YAML")
    settings = EvalSettings(cache_dir=Path("."), task_paths=(str(BUNDLED_TASKS), *map(str, task_paths)))
    leaves, _ = load_tasks([task], settings)
    out = []
    for leaf in leaves.values():
        multiple_choice = leaf.OUTPUT_TYPE == "multiple_choice"
        for doc in leaf.eval_docs:
            text = leaf.doc_to_text(doc)
            choices = list(leaf.doc_to_choice(doc)) if multiple_choice else None
            target = leaf.doc_to_target(doc)
            if choices is not None and isinstance(target, int) and 0 <= target < len(choices):
                target = choices[target]
            elif isinstance(target, list):
                target = target[0] if target else ""
            out.append({"text": str(text).strip(), "choices": choices, "target": str(target)})
    if not out:
        raise MergeQAUsageError(f"lm-eval task {task!r}: no evaluation documents to derive pairs from")
    return out


def write_pairs(task: str, out: Path, *, task_paths=(), limit: int = 200, force: bool = False) -> str:
    """Write the pairs of `task` to `out` (never over an existing file without force); returns a summary."""
    from mergeqa.conflict.consistency import read_pairs

    out = Path(out)
    if out.exists() and not force:
        raise MergeQAUsageError(f"{out} already exists; pass --force to overwrite it, or --out PATH")
    pairs = pairs_from_docs(task, task_docs(task, task_paths), limit=limit)
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    read_pairs(tmp)  # what we write must read back
    tmp.replace(out)
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
    return (f"mergeqa pairs: wrote {len(pairs)} consistency pairs from {task} to {out} ("
            + ", ".join(f"{k} {n}" for k, n in kinds.items()) + f"); use them with --conflict-pairs {out} and "
            f"name the parent that owns the task: [conflict] owners = {{ {task} = \"PARENT\" }}")
