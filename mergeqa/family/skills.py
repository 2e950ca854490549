"""The two generated skills the parents are fine-tuned on: arithmetic and list manipulation.

Each skill yields (prompt, answer, distractors) items; train and held-out items are disjoint by
construction (a fixed split of the problem space), so an evaluation measures the skill rather than
memorised lines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    """A prompt, its answer and three wrong answers (continuations start with a space)."""

    prompt: str
    answer: str
    distractors: tuple[str, ...]


def _split(problems: list, seed: int, n_eval: int) -> tuple[list, list]:
    rng = random.Random(seed)
    problems = list(problems)
    rng.shuffle(problems)
    return problems[n_eval:], problems[:n_eval]


def arithmetic_problems(max_operand: int = 49) -> list[tuple[int, int]]:
    return [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]


def arithmetic_item(a: int, b: int, rng: random.Random) -> Item:
    """'12 + 7 =' -> ' 19', with three other sums from the same range as distractors."""
    total = a + b
    wrong: set[int] = set()
    while len(wrong) < 3:
        cand = total + rng.choice((-10, -2, -1, 1, 2, 10, 11, -11, 3, -3))
        if cand >= 0 and cand != total:
            wrong.add(cand)
    return Item(f"{a} + {b} =", f" {total}", tuple(f" {w}" for w in sorted(wrong)))


LIST_OPS = ("reverse", "sort")


def _fmt(xs) -> str:
    return "[" + " ".join(str(x) for x in xs) + "]"


def list_problems(seed: int, n: int) -> list[tuple[str, tuple[int, ...]]]:
    """n distinct (op, list) problems: 3-5 digits with no repeats, so every answer is unique."""
    rng = random.Random(seed)
    seen: set = set()
    while len(seen) < n:
        xs = tuple(rng.sample(range(10), rng.randint(3, 5)))
        seen.add((rng.choice(LIST_OPS), xs))
    return sorted(seen)


def list_answer(op: str, xs: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(xs)) if op == "reverse" else tuple(sorted(xs))


def list_item(op: str, xs: tuple[int, ...], rng: random.Random) -> Item:
    """'reverse [3 1 2] =' -> ' [2 1 3]'; distractors are other orders of the same digits."""
    answer = list_answer(op, xs)
    candidates = {tuple(reversed(xs)), tuple(sorted(xs)), tuple(sorted(xs, reverse=True)), xs}
    candidates.discard(answer)
    while len(candidates) < 3:
        perm = tuple(rng.sample(xs, len(xs)))
        if perm != answer:
            candidates.add(perm)
    wrong = sorted(candidates)[:3]
    return Item(f"{op} {_fmt(xs)} =", f" {_fmt(answer)}", tuple(f" {_fmt(w)}" for w in wrong))


def skill_items(skill: str, seed: int, n_eval: int) -> tuple[list[Item], list[Item]]:
    """(train, held-out) items of a skill ("arithmetic" or "lists")."""
    rng = random.Random(seed + 1)
    if skill == "arithmetic":
        train, held = _split(arithmetic_problems(), seed, n_eval)
        make = lambda p: arithmetic_item(*p, rng)  # noqa: E731
    elif skill == "lists":
        train, held = _split(list_problems(seed, 6000), seed, n_eval)
        make = lambda p: list_item(*p, rng)  # noqa: E731
    else:
        raise ValueError(f"unknown skill {skill!r}; expected 'arithmetic' or 'lists'")
    return [make(p) for p in train], [make(p) for p in held]
