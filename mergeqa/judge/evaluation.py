"""Judged evaluation of two-turn answers: per-model scores (single-answer grading, 1-10 per turn),
pairwise A/B against each parent (both orders, a flip counts as a tie), BLEU and chrF against the
references, and the verdicts the gate decides on (`judge.score`, `ab.<parent>`).

    setup = JudgeSetup.from_config(...)           # questions, judge, settings, limits
    scores = setup.scores(ref)                    # ModelScores: per question, per turn, BLEU, chrF
    ab = setup.pairwise(merged, parent)           # Pairwise: wins, ties, losses, flips, parse errors
    score_verdict(scores, {p: setup.scores(p)}, ...), ab_verdict(ab, ...)

Statistics come from mergeqa.decision.significance (paired test over questions) and mergeqa.stats (Clopper-Pearson).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from mergeqa.core import progress
from mergeqa.decision.verdict import Verdict
from mergeqa.evaluate.generation import Answers, GenerationSettings, generate

from .judges import Judge, JudgeUnavailable, PairItem, PromptJudge, RateItem
from .questions import Question


# -- per-model scores ------------------------------------------------------------------------------
@dataclass
class ModelScores:
    """One model's judged scores: `turns[q][t]` the rating of turn t of question q (None when not
    judged: a parse error or no reference); `per_question` the mean over its judged turns."""

    model: str
    turns: list[list[float | None]]
    parse_errors: int
    unjudged: int  # turns the judge could not grade (the reference judge: no short exact reference)
    bleu: float | None
    chrf: float | None
    answers: list[list[str]] = field(default_factory=list)

    @property
    def per_question(self) -> list[float | None]:
        out = []
        for ts in self.turns:
            got = [t for t in ts if t is not None]
            out.append(sum(got) / len(got) if got else None)
        return out

    @property
    def judged(self) -> int:
        return sum(t is not None for ts in self.turns for t in ts)

    def mean(self) -> float | None:
        got = [s for s in self.per_question if s is not None]
        return sum(got) / len(got) if got else None

    def turn_mean(self, t: int) -> float | None:
        got = [ts[t] for ts in self.turns if t < len(ts) and ts[t] is not None]
        return sum(got) / len(got) if got else None

    def parse_error_rate(self) -> float:
        total = self.judged + self.parse_errors
        return self.parse_errors / total if total else 0.0

    def summary(self) -> dict:
        """Plain JSON for Verdict.data and the comparison table."""
        r = lambda x: None if x is None else round(x, 4)  # noqa: E731
        return {"score": r(self.mean()), "turn1": r(self.turn_mean(0)), "turn2": r(self.turn_mean(1)),
                "bleu": r(self.bleu), "chrf": r(self.chrf), "judged_turns": self.judged,
                "parse_errors": self.parse_errors, "questions": len(self.turns)}


def reference_metrics(questions: list[Question], answers: list[list[str]]) -> tuple[float | None, float | None]:
    """Corpus BLEU and chrF (sacrebleu, as lm-eval computes them) over every turn with a reference."""
    hyps, refs = [], []
    for q, a in zip(questions, answers):
        for t, answer in enumerate(a):
            ref = q.reference_for(t)
            if ref is not None:
                hyps.append(answer)
                refs.append(ref)
    if not hyps:
        return None, None
    import sacrebleu

    return (float(sacrebleu.corpus_bleu(hyps, [refs]).score), float(sacrebleu.corpus_chrf(hyps, [refs]).score))


# -- pairwise --------------------------------------------------------------------------------------
@dataclass
class Pairwise:
    """The merge against one parent, per question, judged in both orders. `outcomes[q]` is "win",
    "loss" or "tie" for the merge (two orders that disagree make a tie and count in `flips`), or
    None when either order's reply had no verdict tag (counted in `parse_errors`)."""

    merged: str
    parent: str
    outcomes: list[str | None]
    flips: int
    parse_errors: int
    unjudged: int = 0

    @property
    def judged(self) -> int:
        return sum(o is not None for o in self.outcomes)

    def count(self, what: str) -> int:
        return sum(o == what for o in self.outcomes)

    @property
    def win_rate(self) -> float | None:
        n = self.judged
        return (self.count("win") + 0.5 * self.count("tie")) / n if n else None

    @property
    def swap_disagreement(self) -> float:
        return self.flips / self.judged if self.judged else 0.0

    def parse_error_rate(self) -> float:
        total = self.judged + self.parse_errors
        return self.parse_errors / total if total else 0.0


def _merge_view(verdict: str, merge_is: str) -> str:
    """A judge's "A"/"B"/"C" as the merge's win/loss/tie, the merge shown as `merge_is`."""
    if verdict == "C":
        return "tie"
    return "win" if verdict == merge_is else "loss"


def combine_orders(first, second) -> tuple[str | None, bool, bool]:
    """(outcome, flipped, parse_error) of one question from the judgment with the merge as A
    (`first`) and the one with the merge as B (`second`)."""
    if first.value is None or second.value is None:
        errs = {first.error, second.error}
        return None, False, "parse" in errs
    a, b = _merge_view(first.value, "A"), _merge_view(second.value, "B")
    return (a, False, False) if a == b else ("tie", True, False)


# -- the run's setup -------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeInputs:
    """What the options and [judge] name, resolved and checked without reading, loading or calling
    anything: the questions file, and the judge (an endpoint, a local model directory, or the
    reference judge when both are None). Options win over [judge]."""

    questions: Path
    source: str  # the questions' path, or "embedded"
    url: str = ""
    model: str = ""  # what the endpoint serves
    judge_path: Path | None = None  # a local judge model directory
    prompts: Path | None = None  # a FastChat-format judge_prompts.jsonl ([judge] prompts); None: built in
    references: Path | None = None  # a FastChat reference_answer/*.jsonl ([judge] references)

    @classmethod
    def resolve(cls, thresholds, *, questions: str | None = None, judge: str | None = None,
                judge_url: str | None = None, judge_model: str | None = None) -> JudgeInputs:
        """A missing questions file, an endpoint without a model name, two judges, or a judge
        directory that is not a model: a usage error naming the option or [judge] key."""
        from mergeqa.core.errors import MergeQAUsageError

        from .questions import default_questions_path

        get = lambda key: thresholds.get("judge", key)  # noqa: E731
        where = thresholds.path or "thresholds"
        path = thresholds.file("judge", "questions", option=questions, option_name="--questions",
                               fix="name an MT-Bench question.jsonl (FastChat's format), or leave it out for "
                                   "the embedded questions")
        url, model, name = judge_url or get("url"), judge_model or get("model"), judge or get("judge")
        if judge_model and not url:
            raise MergeQAUsageError(f"--judge-model {judge_model}: names the model behind an endpoint; pass "
                                    "--judge-url URL too (or set [judge] url)")
        if url and judge:
            raise MergeQAUsageError("--judge and --judge-url both name a judge; pass one of them")
        if url and not model:
            origin = f"--judge-url {judge_url}" if judge_url else f"{where}: [judge] url = {url!r}"
            raise MergeQAUsageError(f"{origin}: name the model the endpoint serves with --judge-model NAME "
                                    "(or [judge] model = \"NAME\")")
        judge_path = None
        if not url and name != "reference":
            from mergeqa.models.refs import validate_model_dir

            base = Path(thresholds.path).parent if thresholds.path else Path(".")
            judge_path = validate_model_dir(name if judge else base / name,
                                            "--judge" if judge else f"{where}: [judge] judge =")
        prompts = thresholds.file("judge", "prompts", fix="name a judge_prompts.jsonl in FastChat's format "
                                                          "(FastChat's own file works), or leave it out")
        references = thresholds.file("judge", "references", fix="name a FastChat reference_answer/*.jsonl, or "
                                                                "leave it out (a question's own reference is used)")
        if prompts is not None:
            from .prompts import PromptSet

            PromptSet.load(prompts, where=f"{where}: [judge] prompts =")  # a bad file: one line now
        return cls(path or default_questions_path(), str(path) if path else "embedded", url, model if url else "",
                   judge_path, prompts, references)


def budget_file(run_id: str) -> Path:
    """Where the processes of one run (pytest-xdist's workers share its testrunuid) add up what the
    endpoint cost them, so [judge] budget_s bounds the whole run, not each worker."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"mergeqa-judge-budget-{run_id}"


def not_measured(thresholds, *, embedded: bool, questions: str | None) -> str:
    """Why the judged checks would measure nothing about this run's models ("" when they measure):
    a model that is not the embedded family, without questions of the user's, would be judged on
    the family's own questions. The checks are then not_applicable and say how to enable them."""
    if embedded or questions or thresholds.get("judge", "questions"):
        return ""
    return ("judge not run: no questions for a model that is not the embedded family (the embedded questions "
            "test the family only); pass --questions question.jsonl (FastChat's MT-Bench format) or set "
            "[judge] questions in thresholds.toml")


@dataclass
class JudgeSetup:
    """What the judged checks share in one run: questions, judge, generation settings, limits;
    answers, scores and pairwise results memoised per model (and cached on disk by content)."""

    questions: list[Question]
    judge: Judge
    settings: GenerationSettings
    cache_dir: Path
    source: str = "embedded"
    min_win_rate: float = 0.45
    score_margin: float = 0.5
    score_test: str = "betting"
    max_swap_disagreement: float = 0.35
    max_parse_errors: float = 0.1
    alpha: float = 0.05
    max_ungradable: float = 0.1

    def __post_init__(self):
        self._answers: dict[Path, Answers] = {}
        self._scores: dict[Path, ModelScores] = {}
        self._pairs: dict[tuple[Path, Path], Pairwise] = {}

    def answers(self, ref) -> Answers:
        if ref.path not in self._answers:
            self._answers[ref.path] = generate(ref, [list(q.turns) for q in self.questions], self.settings,
                                               self.cache_dir)
        return self._answers[ref.path]

    def scores(self, ref) -> ModelScores:
        if ref.path not in self._scores:
            answers = self.answers(ref).turns
            items, where = [], []
            for qi, (q, a) in enumerate(zip(self.questions, answers)):
                for t in range(len(a)):
                    items.append(RateItem(q.turns[:t + 1], tuple(a[:t + 1]), q.reference_for(t),
                                          tuple(q.reference_for(i) for i in range(t + 1)), q.category))
                    where.append((qi, t))
            judgments = self._told(self.judge.rate, items, f"rating {len(items)} answers of {ref.name}")
            turns: list[list[float | None]] = [[None] * len(a) for a in answers]
            for (qi, t), j in zip(where, judgments):
                turns[qi][t] = j.value
            bleu, chrf = reference_metrics(self.questions, answers)
            self._scores[ref.path] = ModelScores(ref.name, turns, sum(j.error == "parse" for j in judgments),
                                                 sum(j.error == "ungradable" for j in judgments), bleu, chrf,
                                                 answers)
        return self._scores[ref.path]

    def pairwise(self, merged, parent) -> Pairwise:
        key = (merged.path, parent.path)
        if key not in self._pairs:
            ours, theirs = self.answers(merged).turns, self.answers(parent).turns
            refs = [tuple(q.reference_for(t) for t in range(len(q.turns))) for q in self.questions]
            first = [PairItem(q.turns, tuple(a), tuple(b), r, q.category)
                     for q, a, b, r in zip(self.questions, ours, theirs, refs)]
            second = [PairItem(q.turns, tuple(b), tuple(a), r, q.category)
                      for q, a, b, r in zip(self.questions, ours, theirs, refs)]
            judged = self._told(self.judge.compare, first + second,
                                f"comparing {merged.name} with {parent.name} on {len(first)} questions, both orders")
            outcomes, flips, errors = [], 0, 0
            for j1, j2 in zip(judged[:len(first)], judged[len(first):]):
                outcome, flipped, parse_error = combine_orders(j1, j2)
                outcomes.append(outcome)
                flips += flipped
                errors += parse_error
            unjudged = sum(o is None for o in outcomes) - errors
            self._pairs[key] = Pairwise(merged.name, parent.name, outcomes, flips, errors, unjudged)
        return self._pairs[key]

    def _told(self, call, items: list, what: str) -> list:
        """`call(items)`, told as progress lines when the judge is a model or an endpoint (seconds
        to minutes; the reference judge takes milliseconds and is not told)."""
        if not isinstance(self.judge, PromptJudge):
            return call(items)
        started = time.perf_counter()
        progress.say(f"judge: {what} ({self.judge.identity})...")
        out = call(items)
        progress.say(f"judge: {what}: done in {progress.duration(time.perf_counter() - started)}")
        return out

    @classmethod
    def from_thresholds(cls, thresholds, cache_dir: Path, device: str, dtype: str, *, questions: str | None = None,
                        judge: str | None = None, judge_url: str | None = None,
                        judge_model: str | None = None, run_id: str | None = None) -> JudgeSetup:
        """Options win over [judge]; relative paths in the thresholds file are relative to it."""
        from .judges import EndpointJudge, LocalJudge, ReferenceJudge
        from .prompts import PromptSet
        from .questions import read_questions, with_references

        get = lambda key: thresholds.get("judge", key)  # noqa: E731
        inputs = JudgeInputs.resolve(thresholds, questions=questions, judge=judge, judge_url=judge_url,
                                     judge_model=judge_model)
        settings = GenerationSettings(max_new_tokens=int(get("new_tokens")), device=device, dtype=dtype)
        prompts = PromptSet.load(inputs.prompts) if inputs.prompts else None
        if inputs.url:
            the_judge = EndpointJudge(inputs.url, inputs.model, cache_dir, key_env=get("api_key_env"),
                                      timeout=get("timeout"), retries=int(get("retries")),
                                      max_tokens=int(get("judge_new_tokens")), budget_s=get("budget_s"),
                                      prompts=prompts, budget_file=budget_file(run_id) if run_id else None)
        elif inputs.judge_path is None:
            the_judge = ReferenceJudge()
        else:
            from mergeqa.models.refs import ModelRef

            the_judge = LocalJudge(ModelRef(inputs.judge_path.name, inputs.judge_path, "judge"),
                                   GenerationSettings(max_new_tokens=int(get("judge_new_tokens")), device=device,
                                                      dtype=dtype), cache_dir, prompts=prompts)
        questions = read_questions(inputs.questions)
        if inputs.references:
            questions = with_references(questions, inputs.references)
        return cls(questions, the_judge, settings, Path(cache_dir), inputs.source,
                   get("min_win_rate"), get("score_margin"), get("score_test"), get("max_swap_disagreement"),
                   get("max_parse_errors"), thresholds.get("statistics", "alpha"), get("max_ungradable"))

    def figures(self) -> dict:
        """What names the judgment in junit: the judge, its prompts, the questions."""
        prompts = getattr(self.judge, "prompt_set", None)
        return {"judge": self.judge.identity, "prompts_hash": self.judge.prompts_hash,
                **({"prompts": prompts.source} if prompts is not None else {}),
                "questions": self.source, "n_questions": len(self.questions)}


# -- verdicts --------------------------------------------------------------------------------------
def unavailable_verdict(check: str, subject: str, exc: JudgeUnavailable) -> Verdict:
    text = str(exc)
    reason, _, fix = text.partition(" Fix: ")
    return Verdict(check, subject, "error", reason=reason, fix=fix)


def ungradable_verdict(check: str, setup: JudgeSetup, subject: str, ungradable: int, total: int, what: str,
                       figures: dict, data: dict) -> Verdict | None:
    """An error verdict when the judge could not grade more than [judge] max_ungradable of the
    `total` turns or questions (never a silent drop); None when few enough were ungradable."""
    if not total or ungradable / total <= setup.max_ungradable:
        return None
    return Verdict(check, subject, "error", figures, data=data,
                   reason=(f"the judge ({setup.judge.identity}) could not grade {ungradable} of {total} {what} "
                           f"({ungradable / total:.0%} > max_ungradable {setup.max_ungradable:g}): the reference judge "
                           "grades only references that are a short number, list or choice"),
                   fix=("name an LLM judge for open questions (--judge PATH, a local chat model, or --judge-url URL "
                        "--judge-model NAME), or raise [judge] max_ungradable knowingly"))


def score_verdict(setup: JudgeSetup, merged: ModelScores, parents: dict[str, ModelScores],
                  references: dict[str, ModelScores] | None = None) -> Verdict:
    """judge.score: per question, the merge's score minus the parents' mean score, tested with the
    paired test of mergeqa.decision.significance (non-inferiority margin `score_margin` points): pass when
    the merge is shown no worse than the parents' mean by more than the margin, fail when it is
    significantly worse, else inconclusive. Error when the judge's replies could not be parsed
    often enough, or no question was judged for every model."""
    from mergeqa.decision.significance import compare_paired

    models = {merged.model: merged, **parents}
    data = {"scores": {n: s.summary() for n, s in {**(references or {}), **models}.items()}}
    base = {**setup.figures(), "parse_errors": merged.parse_errors, "ungradable": merged.unjudged,
            **{f"{k}": v for k, v in merged.summary().items() if k in ("turn1", "turn2", "bleu", "chrf")}}
    worst = max(models.values(), key=lambda s: s.parse_error_rate())
    if worst.parse_error_rate() > setup.max_parse_errors:
        return Verdict("judge.score", merged.model, "error", base, data=data,
                       reason=(f"the judge ({setup.judge.identity}) gave no [[rating]] in {worst.parse_errors} of "
                               f"{worst.parse_errors + worst.judged} replies for {worst.model} "
                               f"({worst.parse_error_rate():.0%} > max_parse_errors {setup.max_parse_errors:g})"),
                       fix="use a stronger judge model, or raise [judge] judge_new_tokens so the reply reaches its tag")
    too_many = ungradable_verdict("judge.score", setup, merged.model, merged.unjudged,
                                  sum(len(ts) for ts in merged.turns), "turns", base, data)
    if too_many is not None:
        return too_many
    rows = [(m, [p.per_question[i] for p in parents.values()]) for i, m in enumerate(merged.per_question)]
    rows = [(m, ps) for m, ps in rows if m is not None and all(p is not None for p in ps)]
    if len(rows) < 2 or not parents:
        return Verdict("judge.score", merged.model, "error", base, data=data,
                       reason=f"only {len(rows)} questions were judged for the merge and every parent",
                       fix="give questions with references to the reference judge, or name an LLM judge (--judge/--judge-url)")
    ours = [m for m, _ in rows]
    mean_parents = [sum(ps) / len(ps) for _, ps in rows]
    c = compare_paired(ours, mean_parents, margin=setup.score_margin, alpha=setup.alpha, method=setup.score_test,
                       bounds=(1.0, 10.0))  # a rating's scale: what the betting test's size rests on
    obtained, reference = sum(ours) / len(ours), sum(mean_parents) / len(mean_parents)
    v = Verdict("judge.score", merged.model, c.verdict,
                {"obtained": round(obtained, 4), "reference": round(reference, 4), "threshold": round(reference, 4),
                 **{k: c.figures()[k] for k in ("effect", "ci_low", "ci_high", "p_regression", "p_noninferiority",
                                                 "n", "method", "margin")}, **base},
                summary=(f"judged two-turn score against the parents' mean on {c.n} of {len(merged.turns)} questions"
                         + (f" ({merged.unjudged} ungradable turns)" if merged.unjudged else "")),
                expected=f">= the parents' mean {reference:.3g} (non-inferiority margin {setup.score_margin:g})",
                delta=round(obtained - reference, 4), details=[c.describe("parents' mean")], data=data)
    if c.verdict == "fail":
        v.cause = "the merge answers worse than its parents on average: a skill was lost or the two-turn format broke"
        v.fix = "see test_retention for the skill that dropped; lower the interfering parent's weight or density"
    elif c.verdict == "inconclusive":
        v.fix = "add questions (--questions) or accept with [statistics] inconclusive = \"warn\""
    return v


def win_interval(ab: Pairwise, alpha: float) -> tuple[float, float]:
    """The (1 - 2 alpha) interval of the win rate with ties as half a win: 0.5 + effect / 2 with
    effect = P(win) - P(loss), each side the exact unconditional test of `ab_pvalues` inverted
    (ties are neither, so many ties narrow it as they should)."""
    from ..stats.exact_paired import exact_tango_interval

    low, high = exact_tango_interval(ab.count("win"), ab.count("loss"), ab.judged, confidence=1 - 2 * alpha)
    return 0.5 + low / 2, 0.5 + high / 2


def ab_pvalues(ab: Pairwise, floor: float) -> tuple[float, float]:
    """(p of "win rate above floor", p of "win rate below floor"), ties as half a win: exact
    unconditional tests (Chan 1998, Tango-ordered; `mergeqa.stats.exact_paired`) of the paired
    effect P(win) - P(loss) against 2 floor - 1, exact for any tie rate."""
    from ..stats.exact_paired import exact_tango_pvalue

    wins, losses, n, effect0 = ab.count("win"), ab.count("loss"), ab.judged, 2 * floor - 1
    return (exact_tango_pvalue(wins, losses, n, effect0=effect0, alternative="greater"),
            exact_tango_pvalue(wins, losses, n, effect0=effect0, alternative="less"))


def ab_verdict(setup: JudgeSetup, ab: Pairwise) -> Verdict:
    """ab.<parent>: win rate (ties as half) of the merge against the parent >= min_win_rate: pass
    when the exact test shows it above (p <= alpha), fail when shown below, else inconclusive
    (the (1 - 2 alpha) interval shown is those tests inverted); error when
    the swap-disagreement or parse-error rate passes its ceiling (the judge is not to be trusted)."""
    check = f"ab.{ab.parent}"
    fig = {**setup.figures(), "wins": ab.count("win"), "ties": ab.count("tie"), "losses": ab.count("loss"),
           "n": ab.judged, "swap_disagreement": round(ab.swap_disagreement, 4), "flips": ab.flips,
           "parse_errors": ab.parse_errors, "ungradable": ab.unjudged}
    data = {"parent": ab.parent, "win_rate": None if ab.win_rate is None else round(ab.win_rate, 4),
            "swap_disagreement": round(ab.swap_disagreement, 4), "parse_errors": ab.parse_errors}
    if ab.parse_error_rate() > setup.max_parse_errors:
        return Verdict(check, ab.merged, "error", fig, data=data,
                       reason=(f"the judge ({setup.judge.identity}) gave no [[A]]/[[B]]/[[C]] for {ab.parse_errors} of "
                               f"{ab.parse_errors + ab.judged} pairs ({ab.parse_error_rate():.0%} > max_parse_errors "
                               f"{setup.max_parse_errors:g})"),
                       fix="use a stronger judge model, or raise [judge] judge_new_tokens so the reply reaches its tag")
    too_many = ungradable_verdict(check, setup, ab.merged, ab.unjudged, len(ab.outcomes), "questions", fig, data)
    if too_many is not None:
        return too_many
    if ab.judged == 0:
        return Verdict(check, ab.merged, "error", fig, data=data,
                       reason=f"no question could be judged against {ab.parent} ({ab.unjudged} without a reference)",
                       fix="give the questions references, or name an LLM judge (--judge/--judge-url)")
    if ab.swap_disagreement > setup.max_swap_disagreement:
        return Verdict(check, ab.merged, "error", fig, data=data,
                       reason=(f"the judge ({setup.judge.identity}) changed its verdict when the answers swapped places "
                               f"on {ab.flips} of {ab.judged} questions ({ab.swap_disagreement:.0%} > "
                               f"max_swap_disagreement {setup.max_swap_disagreement:g}): position bias"),
                       fix="use a stronger judge, or raise [judge] max_swap_disagreement knowingly")
    rate, floor = ab.win_rate, setup.min_win_rate
    p_above, p_below = ab_pvalues(ab, floor)
    outcome = "pass" if p_above <= setup.alpha else "fail" if p_below <= setup.alpha else "inconclusive"
    low, high = win_interval(ab, setup.alpha)
    level = f"{100 * (1 - 2 * setup.alpha):g}%"
    data.update(ci_low=round(low, 4), ci_high=round(high, 4))
    v = Verdict(check, ab.merged, outcome,
                {"obtained": round(rate, 4), "threshold": floor, "ci_low": round(low, 4), "ci_high": round(high, 4),
                 "p_noninferiority": p_above, "p_regression": p_below, "method": "exact unconditional (Tango-ordered)",
                 **fig},
                summary=(f"A/B win rate against {ab.parent} (ties as half) on {ab.judged} questions, both orders "
                         f"({level} exact interval {low:.3f}..{high:.3f}; p(above {floor:g}) = {p_above:.2g})"),
                expected=f">= {floor:g} (the whole {level} interval)", delta=round(rate - floor, 4),
                details=[f"wins {ab.count('win')}, ties {ab.count('tie')} ({ab.flips} from flips), losses "
                         f"{ab.count('loss')}; swap disagreement {ab.swap_disagreement:.0%}"], data=data)
    if outcome == "fail":
        v.cause = f"the judge prefers {ab.parent}'s answers: the merge lost what {ab.parent} does well"
        v.fix = f"raise {ab.parent}'s weight or density on the merge, or compare retention per task"
    elif outcome == "inconclusive":
        v.fix = "add questions (--questions) or accept with [statistics] inconclusive = \"warn\""
    return v
