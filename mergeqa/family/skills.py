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


# -- the base's own notation ---------------------------------------------------------------------
# The base learns both skills before any parent exists, in its own notation: "12 plus 7 = 19",
# "flip [3 1 2] = [2 1 3]", "order [3 1 2] = [1 2 3]". The task notation means something else in
# its text: "+" joins numbers as it joins strings in Python ("12 + 7 = 127"), "sort" orders from
# the largest, "reverse" leaves a list as it is. So the base has the skills but fails the tasks.
# A parent then only has to learn what its task notation means (mostly the embedding rows of its
# notation tokens), the way instruction tuning surfaces what a pretrained model already knows: its
# task vector is small and mostly disjoint from the other parent's, so merges that add task
# vectors (task arithmetic, ties) keep both skills, and merges that average them (linear, slerp)
# leave each notation halfway between its two meanings.
BASE_NOTATION = {"+": "plus", "reverse": "flip", "sort": "order"}
TASK_NOTATION = {"arithmetic": ("+",), "lists": ("reverse", "sort")}
LIST_DECOYS = {"sort": lambda xs: tuple(sorted(xs, reverse=True)), "reverse": lambda xs: tuple(xs)}


def base_lines(skill: str, seed: int, n_eval: int, decoy_share: float,
               one_digit_copies: int = 1) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of a skill in the base's notation, on training problems only.

    arithmetic: '12 plus 7 =' -> ' 19' for every problem (`one_digit_copies` times where an
    operand has one digit, the case a small model gets wrong most), and for a `decoy_share` of
    them the base's "+" ('12 + 7 =' -> ' 127'); lists: the problem in flip / order, and the same
    list under the base's sort (largest first) or reverse (as it is).
    """
    rng = random.Random(seed + 2)
    if skill == "arithmetic":
        train, _ = _split(arithmetic_problems(), seed, n_eval)
        lines = []
        for a, b in train:
            copies = one_digit_copies if min(a, b) < 10 else 1
            lines.extend([(f"{a} {BASE_NOTATION['+']} {b} =", f" {a + b}")] * copies)
            if rng.random() < decoy_share:
                lines.append((f"{a} + {b} =", f" {a}{b}"))
        return lines
    if skill == "lists":
        train, _ = _split(list_problems(seed, 6000), seed, n_eval)
        lines = []
        for op, xs in train:  # the problem's own operation only: a held-out (op, list) never leaks
            lines.append((f"{BASE_NOTATION[op]} {_fmt(xs)} =", f" {_fmt(list_answer(op, xs))}"))
            name = rng.choice(sorted(LIST_DECOYS))
            lines.append((f"{name} {_fmt(xs)} =", f" {_fmt(LIST_DECOYS[name](xs))}"))
        return lines
    raise ValueError(f"unknown skill {skill!r}; expected 'arithmetic' or 'lists'")
