"""MT-Bench questions in FastChat's `question.jsonl` format, read as they are:

    {"question_id": 81, "category": "writing", "turns": ["...", "..."], "reference": ["...", "..."]}

`reference` is optional (FastChat gives it for math, reasoning and coding). Unknown keys are kept
out of the way, not rejected, so a file from FastChat's repository runs unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError, read_jsonl_objects

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "judge"
EXAMPLE = ('{"question_id": 1, "category": "math", "turns": ["23 + 14 =", "37 + 5 ="], '
           '"reference": ["37", "42"]}')


def default_questions_path() -> Path:
    return DATA_DIR / "question.jsonl"


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def reference_for(self, turn: int) -> str | None:
        if self.reference is None or turn >= len(self.reference):
            return None
        ref = self.reference[turn]
        return ref if isinstance(ref, str) and ref.strip() else None


def read_questions(path: str | Path) -> list[Question]:
    """The questions of a question.jsonl; a malformed line is one usage error naming file and line."""
    out: list[Question] = []
    seen: set = set()
    for where, row in read_jsonl_objects(path, what="questions", example=EXAMPLE,
                                         fix="pass an MT-Bench question.jsonl with --questions or [judge] questions"):
        if not isinstance(row, dict) or "question_id" not in row or not isinstance(row.get("turns"), list):
            raise MergeQAUsageError(f"{where}: needs question_id and turns (a list of strings), e.g. {EXAMPLE}")
        turns = row["turns"]
        if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise MergeQAUsageError(f"{where}: turns must be a non-empty list of non-empty strings")
        ref = row.get("reference")
        if ref is not None and (not isinstance(ref, list) or not all(isinstance(r, str) for r in ref)):
            raise MergeQAUsageError(f"{where}: reference must be a list of strings, one per turn")
        qid = row["question_id"]
        if qid in seen:
            raise MergeQAUsageError(f"{where}: question_id {qid!r} appears twice; ids must be unique")
        seen.add(qid)
        extra = {k: v for k, v in row.items() if k not in ("question_id", "category", "turns", "reference")}
        out.append(Question(qid, str(row.get("category", "")), tuple(turns), tuple(ref) if ref is not None else None,
                            extra))
    return out


REFERENCE_EXAMPLE = ('{"question_id": 111, "answer_id": "...", "model_id": "gpt-4", '
                     '"choices": [{"index": 0, "turns": ["37", "42"]}]}')


def with_references(questions: list[Question], path: str | Path) -> list[Question]:
    """`questions` with the references of a FastChat `reference_answer/<model>.jsonl` (one line per
    question: question_id and choices[0].turns), which win over a question's own `reference`."""
    import dataclasses

    refs: dict = {}
    for where, row in read_jsonl_objects(path, what="reference answers", example=REFERENCE_EXAMPLE,
                                         fix="name a FastChat reference_answer/*.jsonl with [judge] references"):
        try:
            turns = row["choices"][0]["turns"]
            qid = row["question_id"]
        except (KeyError, IndexError, TypeError):
            raise MergeQAUsageError(f"{where}: needs question_id and choices[0].turns, e.g. {REFERENCE_EXAMPLE}") from None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise MergeQAUsageError(f"{where}: choices[0].turns must be a list of strings, one per turn")
        refs[qid] = tuple(turns)
    return [dataclasses.replace(q, reference=refs[q.question_id]) if q.question_id in refs else q for q in questions]
