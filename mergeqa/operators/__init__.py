"""Property tests for merge operators: hypothesis strategies, a catalogue of properties, and
``check_merge_operator`` for authors of merge methods.

Importing this package is cheap: torch, hypothesis and mergekit load when a name below is used.

    from mergeqa.operators import check_merge_operator
    check_merge_operator(my_merge, ["idempotent", "order_invariant"], weights="weight")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CATALOGUE": "properties",
    "Endpoint": "properties",
    "MergeInputs": "properties",
    "MergeOperator": "properties",
    "MergeProperty": "properties",
    "PerModel": "properties",
    "PropertyResult": "properties",
    "PropertyViolation": "properties",
    "as_operator": "properties",
    "check_merge_operator": "properties",
    "evaluate": "properties",
    "get_property": "properties",
    "merge_inputs": "properties",
    "mergekit_operator": "mergekit_adapter",
}

__all__ = [*_EXPORTS, "PROFILES", "register_profiles"]

#: Settings of the two hypothesis profiles ``register_profiles`` registers.
PROFILES: dict[str, dict[str, Any]] = {
    # CI: few examples, the same ones every run (derandomize also turns the example database off).
    "mergeqa-default": {"max_examples": 10, "derandomize": True},
    # Local hunting: many random examples, failures remembered in .hypothesis/.
    "mergeqa-thorough": {"max_examples": 200, "derandomize": False},
}


def register_profiles(load: str | None = "mergeqa-default") -> None:
    """Register the hypothesis profiles "mergeqa-default" (fast, derandomized: CI) and
    "mergeqa-thorough" (200 random examples per property), then load ``load`` (``None``: keep the
    current profile). Deadlines are off in both: CPU timings of tensor code jitter. Call it once
    from the root conftest.py; ``pytest --hypothesis-profile=mergeqa-thorough`` then switches.
    """
    from hypothesis import HealthCheck, settings

    for name, values in PROFILES.items():
        settings.register_profile(name, deadline=None, suppress_health_check=[HealthCheck.too_slow], **values)
    if load is not None:
        if load not in PROFILES:
            from mergeqa.errors import MergeQAUsageError, did_you_mean

            raise MergeQAUsageError(f"unknown mergeqa hypothesis profile {load!r}." + did_you_mean(load, PROFILES))
        settings.load_profile(load)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
