"""Capability retention and regression against the parents, per task of the configured suite.

What is measured and which threshold applies; the engine evaluates (cached), mergeqa.retention
decides. Parametrised by the plugin: test_retention[<merge>-<task>].
"""

from __future__ import annotations

import warnings

import pytest


def _decide(finding, thresholds, record_figure) -> None:
    for name, value in finding.figures.items():
        record_figure(finding.kind, name, value)
    record_figure(finding.kind, "obtained", finding.merged_score)
    record_figure(finding.kind, "threshold", finding.threshold)
    record_figure(finding.kind, "reference", finding.reference)
    if finding.verdict == "fail":
        pytest.fail(finding.message, pytrace=False)
    if finding.verdict == "inconclusive":
        action = thresholds.get("statistics", "inconclusive")
        record_figure(finding.kind, "inconclusive_action", action)
        if action == "fail":
            pytest.fail(finding.message, pytrace=False)
        if action == "xfail":
            pytest.xfail(finding.message)
        warnings.warn(finding.message, stacklevel=1)


def test_retention(retention_findings, retention_task, thresholds, record_figure):
    _decide(retention_findings[(retention_task, "retention")], thresholds, record_figure)


def test_no_regression(retention_findings, retention_task, thresholds, record_figure):
    _decide(retention_findings[(retention_task, "regression")], thresholds, record_figure)
