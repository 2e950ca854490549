"""Conflicting behaviours: on prompt pairs whose answers must agree (12 + 7 and 7 + 12) or must
differ, the merge's conflict rate is under [conflict] max_conflict_rate, not significantly above
its parents', and the merge agrees with the parent that owns each skill. Measuring and deciding
are in mergeqa.conflict.consistency; answers are generated greedily and cached by mergeqa.evaluate.generation.
"""

from __future__ import annotations

import pytest

from mergeqa.decision.verdict import decide


@pytest.fixture(scope="session")
def conflict_setup(pytestconfig, mergeqa_session, thresholds):
    """The pairs, agreement rule and limits of this run (mergeqa.conflict.consistency.ConflictSetup), or
    None when there are no pairs for this run's models (a model that is not the embedded family and no
    --conflict-pairs); a bad pairs file is a MergeQAUsageError, which the plugin reports in one line."""
    from mergeqa.conflict.consistency import ConflictSetup, not_measured
    from mergeqa.models.refs import resolve_device

    if not_measured(thresholds, embedded=mergeqa_session.embedded, pairs_option=pytestconfig.option.conflict_pairs):
        return None  # the checks say why, as not_applicable
    return ConflictSetup.from_thresholds(thresholds, pytestconfig.option.conflict_pairs, mergeqa_session.cache_dir,
                                         resolve_device(mergeqa_session.device), mergeqa_session.dtype)


def _not_run(check: str, merged_model, request):
    from mergeqa.conflict.consistency import not_measured
    from mergeqa.decision.verdict import Verdict

    reason = not_measured(request.getfixturevalue("thresholds"), embedded=False,
                          pairs_option=request.config.option.conflict_pairs)
    return Verdict(check, merged_model.name, "not_applicable", reason=reason)


def test_conflict_rate(merged_model, parent_models, base_model, conflict_setup, request):
    from mergeqa.conflict.consistency import rate_verdict

    if conflict_setup is None:
        return decide(request, _not_run("conflict.rate", merged_model, request))
    refs = [*([base_model] if base_model is not None else []), *parent_models]
    references = {r.name: conflict_setup.run(r) for r in refs}  # for the report: base and parents' rates
    decide(request, rate_verdict(conflict_setup.run(merged_model), conflict_setup.max_rate, conflict_setup.alpha,
                                 references=references))


def test_conflict_vs_parents(merged_model, parent_models, conflict_setup, request):
    from mergeqa.conflict.consistency import paired_verdicts

    if conflict_setup is None:
        return decide(request, *(_not_run(f"conflict.paired.{p.name}", merged_model, request) for p in parent_models))

    parents = {p.name: conflict_setup.run(p) for p in parent_models}
    decide(request, *paired_verdicts(conflict_setup.run(merged_model), parents, conflict_setup.alpha,
                                     conflict_setup.correction))


def test_agrees_with_skill_owner(merged_model, parent_models, conflict_setup, request):
    from mergeqa.conflict.consistency import owner_verdict
    from mergeqa.decision.verdict import Verdict

    if conflict_setup is None:
        return decide(request, _not_run("conflict.owner", merged_model, request))
    by_name = {p.name: p for p in parent_models}
    verdicts = []
    for skill, owner in conflict_setup.owners.items():
        prompts = conflict_setup.skill_prompts(skill)
        if owner not in by_name or not prompts:
            why = (f"no parent named {owner!r} ([conflict] owners: {skill} = {owner!r}; parents: "
                   f"{', '.join(by_name)})" if owner not in by_name else f"no consistency pair has skill {skill!r}")
            verdicts.append(Verdict(f"conflict.owner.{skill}", merged_model.name, "not_applicable", reason=why))
            continue
        verdicts.append(owner_verdict(conflict_setup.run(merged_model), conflict_setup.run(by_name[owner]), skill,
                                      prompts, conflict_setup.floor, conflict_setup.alpha, conflict_setup.rule))
    if not verdicts:
        verdicts.append(Verdict("conflict.owner", merged_model.name, "not_applicable",
                                reason="[conflict] owners is empty"))
    decide(request, *verdicts)
