"""Inference cost against the parents: the guide's "model size acceptable" (size on disk, peak
memory) and "inference speed acceptable" (prefill and decode tokens/s, latency), as ratios with
the limits of `[cost]`. mergeqa.inspect.cost measures the merge and its parents together on the prompts of
[sanity.prompts]; a depth up-scaled merge is expected to be bigger and slower by its layer ratio.
Figures: mergeqa.cost.size.*, cost.memory.*, cost.prefill.*, cost.decode.*, cost.latency.*.
"""

from __future__ import annotations

import pytest

from mergeqa.decision.verdict import decide


@pytest.fixture(scope="session")
def cost_measurements(merged_model, parent_models, mergeqa_session, thresholds):
    """[merge, *parents] as CostMeasurements, measured in one go."""
    from mergeqa.inspect import cost, sanity
    from mergeqa.models.refs import resolve_device

    get = lambda key: thresholds.get("cost", key)  # noqa: E731
    prompts = sanity.parse_prompts(thresholds.get("sanity", "prompts"))
    return cost.measure_costs([merged_model, *parent_models], prompts,
                              device=resolve_device(mergeqa_session.device), dtype=mergeqa_session.dtype,
                              new_tokens=get("new_tokens"), repeats=get("repeats"))


def test_model_size(cost_measurements, thresholds, request):
    from mergeqa.inspect.cost import size_verdicts

    merged, *parents = cost_measurements
    decide(request, *size_verdicts(merged, parents, max_size_ratio=thresholds.get("cost", "max_size_ratio"),
                                   max_memory_ratio=thresholds.get("cost", "max_memory_ratio")))


def test_inference_speed(cost_measurements, thresholds, request):
    from mergeqa.inspect.cost import speed_verdicts

    merged, *parents = cost_measurements
    decide(request, *speed_verdicts(merged, parents, min_speed_ratio=thresholds.get("cost", "min_speed_ratio"),
                                    max_latency_ratio=thresholds.get("cost", "max_latency_ratio")))
