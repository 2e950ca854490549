"""Property tests for merge operators, for authors of merge methods.

Layers, each importing only those before it: ``strategies`` (tensors), ``description`` (what an
operator promises: ``MergeOperator``), ``inputs`` (one call, realistic or degenerate),
``catalogue`` (the properties), ``runner`` (hypothesis search, ``check_merge_operator``);
``mergekit_adapter`` describes mergekit's methods and ``findings`` lists what mergekit 0.1.5
violates. Importing this package is cheap: torch, hypothesis and mergekit load when a name below
is used.

    from mergeqa.operators import check_merge_operator
    check_merge_operator(my_merge, ["idempotent", "order_invariant"], weights="weight")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Endpoint": "description",
    "MergeOperator": "description",
    "PerModel": "description",
    "PropertyViolation": "description",
    "MergeInputs": "inputs",
    "RealisticInputs": "inputs",
    "REGIMES": "inputs",
    "merge_inputs": "inputs",
    "realistic_inputs": "inputs",
    "CATALOGUE": "catalogue",
    "MergeProperty": "catalogue",
    "estimate_bias": "catalogue",
    "get_property": "catalogue",
    "PropertyResult": "runner",
    "as_operator": "runner",
    "check_merge_operator": "runner",
    "evaluate": "runner",
    "run_property": "runner",
    "mergekit_operator": "mergekit_adapter",
}

__all__ = [*_EXPORTS, "PROFILES", "register_profiles"]

#: Settings of the two hypothesis profiles ``register_profiles`` registers.
PROFILES: dict[str, dict[str, Any]] = {
    # CI: few examples, the same ones every run (derandomize also turns the example database off);
    # realistic tensors of up to 2**14 entries (inputs.REALISTIC_MAX_ENTRIES).
    "mergeqa-default": {"max_examples": 10, "derandomize": True},
    # Local hunting: many random examples, failures remembered in .hypothesis/; realistic tensors
    # of up to 2**21 entries, where fp16 reductions overflow.
    "mergeqa-thorough": {"max_examples": 200, "derandomize": False},
    # Real sizes: the size-sensitive properties (fp16_finite, low_precision_agrees) merge real
    # Llama/Mistral/Qwen2 matrices of 1e7..6e7 entries (inputs.REAL_SHAPES; row blocks for local
    # operators), the others tensors of up to 2**21 entries; 2 derandomized examples per cell.
    "mergeqa-large": {"max_examples": 2, "derandomize": True},
}


def register_profiles(load: str | None = "mergeqa-default") -> None:
    """Register the hypothesis profiles "mergeqa-default" (fast, derandomized: CI),
    "mergeqa-thorough" (200 random examples per property) and "mergeqa-large" (real matrix sizes
    for the fp16 properties, minutes per method on a CPU), then load ``load`` (``None``: keep the
    current profile). Deadlines are off in both: CPU timings of tensor code jitter. Call it once
    from the root conftest.py; ``pytest --hypothesis-profile=mergeqa-thorough`` then switches.
    """
    from hypothesis import HealthCheck, settings

    for name, values in PROFILES.items():
        settings.register_profile(name, deadline=None, suppress_health_check=[HealthCheck.too_slow], **values)
    if load is not None:
        if load not in PROFILES:
            from mergeqa.core.errors import MergeQAUsageError, did_you_mean

            raise MergeQAUsageError(f"unknown mergeqa hypothesis profile {load!r}." + did_you_mean(load, PROFILES))
        settings.load_profile(load)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
