"""Capability retention and regression against the parents, per task of the configured suite.

What is measured and which threshold applies; the engine evaluates (cached), mergeqa.retention.assess
decides. Parametrised by the plugin: test_retention[<merge>-<task>].
"""

from __future__ import annotations

from mergeqa.decision.verdict import decide


def test_retention(retention_verdicts, retention_task, request):
    decide(request, retention_verdicts[(retention_task, "retention")])


def test_no_regression(retention_verdicts, retention_task, request):
    decide(request, retention_verdicts[(retention_task, "regression")])
