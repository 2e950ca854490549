"""Behavioural sanity of the merged model before any benchmark (mergeqa.inspect.sanity): it generates,
coherently, follows an instruction through its chat template, does not loop, has finite logits,
is deterministic under greedy decoding, and its held-out perplexity is not far past the parents'.
A prompt the merge fails is asked of the parents too; one they all fail is not held against the merge.
What to measure and which threshold; the measuring is in mergeqa.inspect.sanity and mergeqa.evaluate.engine.
"""

from __future__ import annotations

import pytest

from mergeqa.decision.verdict import decide
from mergeqa.inspect import sanity


@pytest.fixture(scope="session")
def sanity_run(merged_model, mergeqa_session, thresholds):
    """Two greedy runs of [sanity.prompts] on one merge, shared by the generation checks."""
    from mergeqa.models.refs import resolve_device

    prompts = sanity.parse_prompts(thresholds.get("sanity", "prompts"))
    return sanity.sanity_run(merged_model, resolve_device(mergeqa_session.device), mergeqa_session.dtype,
                             prompts, thresholds.get("sanity", "new_tokens"))


@pytest.fixture(scope="session")
def parent_answers(mergeqa_session, thresholds):
    """parent_answers(run, chat) -> {parent: {prompt: Generation}} for the prompts the merge failed;
    when it failed none, no parent is asked (or loaded). Each parent answers a prompt once a session."""
    from mergeqa.models.refs import resolve_device

    device, memo = resolve_device(mergeqa_session.device), {}

    def answers(run, chat: bool):
        wanted = sanity.rejected(run, chat)
        if not wanted:
            return {}
        parents = mergeqa_session.parents(run.model)
        for ref in parents:
            todo = [p for p in wanted if (ref.path, p.name) not in memo]
            if todo:
                got = sanity.parent_generations([ref], todo, device, mergeqa_session.dtype,
                                                thresholds.get("sanity", "new_tokens"))[ref.name]
                memo.update({(ref.path, name): gen for name, gen in got.items()})
        return {ref.name: {p.name: memo[(ref.path, p.name)] for p in wanted} for ref in parents}

    return answers


def test_generates(sanity_run, request):
    decide(request, sanity.check_generates(sanity_run))


def test_coherent(sanity_run, parent_answers, thresholds, request):
    decide(request, sanity.check_coherent(sanity_run, parent_answers(sanity_run, chat=False),
                                          thresholds.get("sanity", "parents_fail")))


def test_follows_chat_instruction(sanity_run, parent_answers, thresholds, request):
    decide(request, sanity.check_chat_instruction(sanity_run, parent_answers(sanity_run, chat=True),
                                                  thresholds.get("sanity", "parents_fail")))


def test_no_degenerate_repetition(sanity_run, thresholds, request):
    get = lambda key: thresholds.get("sanity", key)  # noqa: E731
    result = sanity.check_repetition(sanity_run, get("max_repetition_rate"), get("max_repeated_span"),
                                     get("repetition_ngram"))
    decide(request, result)


def test_logits_finite(sanity_run, request):
    decide(request, sanity.check_logits_finite(sanity_run))


def test_greedy_deterministic(sanity_run, request):
    decide(request, sanity.check_deterministic(sanity_run))


def test_perplexity(merged_model, parent_models, mergeqa_session, eval_settings, thresholds, request):
    from mergeqa.models.refs import resolve_device

    task = thresholds.get("sanity", "perplexity_task")
    if not task:  # no held-out text known to fit this model: say how to give one
        from mergeqa.decision.verdict import Verdict

        decide(request, Verdict("sanity.perplexity", merged_model.name, "not_applicable", reason=(
            "no [sanity] perplexity_task: name an lm-eval loglikelihood_rolling task whose data is on "
            "this machine (e.g. wikitext); `mergeqa init` writes the key")))
        return
    model = merged_model.model(resolve_device(mergeqa_session.device), mergeqa_session.dtype)
    problem = sanity.vocabulary_problem(model, merged_model.tokenizer())
    ppl = None
    if problem is None:
        family_tasks = mergeqa_session.family().tasks_dir if task.startswith("family_") else None
        ppl = sanity.perplexity(merged_model, parent_models, eval_settings, task, family_tasks)
    result = sanity.check_perplexity(ppl, thresholds.get("sanity", "max_perplexity_ratio"), merged_model.name, problem)
    decide(request, result)
