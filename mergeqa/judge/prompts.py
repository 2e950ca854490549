"""The judge's prompts, in the spirit of FastChat's single-v1 and pair-v2 (our own wording), and
the parsers of the verdict tags they ask for: `[[rating]]` (1-10) and `[[A]]` / `[[B]]` / `[[C]]`.

Answers are shown under neutral labels (never a model's name); the prompts tell the judge that
order and length must not sway it, and every pair is judged in both orders anyway. `PROMPTS_HASH`
is part of every judgment's cache key and of the junit metadata: edit a prompt and it changes.
"""

from __future__ import annotations

import re

from mergeqa.core.cache import digest

SYSTEM_SINGLE = (
    "You are an impartial judge. Rate the quality of the AI assistant's answer to the user's last "
    "question in the conversation below: correctness first, then helpfulness, relevance and precision. "
    "{reference_note}Do not let the length of the answer influence you. Give a short justification, then "
    "your rating on a scale of 1 to 10 in exactly this format: [[rating]], for example: Rating: [[5]]."
)
SYSTEM_PAIR = (
    "You are an impartial judge. Compare the answers of two AI assistants to the user's questions in the "
    "conversations below and decide which assistant answered better: correctness first, then "
    "helpfulness, relevance and precision. {reference_note}The order in which the assistants are shown "
    "and the length of their answers must not influence you, and the labels A and B say nothing about "
    "them. Give a short justification, then your verdict in exactly this format: [[A]] if assistant A is "
    "better, [[B]] if assistant B is better, [[C]] for a tie."
)
REFERENCE_NOTE = "A reference answer is given: an answer that disagrees with it is wrong. "


def _conversation(turns, answers, label: str = "Assistant") -> str:
    lines = []
    for q, a in zip(turns, answers):
        lines += [f"### User:\n{q}", f"### {label}:\n{a}"]
    return "\n\n".join(lines)


def single_messages(turns: list[str], answers: list[str], reference: str | None) -> list[dict]:
    """Rate the answer to the last of `turns` (earlier turns are context)."""
    note = REFERENCE_NOTE if reference else ""
    body = f"[The start of the conversation]\n{_conversation(turns, answers)}\n[The end of the conversation]"
    if reference:
        body = f"[Reference answer to the last question]\n{reference}\n\n" + body
    return [{"role": "system", "content": SYSTEM_SINGLE.format(reference_note=note)},
            {"role": "user", "content": body}]


def pair_messages(turns: list[str], answers_a: list[str], answers_b: list[str],
                  references: list[str | None]) -> list[dict]:
    """Compare two assistants over every turn of one question."""
    refs = [r for r in references if r]
    note = REFERENCE_NOTE if refs else ""
    parts = []
    if refs:
        parts.append("[Reference answers]\n" + "\n".join(f"Turn {i + 1}: {r}" for i, r in enumerate(references) if r))
    for label, answers in (("A", answers_a), ("B", answers_b)):
        parts.append(f"[The start of assistant {label}'s conversation]\n{_conversation(turns, answers, f'Assistant {label}')}"
                     f"\n[The end of assistant {label}'s conversation]")
    return [{"role": "system", "content": SYSTEM_PAIR.format(reference_note=note)},
            {"role": "user", "content": "\n\n".join(parts)}]


PROMPTS_HASH = digest(SYSTEM_SINGLE, SYSTEM_PAIR, REFERENCE_NOTE, "v1")[:16]

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
