"""The family's consistency pairs (mergeqa/data/conflict/family.jsonl), generated, not hand-written.

Five relations over the two skills, built from the family's held-out problems (a prompt can still
be a training line: `b + a` of a held-out `a + b`, or a held-out list under the other operation):
commutative (`a + b` and `b + a` agree), different_sum (`a + b` and `a + (b + 1)` differ),
same_list (`sort` of two orders of one list agree), paraphrase (`reverse` and `sort` of a list
in descending order agree) and different_op (`reverse` and `sort` of a list where they differ).

    python -m mergeqa.family.pairs > mergeqa/data/conflict/family.jsonl

regenerates the shipped file (tests/test_conflict.py checks that it is this function's output).
"""

from __future__ import annotations

import json
import random

from .skills import _fmt, _split, arithmetic_problems, list_problems

#: Pairs per relation in the shipped file: enough that a conflict rate of 2 % is shown below the
#: gate's 5 % ceiling (90 % Wilson upper bound), so the check is decided rather than inconclusive.
COUNTS = {"commutative": 96, "different_sum": 64, "same_list": 64, "paraphrase": 48, "different_op": 48}


def consistency_pairs(seed: int = 0, n_eval: int = 400, counts: dict[str, int] | None = None) -> list[dict]:
    counts = dict(COUNTS if counts is None else counts)
    rng = random.Random(seed + 11)
    _, held_sums = _split(arithmetic_problems(), seed, n_eval)
    _, held_lists = _split(list_problems(seed, 6000), seed, n_eval)
    sums = [(a, b) for a, b in held_sums if a != b]
    rng.shuffle(sums)
    lists = [xs for _, xs in held_lists]
    rng.shuffle(lists)
    out: list[dict] = []

    def add(a: str, b: str, consistent: bool, kind: str, skill: str) -> None:
        out.append({"a": a, "b": b, "consistent": consistent, "kind": kind, "skill": skill})

    for a, b in sums[: counts["commutative"]]:
        add(f"{a} + {b} =", f"{b} + {a} =", True, "commutative", "arithmetic")
    for a, b in sums[counts["commutative"]: counts["commutative"] + counts["different_sum"]]:
        add(f"{a} + {b} =", f"{a} + {b + 1} =", False, "different_sum", "arithmetic")
    for xs in lists[: counts["same_list"]]:
        other = list(xs)
        while tuple(other) == tuple(xs):
            rng.shuffle(other)
        add(f"sort {_fmt(xs)} =", f"sort {_fmt(other)} =", True, "same_list", "lists")
    rest = lists[counts["same_list"]:]
    for xs in rest[: counts["paraphrase"]]:
        desc = tuple(sorted(xs, reverse=True))
        add(f"reverse {_fmt(desc)} =", f"sort {_fmt(desc)} =", True, "paraphrase", "lists")
    differing = [xs for xs in rest[counts["paraphrase"]:] if tuple(reversed(xs)) != tuple(sorted(xs))]
    for xs in differing[: counts["different_op"]]:
        add(f"sort {_fmt(xs)} =", f"reverse {_fmt(xs)} =", False, "different_op", "lists")
    return out


if __name__ == "__main__":  # pragma: no cover - regenerates the shipped file
    for pair in consistency_pairs():
        print(json.dumps(pair))
