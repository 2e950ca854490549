"""What a gate without a [retention] suite says: one skipped retention parameter and one line
at the end of the run that names the built-in suites and `mergeqa init`."""

from __future__ import annotations

import pytest


def no_suite_line(thresholds) -> str:
    """The one line a run on another model without a [retention] suite reports."""
    suites = ", ".join(n for n in thresholds.values["suites"] if not n.startswith("family"))
    return ("mergeqa: retention and regression not measured: no [retention] suite for a model that is not "
            f"the embedded family (built-in suites: {suites}); `mergeqa init --model M --parents A B` writes "
            "a thresholds.toml that picks one or your own lm-eval tasks")


def no_suite_param(thresholds):
    """The single, skipped parameter of the retention tests when there is no suite."""
    from mergeqa.pytest_plugin.ledger import NOT_APPLICABLE_MARK

    return pytest.param(None, marks=[pytest.mark.skip(reason=no_suite_line(thresholds)),
                                     getattr(pytest.mark, NOT_APPLICABLE_MARK)], id="no-suite")


class NoSuiteNotice:
    """Prints no_suite_line once at the end of a run whose retention tests it skipped."""

    def __init__(self, thresholds):
        self.line = no_suite_line(thresholds)

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config) -> None:
        if hasattr(config, "workerinput"):
            return
        def reason(report) -> str:  # a skip's longrepr is (path, line, "Skipped: reason")
            longrepr = getattr(report, "longrepr", None)
            return str(longrepr[2] if isinstance(longrepr, tuple) else longrepr)

        if any(self.line in reason(r) for r in terminalreporter.stats.get("skipped", [])):
            terminalreporter.write_line(self.line)
