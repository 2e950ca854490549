"""One source of truth for a merge's verdict: deployable only when every test collected for it ran
to a pass (or a not-applicable skip) and every verdict it reached is accepted.

The terminal lines, summary.md, report.html, the GitHub step summary, junit's run properties and
the exit code all read `merge_statuses`:

    record = RunRecord(tests={"test_load[ties]": TestOutcome("ties", "passed")})
    [status] = merge_statuses(verdicts, record, ["ties"], policy="fail")
    status.state     # "deployable", "not_deployable", "interrupted" or "no_checks"
    status.line      # "ties: deployable: all 1 checks pass"

A test that errored, failed without a verdict, was skipped for another reason than not_applicable,
or never ran (interrupt, -x, --maxfail, a crashed xdist worker) counts against its merge, and the
line says which and how many. An interrupted run has no verdict for any merge. Not for deciding
a check: that is `mergeqa.decision.verdict.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TEST_OUTCOMES = ("passed", "not_applicable", "failed", "error", "skipped", "not_run")
STATES = ("deployable", "not_deployable", "interrupted", "no_checks")
CHECK_ORDER = ("load", "config", "weights", "lint", "sanity", "retention", "regression", "probing")


def check_rank(check: str) -> int:
    """Where a check stands in the order a reader meets them (load first, probing last)."""
    head = check.split(".")[0]
    return CHECK_ORDER.index(head) if head in CHECK_ORDER else len(CHECK_ORDER)


@dataclass
class TestOutcome:
    """How one collected test ended: `merge` it belongs to (None: not a per-merge test), one of
    TEST_OUTCOMES, and a one-line reason for anything but a pass."""

    __test__ = False  # not a pytest test class

    merge: str | None
    outcome: str = "not_run"
    reason: str = ""


@dataclass
class RunRecord:
    """Every test the run collected, by node id, and whether the run was interrupted. Filled by
    the plugin (mergeqa.pytest_plugin.ledger); plain data, so reports and tests can build one."""

    tests: dict[str, TestOutcome] = field(default_factory=dict)
    interrupted: bool = False

    def of(self, merge: str) -> dict[str, TestOutcome]:
        return {nodeid: t for nodeid, t in self.tests.items() if t.merge == merge}

    def unfinished(self) -> dict[str, TestOutcome]:
        """Tests not tied to a merge that did not pass (a user's own run-wide test)."""
        return {n: t for n, t in self.tests.items() if t.merge is None and t.outcome not in ("passed", "not_applicable")}


@dataclass
class MergeStatus:
    merge: str
    state: str
    line: str
    first: str = ""  # the first thing against the merge, "check: outcome: ..." (empty when deployable)
    counts: dict[str, int] = field(default_factory=dict)  # test outcome -> count, for this merge

    @property
    def deployable(self) -> bool:
        return self.state == "deployable"


def _accepted(verdict, policy: str) -> bool:
    return verdict.ok or (verdict.outcome == "inconclusive" and policy == "warn")


def _test_summary(counts: dict[str, int]) -> str:
    parts = [f"{counts[o]} {label}" for o, label in (("failed", "failed without a verdict"), ("error", "errored"),
                                                      ("skipped", "skipped"), ("not_run", "did not run"))
             if counts.get(o)]
    return ", ".join(parts)


def merge_status(merge: str, verdicts: list, tests: dict[str, TestOutcome], policy: str,
                 interrupted: bool = False) -> MergeStatus:
    """The status of one merge from its verdicts and its collected tests (see the module docstring)."""
    counts = {o: sum(t.outcome == o for t in tests.values()) for o in TEST_OUTCOMES}
    ran = len(tests) - counts["not_run"]
    if interrupted:
        return MergeStatus(merge, "interrupted", f"{merge}: interrupted: no verdict ({ran} of {len(tests)} tests ran)",
                           "the run was interrupted", counts)
    vs = sorted(verdicts, key=lambda v: check_rank(v.check))
    against = [v for v in vs if not _accepted(v, policy)]
    # a test that failed with verdicts is already counted by them; one without is counted here
    unfinished = {n: t for n, t in tests.items() if t.outcome in ("error", "skipped", "not_run")
                  or (t.outcome == "failed" and not any(v.test == n for v in against))}
    if not vs and not tests:
        return MergeStatus(merge, "no_checks", f"{merge}: NOT deployable: no check ran", "no check ran", counts)
    measured = [v for v in vs if v.outcome != "not_applicable"]
    if not against and not unfinished and not measured and all(t.outcome == "not_applicable" for t in tests.values()):
        return MergeStatus(merge, "no_checks", f"{merge}: NOT deployable: no check applied "
                           f"({len(tests) or len(vs)} not applicable)", "no check applied", counts)
    if not against and not unfinished:
        warned = [v for v in vs if v.outcome == "inconclusive" and _accepted(v, policy)]
        note = f" ({len(warned)} inconclusive, accepted by inconclusive = \"warn\")" if warned else ""
        skipped = sum(t.outcome == "not_applicable" for t in tests.values())
        if skipped:  # they measured nothing: said, so that "all pass" never hides a check that did not apply
            note += f" ({skipped} not applicable)"
        if not vs:  # tests ran and passed but recorded no verdict (a user's plain test)
            return MergeStatus(merge, "deployable", f"{merge}: deployable: all {len(tests)} tests pass", "", counts)
        return MergeStatus(merge, "deployable", f"{merge}: deployable: all {len(vs)} checks pass{note}", "", counts)
    head = []
    if against:
        head.append(f"{len(against)} of {len(vs)} checks did not pass")
    if unfinished:
        head.append(f"{len(unfinished)} of {len(tests)} tests ended without a verdict "
                    f"({_test_summary({o: sum(t.outcome == o for t in unfinished.values()) for o in TEST_OUTCOMES})})")
    if against:
        first_v = against[0]
        label = f"{first_v.check}[{first_v.data['task']}]" if "task" in first_v.data else first_v.check
        first = f"{label}: {first_v.headline().split(': ', 1)[1]}"
    else:
        severity = ("failed", "error", "skipped", "not_run")  # what ended worst first, then collection order
        order = list(tests)
        nodeid, t = min(unfinished.items(), key=lambda kv: (severity.index(kv[1].outcome), order.index(kv[0])))
        first = f"{nodeid.rsplit('::', 1)[-1]}: {t.outcome.replace('_', ' ')}" + (f": {t.reason}" if t.reason else "")
    return MergeStatus(merge, "not_deployable", f"{merge}: NOT deployable: {'; '.join(head)}; first: {first}",
                       first, counts)


def merge_statuses(verdicts, record: RunRecord | None, merges, policy: str = "fail") -> list[MergeStatus]:
    """A status for every merge under test (in `merges` order, then any other subject of a
    verdict), whether or not anything ran for it."""
    record = record or RunRecord()
    names = list(dict.fromkeys([*merges, *sorted({v.subject for v in verdicts})]))
    return [merge_status(m, [v for v in verdicts if v.subject == m], record.of(m), policy, record.interrupted)
            for m in names]


def run_state(statuses: list[MergeStatus], record: RunRecord | None) -> str:
    """The run in one word: interrupted, deployable (every merge), or not_deployable."""
    if record is not None and record.interrupted:
        return "interrupted"
    if record is not None and record.unfinished():
        return "not_deployable"
    return "deployable" if statuses and all(s.deployable for s in statuses) else "not_deployable"


def headline(statuses: list[MergeStatus], record: RunRecord | None) -> str:
    """The first line a person reads: what the run decided, in one sentence."""
    state = run_state(statuses, record)
    if state == "interrupted":
        return "interrupted: no verdict (the run was stopped before every check ran)"
    good = [s.merge for s in statuses if s.deployable]
    if state == "deployable":
        return f"deployable: {len(good)} of {len(statuses)} merges pass every check"
    extra = ""
    if record is not None and record.unfinished():
        extra = f"; {len(record.unfinished())} test(s) not tied to a merge did not pass"
    return f"NOT deployable: {len(good)} of {len(statuses)} merges pass every check{extra}"
