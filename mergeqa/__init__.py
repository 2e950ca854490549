"""mergeqa: a pytest quality gate for merged LLM checkpoints.

The public API, what your own tests and tools import, is listed here and kept stable:

    from mergeqa import Verdict, decide        # a check of your own (see docs/guide.md)
    from mergeqa import ModelRef, MergeQAUsageError
    from mergeqa import operators              # the hypothesis kit for merge operators

The fixtures (`merged_model`, `parent_models`, `base_model`, `thresholds`, `eval_settings`,
`evaluations`, `record_figure`, `mergeqa_session`) come from the pytest plugin
(`mergeqa.pytest_plugin`). Everything else is internal and may move; the packages follow the
flow core -> decision -> models -> inspect -> evaluate -> checks -> report -> pytest plugin -> cli
(docs/design/layout.md).

Import-light on purpose: torch, transformers, mergekit and lm_eval are imported where they are
used, so `pytest --help` and the statistics tests stay fast; the names below load on first use.
"""

from __future__ import annotations

import importlib

from mergeqa import _moved

__version__ = "0.1.0"

#: public name -> the module that defines it
PUBLIC_API = {
    "Verdict": "mergeqa.decision.verdict",
    "decide": "mergeqa.decision.verdict",
    "interval_outcome": "mergeqa.decision.verdict",
    "InconclusiveAccepted": "mergeqa.decision.verdict",
    "ModelRef": "mergeqa.models.refs",
    "MergeQAUsageError": "mergeqa.core.errors",
    "load_thresholds": "mergeqa.decision.thresholds",
    "Thresholds": "mergeqa.decision.thresholds",
}
__all__ = [*PUBLIC_API, "operators"]

_moved.install()


def __getattr__(name: str):
    if name in PUBLIC_API:
        return getattr(importlib.import_module(PUBLIC_API[name]), name)
    if name == "operators":
        return importlib.import_module("mergeqa.operators")
    raise AttributeError(f"module 'mergeqa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
