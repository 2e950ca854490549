"""The judge's prompts, in FastChat llm_judge's format and by its rules, and the parsers of the
verdict tags they ask for: `[[rating]]` (1-10) and `[[A]]` / `[[B]]` / `[[C]]`.

A prompt set is a JSONL file in FastChat's `judge_prompts.jsonl` format (`name`, `type`,
`system_prompt`, `prompt_template`, `output_format`) with FastChat's names and placeholders:
single-v1, single-math-v1 and their -multi-turn forms; pair-v2, pair-math-v1 and theirs. The
built-in set (mergeqa/data/judge/judge_prompts.jsonl) is our own wording in that shape; `[judge]
prompts` names another, such as FastChat's own file, so that judgments compare directly with a
FastChat setup. Which prompt a turn gets follows FastChat's gen_judgment: the -math- prompts
(reference-guided) for the categories that need a reference, the -multi-turn prompts for the
second turn. Pairwise, a question is judged once per order with the prompt of its last turn
(FastChat also judges the first turn alone).

Answers are shown under neutral labels (never a model's name) and every pair is judged in both
orders. A prompt set's hash is part of every judgment's cache key and of the junit metadata.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mergeqa.core.cache import digest
from mergeqa.core.errors import MergeQAUsageError

BUILTIN = Path(__file__).resolve().parent.parent / "data" / "judge" / "judge_prompts.jsonl"
NEED_REF_CATS = frozenset({"math", "reasoning", "coding", "arena-hard-200"})  # as FastChat's common.py
# name -> the placeholders its template must accept (FastChat's)
FIELDS = {
    "single-v1": ("question", "answer"),
    "single-math-v1": ("question", "answer", "ref_answer_1"),
    "single-v1-multi-turn": ("question_1", "answer_1", "question_2", "answer_2"),
    "single-math-v1-multi-turn": ("question_1", "answer_1", "question_2", "answer_2", "ref_answer_1", "ref_answer_2"),
    "pair-v2": ("question", "answer_a", "answer_b"),
    "pair-math-v1": ("question", "answer_a", "answer_b", "ref_answer_1"),
    "pair-v2-multi-turn": ("question_1", "question_2", "answer_a_1", "answer_a_2", "answer_b_1", "answer_b_2"),
    "pair-math-v1-multi-turn": ("question_1", "question_2", "answer_a_1", "answer_a_2", "answer_b_1", "answer_b_2",
                                "ref_answer_1", "ref_answer_2"),
}
REQUIRED = ("single-v1", "single-v1-multi-turn", "pair-v2", "pair-v2-multi-turn")


@dataclass(frozen=True)
class PromptSet:
    """FastChat-format judge prompts by name; `source` is the file, `hash` its content's."""

    prompts: dict[str, dict]
    source: str
    hash: str

    @classmethod
    def load(cls, path: str | Path | None = None, *, where: str = "[judge] prompts") -> PromptSet:
        """The built-in set, or a FastChat-format judge_prompts.jsonl: a file that does not hold
        the four general prompts, or whose templates use other placeholders, is a usage error."""
        file = Path(path) if path else BUILTIN
        prompts: dict[str, dict] = {}
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise MergeQAUsageError(f"{where} {file}: cannot be read ({exc.strerror or exc}); name FastChat's "
                                    "judge_prompts.jsonl or leave it out for the built-in prompts") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name, system, template = record["name"], record["system_prompt"], record["prompt_template"]
            except (ValueError, KeyError, TypeError) as exc:
                raise MergeQAUsageError(f"{file}:{number}: not a FastChat judge prompt ({exc}); each line is "
                                        '{"name": ..., "system_prompt": ..., "prompt_template": ...}') from None
            if name in FIELDS:
                try:
                    template.format(**{f: "" for f in FIELDS[name]})
                except (KeyError, IndexError, ValueError) as exc:
                    raise MergeQAUsageError(f"{file}:{number}: prompt {name}'s template uses a placeholder FastChat "
                                            f"does not fill ({exc}); it may use {', '.join(FIELDS[name])}") from None
                prompts[name] = {"system_prompt": system, "prompt_template": template}
        missing = [n for n in REQUIRED if n not in prompts]
        if missing:
            raise MergeQAUsageError(f"{where} {file}: no prompt named {', '.join(missing)} (FastChat's "
                                    "judge_prompts.jsonl has them)")
        return cls(prompts, "builtin" if file == BUILTIN else str(file),
                   digest(json.dumps(prompts, sort_keys=True), "fastchat-format-v1")[:16])

    def _pick(self, kind: str, turn_count: int, refs: list[str | None], category: str) -> str:
        """FastChat's choice: reference-guided for a category that needs a reference (when the
        turns shown have one), -multi-turn from the second turn on."""
        multi = "-multi-turn" if turn_count >= 2 else ""
        general = f"{kind}-v{1 if kind == 'single' else 2}{multi}"
        shown = refs[-2:] if multi else refs[-1:]
        if category in NEED_REF_CATS and all(shown) and f"{kind}-math-v1{multi}" in self.prompts:
            return f"{kind}-math-v1{multi}"
        return general

    def _messages(self, name: str, fields: dict) -> tuple[str, list[dict]]:
        p = self.prompts[name]
        return name, [{"role": "system", "content": p["system_prompt"]},
                      {"role": "user", "content": p["prompt_template"].format(**fields)}]

    def single(self, turns: list[str], answers: list[str], references: list[str | None],
               category: str = "") -> tuple[str, list[dict]]:
        """(prompt name, messages) rating the answer to the last of `turns` (the one before it is
        shown as context, as FastChat's -multi-turn prompts do)."""
        refs = _padded(references, len(turns))
        name = self._pick("single", len(turns), refs, category)
        if len(turns) == 1:
            fields = {"question": turns[0], "answer": answers[0], "ref_answer_1": refs[0] or ""}
        else:
            fields = {"question_1": turns[-2], "answer_1": answers[-2], "question_2": turns[-1],
                      "answer_2": answers[-1], "ref_answer_1": refs[-2] or "", "ref_answer_2": refs[-1] or ""}
        return self._messages(name, fields)

    def pair(self, turns: list[str], answers_a: list[str], answers_b: list[str], references: list[str | None],
             category: str = "") -> tuple[str, list[dict]]:
        """(prompt name, messages) comparing assistants A and B on the last of `turns`."""
        refs = _padded(references, len(turns))
        name = self._pick("pair", len(turns), refs, category)
        if len(turns) == 1:
            fields = {"question": turns[0], "answer_a": answers_a[0], "answer_b": answers_b[0],
                      "ref_answer_1": refs[0] or ""}
        else:
            fields = {"question_1": turns[-2], "question_2": turns[-1], "answer_a_1": answers_a[-2],
                      "answer_a_2": answers_a[-1], "answer_b_1": answers_b[-2], "answer_b_2": answers_b[-1],
                      "ref_answer_1": refs[-2] or "", "ref_answer_2": refs[-1] or ""}
        return self._messages(name, fields)


def _padded(references, n: int) -> list[str | None]:
    refs = list(references or [])[:n]
    return refs + [None] * (n - len(refs))


@cache
def builtin() -> PromptSet:
    return PromptSet.load()


PROMPTS_HASH = builtin().hash

RATING_RE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
RATING_FALLBACK_RE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")
PAIR_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_rating(reply: str) -> float | None:
    """The last `[[x]]` (or, as FastChat accepts, `[x]`) with 1 <= x <= 10; None when absent."""
    found = RATING_RE.findall(reply) or RATING_FALLBACK_RE.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None


def parse_pair(reply: str) -> str | None:
    """"A", "B" or "C" (tie) from the verdict tag; None when there is none or several disagree."""
    found = set(PAIR_RE.findall(reply))
    return found.pop() if len(found) == 1 else None
