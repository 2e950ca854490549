"""Static lint of the merged checkpoint against its parents, from its files alone (mergeqa.inspect.lint):
finite tensors, names and shapes, vocabulary rows, tokenizer, special tokens, chat template, norms
and dtype. No forward pass: it runs before anything is loaded. Ids: test_lint[<merge>-<check>].
"""

from __future__ import annotations

import pytest

from mergeqa.inspect.lint import LINT_CHECKS


@pytest.fixture(scope="session")
def lint_results(merged_model, parent_models, base_model, thresholds):
    """{check: Verdict} for one merge; every lint check reads the checkpoint once. A merge whose
    directory holds mergekit_config.yml (or built from --merge-config) is compared tensor by
    tensor with the sources the config maps (mergeqa.models.provenance)."""
    from mergeqa.inspect.lint import LintLimits, lint_checkpoint

    if not any(merged_model.path.glob("*.safetensors")):
        pytest.skip(f"{merged_model.path}: the lint reads *.safetensors only; re-save the model with "
                    "save_pretrained(safe_serialization=True) to lint it")
    return lint_checkpoint(merged_model.path, [p.path for p in parent_models],
                           LintLimits.from_thresholds(thresholds), name=merged_model.name,
                           base=base_model.path if base_model is not None else None,
                           merge_config=merged_model.merge_config)


@pytest.mark.parametrize("check", LINT_CHECKS)
def test_lint(check, lint_results, request):
    from mergeqa.decision.verdict import decide

    decide(request, lint_results[check])
