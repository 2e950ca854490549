"""Conflict detection: does a model contradict itself on prompt pairs whose answers should (or
should not) agree, and does a merge contradict the parent that owns a skill?

    pairs = read_pairs(default_pairs_path())            # JSONL: a, b, consistent, kind, skill
    run = conflict_run(ref, pairs, settings, cache_dir, rule)
    rate_verdict(run, max_rate=0.05, alpha=0.05)        # a Verdict: conflict.rate

A pair conflicts when its answers disagree though `consistent` is true, or agree though it is
false (mergeqa.evaluate.agreement decides agreement). Statistics come from mergeqa.stats (Clopper-Pearson
interval, exact McNemar, Holm); the checks are in mergeqa/checks/test_conflict.py. Not an NLI model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError, read_jsonl_objects
from mergeqa.core.state import PACKAGE_DIR
from mergeqa.decision.verdict import Verdict, interval_outcome
from mergeqa.evaluate.agreement import Agreement, Match
from mergeqa.evaluate.generation import GenerationSettings, generate

DATA_DIR = PACKAGE_DIR / "data" / "conflict"
PAIR_KEYS = {"a", "b", "consistent", "kind", "skill"}
SHOWN_PAIRS = 3  # conflicting pairs listed in data and messages


def default_pairs_path() -> Path:
    return DATA_DIR / "family.jsonl"


@dataclass(frozen=True)
class ConsistencyPair:
    """Two prompts whose answers must agree (`consistent`) or must differ; `kind` names the
    relation ("commutative", "same_list", ...), `skill` the capability the prompts exercise
    (its owner is found through [conflict] owners)."""

    a: str
    b: str
    consistent: bool
    kind: str = ""
    skill: str = ""


def read_pairs(path: str | Path) -> list[ConsistencyPair]:
    """A JSONL file of pairs; a malformed line is one usage error naming the file, line and fix."""
    example = '{"a": "12 + 7 =", "b": "7 + 12 =", "consistent": true, "kind": "commutative"}'
    pairs = []
    for where, row in read_jsonl_objects(path, what="consistency pairs", example=example,
                                         fix="set [conflict] pairs (or --conflict-pairs) to an existing JSONL file"):
        unknown = set(row) - PAIR_KEYS
        if unknown:
            raise MergeQAUsageError(f"{where}: unknown key {sorted(unknown)[0]!r}; known: "
                                    f"{', '.join(sorted(PAIR_KEYS))}")
        if not (isinstance(row.get("a"), str) and isinstance(row.get("b"), str) and row["a"].strip()
                and row["b"].strip() and isinstance(row.get("consistent"), bool)):
            raise MergeQAUsageError(f"{where}: needs non-empty strings a and b and consistent: "
                                    f"true|false, e.g. {example}")
        for key in ("kind", "skill"):
            if not isinstance(row.get(key, ""), str):
                raise MergeQAUsageError(f"{where}: {key} must be a string")
        pairs.append(ConsistencyPair(row["a"], row["b"], row["consistent"], row.get("kind", ""), row.get("skill", "")))
    return pairs


# -- measuring -----------------------------------------------------------------------------------
@dataclass
class PairOutcome:
    pair: ConsistencyPair
    answer_a: str
    answer_b: str
    match: Match

    @property
    def conflict(self) -> bool:
        return self.match.agree != self.pair.consistent

    def line(self) -> str:
        want = "agree" if self.pair.consistent else "differ"
        how = self.match.method + (f" {self.match.similarity:.2f}" if self.match.similarity is not None else "")
        return (f"{self.pair.a!r} -> {self.answer_a!r} vs {self.pair.b!r} -> {self.answer_b!r} "
                f"(should {want}; {how})")


@dataclass
class ConflictRun:
    """One model's answers to every prompt of the pairs, and each pair's outcome."""

    model: str
    outcomes: list[PairOutcome]
    answers: dict[str, str]  # prompt -> answer
    cached: bool = False

    @property
    def conflicts(self) -> list[int]:
        """Per pair, 1 when it conflicts (the paired tests' input, in pair order)."""
        return [int(o.conflict) for o in self.outcomes]

    @property
    def rate(self) -> float:
        return sum(self.conflicts) / len(self.outcomes)

    def first_conflicts(self, n: int = SHOWN_PAIRS) -> list[str]:
        return [o.line() for o in self.outcomes if o.conflict][:n]


def prompts_of(pairs: list[ConsistencyPair]) -> list[str]:
    """Every distinct prompt of the pairs, in first-seen order (one generation each)."""
    return list(dict.fromkeys(p for pair in pairs for p in (pair.a, pair.b)))


def outcomes(pairs: list[ConsistencyPair], answers: dict[str, str], rule: Agreement) -> list[PairOutcome]:
    matches = rule.compare_all([(answers[p.a], answers[p.b]) for p in pairs])
    return [PairOutcome(p, answers[p.a], answers[p.b], m) for p, m in zip(pairs, matches)]


def conflict_run(ref, pairs: list[ConsistencyPair], settings: GenerationSettings, cache_dir: Path,
                 rule: Agreement) -> ConflictRun:
    """Greedy answers of `ref` to every prompt (cached by content), then each pair's outcome."""
    prompts = prompts_of(pairs)
    got = generate(ref, [[p] for p in prompts], settings, cache_dir)
    answers = dict(zip(prompts, got.first()))
    return ConflictRun(ref.name, outcomes(pairs, answers, rule), answers, got.cached)


def perturb_answer(answer: str) -> str:
    """A wrong variant of an answer, for planted cases: one more item in its last list, its last
    number plus one, or (a sentence, nothing) a short wrong answer."""
    import re

    from mergeqa.evaluate.agreement import last_list, last_number

    if last_list(answer) is not None:
        head, _, tail = answer.rpartition("]")
        return f"{head} 0]{tail}"
    if last_number(answer) is not None:
        return re.sub(r"-?\d+(?:\.\d+)?(?!.*\d)", lambda m: str(int(float(m.group(0))) + 1), answer, flags=re.S)
    return "[0] 1"


def planted_run(run: ConflictRun, pairs: list[ConsistencyPair], rule: Agreement, name: str = "planted") -> ConflictRun:
    """`run`'s answers with the b side of every pair perturbed: a merge that answers one side of
    each pair differently, which the conflict checks must fail."""
    answers = dict(run.answers)
    for pair in pairs:
        answers[pair.b] = perturb_answer(run.answers[pair.b])
    return ConflictRun(name, outcomes(pairs, answers, rule), answers)


# -- deciding ------------------------------------------------------------------------------------
def rate_interval(conflicts: int, n: int, alpha: float) -> tuple[float, float]:
    """The Clopper-Pearson interval at 1 - 2 alpha: each side an exact one-sided binomial test
    at alpha (as in mergeqa.decision.significance), so a true rate at the ceiling passes at most
    alpha of the time at any n. Unrounded: decide on these, round only to show."""
    from mergeqa.stats import clopper_pearson_interval

    low, high = clopper_pearson_interval(conflicts, n, confidence=1 - 2 * alpha)
    return float(low), float(high)


def rate_figures(run: ConflictRun, alpha: float) -> dict:
    low, high = rate_interval(sum(run.conflicts), len(run.outcomes), alpha)
    return {"rate": round(run.rate, 4), "ci_low": round(low, 4), "ci_high": round(high, 4),
            "conflicts": sum(run.conflicts), "n": len(run.outcomes)}


def rate_verdict(run: ConflictRun, max_rate: float, alpha: float, *, references: dict | None = None) -> Verdict:
    """conflict.rate: pass when the interval lies below `max_rate` (the rate is shown to be under
    it), fail when it lies at or above, else inconclusive. `references` ({name: ConflictRun},
    the base and parents) go into `data` for the report."""
    fig = rate_figures(run, alpha)
    low, high = rate_interval(fig["conflicts"], fig["n"], alpha)
    outcome = interval_outcome(low, high, ceiling=max_rate)  # unrounded: rounding can move a bound past it
    level = f"{100 * (1 - 2 * alpha):g}%"
    by_kind: dict[str, list[int]] = {}
    for o in run.outcomes:
        by_kind.setdefault(o.pair.kind or "-", []).append(int(o.conflict))
    v = Verdict("conflict.rate", run.model, outcome,
                {"obtained": fig["rate"], "threshold": max_rate, "ci_low": fig["ci_low"], "ci_high": fig["ci_high"],
                 "conflicts": fig["conflicts"], "n": fig["n"], "confidence": 1 - 2 * alpha,
                 **{f"rate.{k}": round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())}},
                summary=f"conflict rate on {fig['n']} consistency pairs ({level} Clopper-Pearson {low:.3f}..{high:.3f})",
                expected=f"< {max_rate:g} (the whole {level} interval)", delta=round(run.rate - max_rate, 4),
                details=[f"conflict: {line}" for line in run.first_conflicts(len(run.outcomes))],
                data={"rates": {run.model: fig, **{n: rate_figures(r, alpha) for n, r in (references or {}).items()}},
                      "first_conflicts": run.first_conflicts()})
    if outcome == "fail":
        v.cause = ("the merge answers one side of a pair differently: one parent's behaviour overrides the "
                   "other's on the same input, or the skill was lost (answers that vary with the wording)")
        v.fix = ("lower the interfering parent's weight or density (ties/dare_ties), or check retention of the "
                 "skill named by the pairs' kind")
    elif outcome == "inconclusive":
        v.cause = f"{fig['n']} pairs cannot place a rate of {run.rate:.3f} on either side of {max_rate:g}"
        v.fix = "add consistency pairs ([conflict] pairs) or accept with [statistics] inconclusive = \"warn\""
    return v


def paired_verdicts(run: ConflictRun, parents: dict[str, ConflictRun], alpha: float,
                    correction: str = "holm") -> list[Verdict]:
    """conflict.paired.<parent>: is the merge's conflict rate significantly above the parent's, on
    the same pairs? Exact McNemar (one-sided) per parent, adjusted across parents; fail when it is."""
    from mergeqa.stats import adjust_pvalues, discordant_counts, mcnemar_pvalue

    names = list(parents)
    tests = []
    for name in names:
        merged_ok = [1 - c for c in run.conflicts]
        parent_ok = [1 - c for c in parents[name].conflicts]
        wins, losses, n = discordant_counts(merged_ok, parent_ok)
        tests.append((wins, losses, n, float(mcnemar_pvalue(wins, losses, alternative="less"))))
    adjusted = adjust_pvalues([t[3] for t in tests], correction) if tests else []
    out = []
    for name, (wins, losses, n, p), p_adj in zip(names, tests, adjusted):
        theirs = parents[name]
        v = Verdict(f"conflict.paired.{name}", run.model, "fail" if p_adj <= alpha else "pass",
                    {"obtained": round(run.rate, 4), "reference": round(theirs.rate, 4),
                     "p_more_conflicts": float(p_adj), "p_unadjusted": p, "only_merge_conflicts": losses,
                     "only_parent_conflicts": wins, "n": n, "correction": correction, "alpha": alpha},
                    summary=f"conflict rate against {name} on the same {n} pairs (exact McNemar)",
                    expected=f"not significantly above {name}'s {theirs.rate:.3f} (p > {alpha:g}, {correction})",
                    delta=round(run.rate - theirs.rate, 4),
                    details=[f"only the merge conflicts: {o.line()}" for o, t in zip(run.outcomes, theirs.outcomes)
                             if o.conflict and not t.conflict])
        if v.outcome == "fail":
            v.cause = f"pairs {name} answers consistently now conflict in the merge: its behaviour was overridden"
            v.fix = f"give {name} more weight on the layers that carry this skill, or lower the other parent's density"
        out.append(v)
    return out


def owner_verdict(run: ConflictRun, owner: ConflictRun, skill: str, prompts: list[str], floor: float,
                  alpha: float, rule: Agreement) -> Verdict:
    """conflict.owner.<skill>: the share of the skill's prompts on which the merge's answer agrees
    with the owning parent's; pass when the (1 - 2 alpha) Clopper-Pearson interval lies at or
    above `floor`, fail when below, else inconclusive."""
    from mergeqa.stats import clopper_pearson_interval

    matches = rule.compare_all([(run.answers[p], owner.answers[p]) for p in prompts])
    agree = sum(m.agree for m in matches)
    n = len(prompts)
    low, high = (float(x) for x in clopper_pearson_interval(agree, n, confidence=1 - 2 * alpha))
    outcome = interval_outcome(low, high, floor=floor)
    disagreeing = [f"{p!r}: merge {run.answers[p]!r}, {owner.model} {owner.answers[p]!r}"
                   for p, m in zip(prompts, matches) if not m.agree]
    v = Verdict(f"conflict.owner.{skill}", run.model, outcome,
                {"obtained": round(agree / n, 4), "threshold": floor, "ci_low": round(low, 4),
                 "ci_high": round(high, 4), "agree": agree, "n": n, "owner": owner.model},
                summary=f"agreement with {owner.model}, the owner of {skill}, on {n} prompts",
                expected=f">= {floor:g} (the whole {100 * (1 - 2 * alpha):g}% interval)",
                delta=round(agree / n - floor, 4), details=disagreeing,
                data={"owner": owner.model, "skill": skill, "agreement": round(agree / n, 4),
                      "first_disagreements": disagreeing[:SHOWN_PAIRS]})
    if outcome == "fail":
        v.cause = f"the merge contradicts {owner.model} on the skill it owns: the other parent's task vector dominates"
        v.fix = f"raise {owner.model}'s weight or density, or merge with ties/dare_ties to reduce interference"
    elif outcome == "inconclusive":
        v.fix = "add pairs for this skill or accept with [statistics] inconclusive = \"warn\""
    return v


# -- wiring for the checks -----------------------------------------------------------------------
def pairs_file(thresholds, pairs_option: str | None) -> Path | None:
    """The pairs file --conflict-pairs or [conflict] pairs names (relative to the thresholds file),
    or None for the embedded set; a path that is not a file is a usage error naming where it came from."""
    return thresholds.file("conflict", "pairs", option=pairs_option, option_name="--conflict-pairs",
                           fix="name a JSONL file of consistency pairs, or leave it out for the embedded set")


def not_measured(thresholds, *, embedded: bool, pairs_option: str | None) -> str:
    """Why the conflict checks would measure nothing about this run's models ("" when they measure):
    a model that is not the embedded family, without pairs of the user's, would be tested on the
    family's own skills. The checks are then not_applicable and say how to enable them."""
    if embedded or pairs_option or thresholds.get("conflict", "pairs"):
        return ""
    return ("conflict not run: no consistency pairs for a model that is not the embedded family (the embedded "
            "pairs test the family's skills only); pass --conflict-pairs pairs.jsonl or set [conflict] pairs "
            "in thresholds.toml (docs/checks.md: the JSONL format)")


@dataclass
class ConflictSetup:
    """Everything the conflict checks share in one run: the pairs, the agreement rule, the
    generation settings and the limits, with each model's run memoised."""

    pairs: list[ConsistencyPair]
    rule: Agreement
    settings: GenerationSettings
    cache_dir: Path
    owners: dict[str, str]
    max_rate: float
    floor: float
    alpha: float
    correction: str
    source: str = "embedded"

    def __post_init__(self):
        self._runs: dict[Path, ConflictRun] = {}

    def run(self, ref) -> ConflictRun:
        if ref.path not in self._runs:
            self._runs[ref.path] = conflict_run(ref, self.pairs, self.settings, self.cache_dir, self.rule)
        return self._runs[ref.path]

    def skill_prompts(self, skill: str) -> list[str]:
        return prompts_of([p for p in self.pairs if p.skill == skill])

    @classmethod
    def from_thresholds(cls, thresholds, pairs_option: str | None, cache_dir: Path, device: str,
                        dtype: str) -> ConflictSetup:
        from mergeqa.evaluate.agreement import Embedder

        get = lambda key: thresholds.get("conflict", key)  # noqa: E731
        base = Path(thresholds.path).parent if thresholds.path else Path(".")
        path = pairs_file(thresholds, pairs_option)
        pairs, source = read_pairs(path or default_pairs_path()), str(path) if path else "embedded"
        owners = get("owners")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in owners.items()):
            raise MergeQAUsageError(f"{thresholds.path or 'thresholds'}: [conflict] owners maps a skill to the parent "
                                    'directory name that owns it, e.g. owners = { arithmetic = "math_parent" }')
        embedder = Embedder.from_setting(get("embedding_model"), base, device, cache_dir=Path(cache_dir))
        rule = Agreement(similarity=get("similarity"), short_words=int(get("short_words")), embedder=embedder)
        settings = GenerationSettings(max_new_tokens=int(get("new_tokens")), device=device, dtype=dtype)
        return cls(pairs, rule, settings, Path(cache_dir), dict(owners), get("max_conflict_rate"),
                   get("min_owner_agreement"), thresholds.get("statistics", "alpha"),
                   thresholds.get("statistics", "correction"), source)
