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
    """Questions, judge and limits of this run (mergeqa.judge.JudgeSetup), or None when there are
    no questions for this run's models (a model that is not the embedded family and no --questions);
    a bad question file or judge is a MergeQAUsageError, which the plugin reports in one line."""
    from mergeqa.judge import JudgeSetup
    from mergeqa.models.refs import resolve_device

    from mergeqa.judge.evaluation import not_measured

    opt = pytestconfig.option
    if not_measured(thresholds, embedded=mergeqa_session.embedded, questions=opt.questions):
        return None  # the checks say why, as not_applicable
    import os

    # one budget for the run: xdist's workers share its testrunuid; a single process has its own id
    run_id = getattr(pytestconfig, "workerinput", {}).get("testrunuid") or f"{os.getpid()}-{id(pytestconfig)}"
    return JudgeSetup.from_thresholds(thresholds, mergeqa_session.cache_dir, resolve_device(mergeqa_session.device),
                                      mergeqa_session.dtype, questions=opt.questions, judge=opt.judge,
                                      judge_url=opt.judge_url, judge_model=opt.judge_model, run_id=run_id)


def _not_run(check: str, merged_model, request):
    from mergeqa.decision.verdict import Verdict
    from mergeqa.judge.evaluation import not_measured

    opt = request.config.option
    reason = not_measured(request.getfixturevalue("thresholds"), embedded=False, questions=opt.questions)
    return Verdict(check, merged_model.name, "not_applicable", reason=reason)


def test_judged_score(merged_model, parent_models, base_model, judge_setup, request):
    from mergeqa.judge import JudgeUnavailable, score_verdict
    from mergeqa.judge.evaluation import unavailable_verdict

    if judge_setup is None:
        return decide(request, _not_run("judge.score", merged_model, request))
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

    if judge_setup is None:
        return decide(request, *(_not_run(f"ab.{p.name}", merged_model, request) for p in parent_models))
    verdicts = []
    for parent in parent_models:
        try:
            verdicts.append(ab_verdict(judge_setup, judge_setup.pairwise(merged_model, parent)))
        except JudgeUnavailable as exc:
            verdicts.append(unavailable_verdict(f"ab.{parent.name}", merged_model.name, exc))
    decide(request, *verdicts)
