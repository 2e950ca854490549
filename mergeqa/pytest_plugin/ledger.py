"""The run's ledger: every test collected for each merge and how it ended, on the process that
writes the reports (the only process, or the xdist controller), so a merge whose checks errored,
were skipped or never ran is never reported deployable (mergeqa.report.status decides from it).

A test is per merge when it runs on the `merged_model` fixture. Collected tests come from
`pytest_collection_modifyitems` (no xdist: the items and their parameter) or, under xdist, from
the workers' collection (node ids, matched to the merge names they are parametrised with, in a run
that asked for a gate). Outcomes come from the test reports, which carry their merge; an
interrupt marks the whole run.
"""

from __future__ import annotations

import re

import pytest

from mergeqa.core.state import run_record_key, session_key
from mergeqa.report.status import RunRecord, TestOutcome

#: the mark of a parameter that is skipped because its check does not apply (no [retention] suite)
NOT_APPLICABLE_MARK = "mergeqa_not_applicable"


def merge_of(nodeid: str, merges: list[str]) -> str | None:
    """The merge a test id is parametrised with (`test_x[ties]`, `test_y[subject_number-ties]`),
    the longest name that is a whole dash-separated part of the id's parameters; None if none."""
    m = re.search(r"\[(.*)\]$", nodeid)
    if not m:
        return None
    params = m.group(1)
    found = [name for name in merges
             if re.search(rf"(?:^|-){re.escape(name)}(?:-|$)", params)]
    return max(found, key=len) if found else None


def merge_param(item) -> str | None:
    """The merge a collected test runs on: its `merged_model` parameter, None for other tests."""
    merge = getattr(getattr(item, "callspec", None), "params", {}).get("merged_model")
    return merge if isinstance(merge, str) else None


def _reason(report) -> str:
    """One line from a report's long representation (its last non-empty line, shortened)."""
    crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
    text = crash or getattr(report, "longreprtext", "") or ""  # the exception's own line first
    if isinstance(report.longrepr, tuple):  # a skip: (path, line, "Skipped: why")
        text = str(report.longrepr[2])
    elif not crash and isinstance(report.longrepr, str):  # xdist's crash report, a usage error
        text = report.longrepr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = (lines[0] if crash else lines[-1]) if lines else ""
    return line if len(line) <= 160 else line[:157] + "..."


class RunLedger:
    """Registered by pytest_configure on the controller. `config.stash[run_record_key]` holds the
    RunRecord it fills."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.record = config.stash[run_record_key] = RunRecord()
        self._collected_from_worker = False

    def _merges(self) -> list[str]:
        gate = self.config.stash.get(session_key, None)
        return list(gate.merged_names) if gate is not None else []

    def _add(self, nodeid: str, merge: str | None) -> None:
        self.record.tests.setdefault(nodeid, TestOutcome(merge))

    def _requested(self) -> bool:
        opt = self.config.option
        return bool(opt.model or opt.merge_config or opt.gate)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session, config, items) -> None:
        for item in items:
            self._add(item.nodeid, merge_param(item))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids) -> None:
        """xdist: the controller sees ids only. In a run that asked for a gate, an id's merge is
        read from its parameters (so a test that never reports is still counted); otherwise only
        the reports say which tests are per merge."""
        if self._collected_from_worker or not self._requested():  # every worker collects the same ids
            return
        self._collected_from_worker = True
        merges = self._merges()
        for nodeid in ids:
            self._add(nodeid, merge_of(nodeid, merges))

    def pytest_runtest_logreport(self, report) -> None:
        test = self.record.tests.get(report.nodeid)
        if test is None:
            merge = getattr(report, "mergeqa_merge", None)
            if merge is None and self._requested():  # a report xdist made for a crashed worker
                merge = merge_of(report.nodeid, self._merges())
            test = self.record.tests[report.nodeid] = TestOutcome(merge)
        elif test.merge is None and getattr(report, "mergeqa_merge", None):
            test.merge = report.mergeqa_merge
        if report.when == "call" or (report.when == "setup" and not report.passed) or report.failed:
            test.outcome, test.reason = self._outcome(report), ("" if report.passed else _reason(report))

    @staticmethod
    def _outcome(report) -> str:
        if report.passed:
            return "passed"
        if report.failed:
            return "failed" if report.when == "call" else "error"
        dicts = getattr(report, "mergeqa_verdicts", None) or []
        if dicts and all(d.get("outcome") == "not_applicable" for d in dicts):
            return "not_applicable"
        if NOT_APPLICABLE_MARK in getattr(report, "keywords", {}):
            return "not_applicable"
        return "skipped"

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo) -> None:
        self.record.interrupted = True


class InterruptGuard:
    """Keeps a Ctrl-C an interrupt. pytest's terminal reporter formats the interrupted traceback
    in its pytest_keyboard_interrupt; when the signal lands in a frame without a line number that
    formatting raises (TypeError on tb_lineno None), and the run ended with exit code 1 and no
    "interrupted" anywhere: the Ctrl-C read as swallowed. The error is reported in one line and
    the run stays interrupted (exit 2)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl(wrapper=True)
    def pytest_keyboard_interrupt(self, excinfo):
        try:
            return (yield)
        except Exception as exc:  # noqa: BLE001 (a reporter's failure to format, not the run's)
            import sys

            sys.stderr.write(f"mergeqa: interrupted (the traceback could not be shown: {type(exc).__name__}: {exc})\n")
            self._plain_memo()
            return None

    def _plain_memo(self) -> None:
        """The terminal reporter prints its memo of the interrupt at session end and asserts it has
        one: give it the bare line it would have shown."""
        from _pytest._code.code import ReprFileLocation

        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and getattr(reporter, "_keyboardinterrupt_memo", None) is None:
            crash = ReprFileLocation("", 0, "KeyboardInterrupt")

            class _Plain:
                reprcrash = crash

                @staticmethod
                def toterminal(tw) -> None:
                    crash.toterminal(tw)

            reporter._keyboardinterrupt_memo = _Plain()


def is_gate_run(config: pytest.Config, record: RunRecord) -> bool:
    """A run that gates merges: asked for (--model, --merge-config, --gate), or one whose tests
    are parametrised per merge. mergeqa's own test suite, say, is not."""
    opt = config.option
    return bool(opt.model or opt.merge_config or opt.gate or any(t.merge for t in record.tests.values()))


def finish(session: pytest.Session, verdicts: list) -> list:
    """At the end of a gate run, on the controller: each merge's status (kept in the stash for the
    reports), junit run properties `mergeqa.run.verdict`, `mergeqa.run.merge.<name>.verdict` and
    `.parents`, and an exit code that agrees with them (a merge not shown deployable never exits 0)."""
    from mergeqa.core.state import run_status_key
    from mergeqa.decision.verdict import inconclusive_policy
    from mergeqa.report.status import merge_statuses, run_state

    config = session.config
    record = config.stash.get(run_record_key, None)
    if record is None or not is_gate_run(config, record):
        return []
    gate = config.stash.get(session_key, None)
    merges = list(gate.merged_names) if gate is not None and (config.option.model or config.option.merge_config
                                                              or config.option.gate) else []
    merges += sorted({t.merge for t in record.tests.values() if t.merge} - set(merges))
    statuses = config.stash[run_status_key] = merge_statuses(verdicts, record, merges, inconclusive_policy(config))
    state = run_state(statuses, record)
    if record.interrupted:  # whatever else went wrong on the way out, an interrupt exits 2
        session.exitstatus = pytest.ExitCode.INTERRUPTED
    if state != "deployable" and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is not None:
        xml.add_global_property("mergeqa.run.verdict", state)
        for s in statuses:
            xml.add_global_property(f"mergeqa.run.merge.{s.merge}.verdict", s.state)
            if gate is not None and s.merge in gate.merged_names:  # what it was compared with
                xml.add_global_property(f"mergeqa.run.merge.{s.merge}.parents", ", ".join(gate.parent_names(s.merge)))
    return statuses
