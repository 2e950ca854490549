"""Running properties: hypothesis search with a shrinking budget, results per regime, and
``check_merge_operator`` for authors of merge methods.

The only layer that knows about hypothesis settings and shrinking; it reads the catalogue and
describes mergekit methods through ``mergekit_adapter``, neither of which imports it back.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from hypothesis import Phase, given
from hypothesis import settings as hypothesis_settings

from mergeqa.core.errors import MergeQAUsageError, did_you_mean
from mergeqa.operators.catalogue import CATALOGUE, PROPERTIES, MergeProperty, get_property
from mergeqa.operators.description import MergeOperator, PropertyViolation
from mergeqa.operators.inputs import (
    REAL_SHAPES_FROM,
    REALISTIC_MAX_ENTRIES,
    REGIMES,
    MergeInputs,
    Regime,
    _literal,
    realistic_max_entries,
    realistic_size,
)

#: Seconds of shrinking a property gets after its first failure (see ``run_property``).
SHRINK_SECONDS = 10.0


def _literal_example(example: Mapping[str, Any] | None) -> str:
    if example is None:
        return "{}"
    return "dict(" + ", ".join(f"{key}={value!r}" if isinstance(value, MergeInputs) else
                                f"{key}={_literal(value)}" for key, value in example.items()) + ")"


def _size_cap(prop: MergeProperty) -> int:
    """The profile's realistic size cap; real matrix sizes only for the size-sensitive properties
    (the others get the thorough cap: their promises do not change with size, their cost does)."""
    limit = realistic_max_entries()
    if limit >= REAL_SHAPES_FROM and not prop.size_sensitive:
        return REALISTIC_MAX_ENTRIES["mergeqa-thorough"]
    return limit


def _check_regime(regime: str) -> None:
    if regime not in REGIMES:
        raise MergeQAUsageError(f"unknown input regime {regime!r}." + did_you_mean(regime, REGIMES))


def run_property(
    prop: str | MergeProperty,
    operator: MergeOperator,
    regime: Regime = "realistic",
    settings: hypothesis_settings | None = None,
    *,
    shrink_seconds: float = SHRINK_SECONDS,
) -> int:
    """Search ``prop`` on ``operator`` in ``regime``; return how many examples passed, or raise
    the shrunk violation.

    ``settings`` defaults to the current hypothesis profile; its example count is divided by the
    property's ``cost``; deadlines are always off (CPU timings of tensor code jitter) and only the
    first distinct bug is reported. Realistic tensors are capped per profile
    (``inputs.realistic_max_entries``; under mergeqa-large only ``size_sensitive`` properties get
    real matrix sizes). Shrinking gets ``shrink_seconds`` from the first failure:
    after that, candidates not seen before are passed without running, so hypothesis settles on
    the smallest failure found so far (still a real, replayed failure, just possibly not the
    smallest there is).
    """
    prop = get_property(prop)
    _check_regime(regime)
    passed = 0
    failing: set[str] = set()
    first_failure: list[float] = []

    def property_holds(example: dict[str, Any]) -> None:
        nonlocal passed
        key = repr(example)
        if first_failure and time.perf_counter() - first_failure[0] > shrink_seconds and key not in failing:
            return
        try:
            prop.check(operator, **example)
        except PropertyViolation as violation:
            violation.example = example
            failing.add(key)
            first_failure[:] = first_failure or [time.perf_counter()]
            raise
        passed += 1

    base = settings if settings is not None else hypothesis_settings()
    test = given(example=prop.examples(operator, regime))(property_holds)
    # The explain phase re-runs the shrunk example dozens of times to annotate it: too slow
    # for tensor code, and the counterexample printed below says what matters.
    phases = [phase for phase in base.phases if phase != Phase.explain]
    examples = max(1, math.ceil(base.max_examples / prop.cost))
    test = hypothesis_settings(base, deadline=None, report_multiple_bugs=False, phases=phases,
                               max_examples=examples)(test)
    # Distinct database keys and derandomized seeds per (operator, property, regime).
    test.hypothesis.inner_test._hypothesis_internal_add_digest = f"{operator.name}:{prop.name}:{regime}".encode()
    try:
        with realistic_size(_size_cap(prop)):
            test()
    except PropertyViolation as violation:
        message = (f"{operator.name} violates {prop.name} ({prop.summary}) on {regime} inputs: {violation.detail}\n"
                   f"Shrunk counterexample; replay with "
                   f"get_property({prop.name!r}).check(operator, **example) where example is\n"
                   f"    {_literal_example(violation.example)}")
        if _entries(violation.example) <= KEPT_ENTRIES:
            raise PropertyViolation(message, example=violation.example) from violation
        # Real-size tensors (mergeqa-large): pytest keeps a failure's or xfail's exception for the
        # whole session, and with it the example and every frame's locals (19.6 GB after one
        # model_stock cell on 14336x4096 matrices). Keep the replay text (the recipe's repr
        # rebuilds the tensors), drop the tensors and the frames; the chain stays (whether the
        # operator raised is read from it).
        _release(violation)
        raise PropertyViolation(message, example=None) from violation
    return passed


#: examples up to this many tensor entries keep their tensors on the violation (``.example``)
KEPT_ENTRIES = 2**22


def _entries(example: Mapping[str, Any] | None) -> int:
    """Tensor entries in an example's inputs (models and base)."""
    total = 0
    for value in (example or {}).values():
        for tensor in [*getattr(value, "models", ()), getattr(value, "base", None)]:
            total += int(tensor.numel()) if hasattr(tensor, "numel") else 0
    return total


def _release(exc: BaseException | None) -> None:
    """Drop what an exception chain holds on to: each example and the locals of finished frames."""
    import traceback

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if hasattr(exc, "example"):
            exc.example = None
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


@dataclasses.dataclass
class PropertyResult:
    """The outcome of one property on one operator in one input regime."""

    property: str
    regime: Regime
    status: Literal["holds", "violated", "n/a", "skipped"]
    reason: str = ""
    examples: int = 0
    seconds: float = 0.0
    violation: PropertyViolation | None = None


def _check_not_applicable(operator: MergeOperator, properties: Sequence[MergeProperty]) -> None:
    known = {**PROPERTIES, **{p.name: p for p in properties}}
    unknown = sorted(set(operator.not_applicable) - set(known))
    if unknown:
        raise MergeQAUsageError(
            f"merge operator {operator.name!r}: not_applicable names unknown property {unknown[0]!r}."
            + did_you_mean(unknown[0], known)
        )


def evaluate(
    operator: MergeOperator,
    properties: Sequence[str | MergeProperty] | None = None,
    *,
    regimes: Sequence[Regime] = REGIMES,
    settings: hypothesis_settings | None = None,
    shrink_seconds: float = SHRINK_SECONDS,
) -> list[PropertyResult]:
    """Run ``properties`` (default: the whole catalogue) on ``operator`` in each of ``regimes``
    (realistic first); never raises violations."""
    chosen = [get_property(p) for p in (CATALOGUE if properties is None else properties)]
    _check_not_applicable(operator, chosen)
    for regime in regimes:
        _check_regime(regime)
    results = []
    for prop in chosen:
        for regime in regimes:
            if regime not in prop.regimes:
                continue
            reason = prop.not_applicable(operator)
            missing = prop.unavailable()
            if reason or missing:
                results.append(PropertyResult(prop.name, regime, "n/a" if reason else "skipped", reason or missing))
                continue
            start = time.perf_counter()
            try:
                passed = run_property(prop, operator, regime, settings, shrink_seconds=shrink_seconds)
            except PropertyViolation as violation:
                results.append(PropertyResult(prop.name, regime, "violated", str(violation),
                                              seconds=time.perf_counter() - start, violation=violation))
            else:
                results.append(PropertyResult(prop.name, regime, "holds", examples=passed,
                                              seconds=time.perf_counter() - start))
    return results


def as_operator(fn: Any, **description: Any) -> MergeOperator:
    """A ``MergeOperator`` from a plain function (plus ``description``), or a mergekit method."""
    try:
        if isinstance(fn, MergeOperator):
            return dataclasses.replace(fn, **description) if description else fn
        if hasattr(fn, "spec") and type(fn).__module__.startswith("mergekit"):
            from mergeqa.operators.mergekit_adapter import mergekit_operator

            return mergekit_operator(fn, **description)
        return MergeOperator(fn, **description)
    except TypeError as error:  # an unknown or missing MergeOperator field
        raise MergeQAUsageError(f"check_merge_operator: {error}; see MergeOperator for the fields") from None


def check_merge_operator(
    fn: Any,
    properties: Sequence[str | MergeProperty] | None = None,
    *,
    regimes: Sequence[Regime] = REGIMES,
    settings: hypothesis_settings | None = None,
    **description: Any,
) -> list[PropertyResult]:
    """Check a merge function against catalogue properties; raise one violation report if any fail.

    ``fn`` is ``fn(models, base=None, **params) -> Tensor``, a ``MergeOperator``, or a mergekit
    method (e.g. what ``@merge_method`` returns). ``description`` holds ``MergeOperator`` fields
    (``base``, ``weights``, ``parameters``, ``endpoints``, ...). ``properties`` lists the promises
    to hold it to; a listed property the description cannot support is a usage error naming the
    missing field. ``None`` runs every property that applies. Each runs in each of ``regimes``.
    Returns the results, one per property and regime.
    """
    operator = as_operator(fn, **description)
    if properties is not None:
        for prop in map(get_property, properties):
            reason = prop.not_applicable(operator)
            if reason:
                raise MergeQAUsageError(
                    f"check_merge_operator: {prop.name} cannot be checked on {operator.name}: "
                    f"it {reason}. Describe the operator (see MergeOperator) or drop {prop.name!r}."
                )
    results = evaluate(operator, properties, regimes=regimes, settings=settings)
    violated = [r for r in results if r.status == "violated"]
    if violated:
        raise PropertyViolation(
            f"{operator.name} violates {len(violated)} of {len(results)} property checks:\n\n"
            + "\n\n".join(r.reason for r in violated),
            example=violated[0].violation.example,
        )
    return results
