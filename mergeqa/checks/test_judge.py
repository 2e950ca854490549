"""Judged evaluation, MT-Bench style: two-turn answers of the merge and its parents graded by a
judge (the offline reference judge by default; --judge PATH or --judge-url URL --judge-model NAME).
The merge's judged score must not fall below the parents' mean (paired test over questions), and
its A/B win rate against each parent, judged in both orders, must reach [judge] min_win_rate.
Measuring and deciding are in mergeqa.judge; answers are cached by mergeqa.evaluate.generation.
"""

from __future__ import annotations

import pytest

from mergeqa.decision.verdict import decide


@pytest.fixture(scope="session")
def judge_setup(pytestconfig, mergeqa_session, thresholds):
    """Questions, judge and limits of this run (mergeqa.judge.JudgeSetup); a bad question file or
    judge is a MergeQAUsageError, which the plugin reports in one line."""
    from mergeqa.judge import JudgeSetup
    from mergeqa.models.refs import resolve_device

    opt = pytestconfig.option
    return JudgeSetup.from_thresholds(thresholds, mergeqa_session.cache_dir, resolve_device(mergeqa_session.device),
                                      mergeqa_session.dtype, questions=opt.questions, judge=opt.judge,
                                      judge_url=opt.judge_url, judge_model=opt.judge_model)


def test_judged_score(merged_model, parent_models, base_model, judge_setup, request):
    from mergeqa.judge import JudgeUnavailable, score_verdict
    from mergeqa.judge.evaluation import unavailable_verdict

    try:
        parents = {p.name: judge_setup.scores(p) for p in parent_models}
        base = {base_model.name: judge_setup.scores(base_model)} if base_model is not None else {}
        verdict = score_verdict(judge_setup, judge_setup.scores(merged_model), parents, references=base)
    except JudgeUnavailable as exc:
        verdict = unavailable_verdict("judge.score", merged_model.name, exc)
    decide(request, verdict)


def test_ab_win_rate(merged_model, parent_models, judge_setup, request):
    from mergeqa.judge import JudgeUnavailable, ab_verdict
    from mergeqa.judge.evaluation import unavailable_verdict

    verdicts = []
    for parent in parent_models:
        try:
            verdicts.append(ab_verdict(judge_setup, judge_setup.pairwise(merged_model, parent)))
        except JudgeUnavailable as exc:
            verdicts.append(unavailable_verdict(f"ab.{parent.name}", merged_model.name, exc))
    decide(request, *verdicts)
