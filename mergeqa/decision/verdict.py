"""One verdict type for every check, and one `decide()` that turns verdicts into test outcomes.

A check measures, builds a `Verdict` (what was checked, on which model, its figures, the outcome,
and a message reading obtained / expected / cause / fix) and hands it to `decide(request, ...)`:

    from mergeqa.decision.verdict import Verdict, decide

    def test_vocab_kept(merged_model, parent_models, request):
        rows = merged_model.config["vocab_size"]
        want = max(p.config["vocab_size"] for p in parent_models)
        decide(request, Verdict.threshold(
            "custom.vocab_rows", merged_model.name, obtained=rows, threshold=want, op=">=",
            summary="vocabulary rows", cause="the embeddings were truncated",
            fix="merge with tokenizer_source: union"))

`decide` records every figure as the junit property `mergeqa.<check>.<figure>` (and the outcome as
`mergeqa.<check>.outcome`), keeps the verdict for the run's reports (`summary.md`, the comparison
and divergence tables, the per-merge deployable lines), and applies the policy:

- pass: the test passes. For a statistical check this means retention was *shown*;
- fail: the test fails with the message (a significant drop, a broken tensor, ...);
- inconclusive: the sample could not decide. `[statistics] inconclusive = "fail"` (the default:
  the burden of proof is on the merge) fails the test; `"warn"` is an explicit opt-out that
  passes with a warning and is reported as "inconclusive (accepted)" in junit and the summary;
- error: the check cannot be decided at all (no items, too few items for the test ever to
  decide): the test fails with the reason;
- not_applicable: the check does not apply to this model (no chat template to test): a skip.

Not for measuring anything: checks measure, `mergeqa.decision.significance` tests, this module decides.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from mergeqa.core.messages import failure_message
from mergeqa.core.state import ITEM_VERDICTS, RUN_VERDICTS, thresholds_key  # noqa: F401 (RUN_VERDICTS: kept importable here)

OUTCOMES = ("pass", "fail", "inconclusive", "error", "not_applicable")
INCONCLUSIVE_POLICIES = ("fail", "warn")
SHOWN = 5  # details listed in a message; the rest are counted



class InconclusiveAccepted(UserWarning):
    """An inconclusive verdict passed because `[statistics] inconclusive = "warn"`."""


@dataclass
class Verdict:
    """One decision about one model. `check` is dotted (`retention`, `lint.finite`,
    `probing.agreement.best`) and names the junit properties `mergeqa.<check>.<figure>`.

    `figures` go to junit (numbers or short strings); `data` is for the run's reports only
    (per-model scores, layer curves) and must be JSON-able, since xdist ships it to the
    controller. `details` are one line each (a tensor, a prompt, an item), capped in messages.
    """

    check: str
    subject: str
    outcome: str = "pass"
    figures: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # what was checked, after the subject: "family_lists retention against lists"
    expected: str = ""
    delta: float | None = None
    details: list[str] = field(default_factory=list)
    cause: str = ""
    fix: str = ""
    reason: str = ""  # not_applicable / error: why, one line
    test: str = ""  # the pytest node id that decided it (set by decide)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome={self.outcome!r}: expected one of {', '.join(OUTCOMES)}")

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def threshold(cls, check: str, subject: str, *, obtained: float, threshold: float, op: str = ">=",
                  summary: str = "", cause: str = "", fix: str = "", **figures) -> Verdict:
        """A point rule: pass when `obtained op threshold` (op one of >=, <=, >, <, ==)."""
        ops = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
               "<": lambda a, b: a < b, "==": lambda a, b: a == b}
        if op not in ops:
            raise ValueError(f"op={op!r}: expected one of {', '.join(ops)}")
        ok = obtained is not None and ops[op](obtained, threshold)
        delta = obtained - threshold if isinstance(obtained, (int, float)) and isinstance(threshold, (int, float)) else None
        return cls(check, subject, "pass" if ok else "fail",
                   {"obtained": obtained, "threshold": threshold, **figures}, summary=summary or check,
                   expected=f"{op} {threshold:.4g}" if isinstance(threshold, float) else f"{op} {threshold}",
                   delta=delta, cause=cause, fix=fix)

    def settle(self) -> Verdict:
        """For checks that collect `details` (one line per finding): fail when there are any,
        else pass (or not_applicable when a `reason` says the check does not apply)."""
        if self.details:
            self.outcome = "fail"
        elif self.reason and self.outcome == "pass":
            self.outcome = "not_applicable"
        return self

    # -- reading -------------------------------------------------------------------------------
    @property
    def obtained(self):
        return self.figures.get("obtained")

    @property
    def ok(self) -> bool:
        """Pass or not applicable: nothing against the merge."""
        return self.outcome in ("pass", "not_applicable")

    @property
    def name(self) -> str:
        """`check[subject]`, as in the per-merge lines."""
        return f"{self.check}[{self.subject}]"

    def headline(self) -> str:
        """One line: outcome, what, obtained vs expected."""
        if self.outcome in ("error", "not_applicable"):
            return f"{self.check}: {self.outcome}: {self.reason or self.summary}"
        got = self.obtained
        shown = f"{got:.4g}" if isinstance(got, float) else str(got)
        expected = f", expected {self.expected}" if self.expected else ""
        return f"{self.check}: {self.outcome}: {self.summary} (obtained {shown}{expected})"

    def message(self) -> str:
        """The failure message: what, obtained / expected / delta, details, likely cause, fix."""
        if self.outcome in ("error", "not_applicable"):
            lines = [f"{self.subject}: {self.check} {self.outcome}: {self.reason}"]
            if self.fix:
                lines.append(f"Fix: {self.fix}")
            return "\n".join(lines)
        shown = list(self.details[:SHOWN])
        if len(self.details) > SHOWN:
            shown.append(f"... and {len(self.details) - SHOWN} more")
        what = f"{self.subject}: {self.summary or self.check}"
        if self.outcome != "fail":
            what += f" is {self.outcome}"
        return failure_message(what, obtained=self.obtained, expected=self.expected or "-",
                               delta=self.delta, details=shown, cause=self.cause, fix=self.fix)

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        return cls(**d)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; junit shows them as text anyway
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    return str(value)


def _property_value(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def inconclusive_policy(config: pytest.Config) -> str:
    """`[statistics] inconclusive` of the run's thresholds ("fail" when there are none)."""
    thresholds = config.stash.get(thresholds_key, None)
    return thresholds.get("statistics", "inconclusive") if thresholds is not None else "fail"


def decide(request, *verdicts: Verdict) -> None:
    """Record the verdicts on the running test (junit properties, the run's reports), then pass,
    fail, warn or skip it: fail/error fail; inconclusive fails unless the policy is "warn"; all
    not_applicable skips. Call it once per test, with every verdict the test reached."""
    item = request.node
    policy = inconclusive_policy(request.config)
    kept = item.stash.setdefault(ITEM_VERDICTS, [])
    for v in verdicts:
        v.test = item.nodeid
        for name, value in v.figures.items():
            item.user_properties.append((f"mergeqa.{v.check}.{name}", _property_value(value)))
        item.user_properties.append((f"mergeqa.{v.check}.outcome", v.outcome))
        if v.outcome == "inconclusive":
            item.user_properties.append((f"mergeqa.{v.check}.inconclusive_policy", policy))
        kept.append(v)
    against = [v for v in verdicts if v.outcome in ("fail", "error")]
    unsure = [v for v in verdicts if v.outcome == "inconclusive"]
    if against or (unsure and policy == "fail"):
        pytest.fail("\n\n".join(v.message() for v in against + unsure), pytrace=False)
    for v in unsure:
        warnings.warn(InconclusiveAccepted(
            f"accepted by [statistics] inconclusive = \"warn\" (not shown to retain): {v.message()}"),
            stacklevel=2)
    if verdicts and all(v.outcome == "not_applicable" for v in verdicts):
        pytest.skip("; ".join(f"{v.subject}: {v.reason}" for v in verdicts))


def interval_outcome(low: float, high: float, *, floor: float | None = None,
                     ceiling: float | None = None) -> str:
    """The outcome of a rate gated on its interval: pass when the whole interval clears the
    floor (or stays under the ceiling), fail when the whole interval misses it, else
    inconclusive. Give exactly one of floor and ceiling."""
    if (floor is None) == (ceiling is None):
        raise ValueError("give exactly one of floor and ceiling")
    if floor is not None:
        return "pass" if low >= floor else "fail" if high < floor else "inconclusive"
    return "pass" if high < ceiling else "fail" if low >= ceiling else "inconclusive"


def accepted(v: Verdict, policy: str) -> bool:
    """Did this verdict leave its test green?"""
    return v.ok or (v.outcome == "inconclusive" and policy == "warn")
