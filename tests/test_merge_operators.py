"""Property tests of mergekit's merge methods in both input regimes (realistic and degenerate).

Every (method, property, regime) that applies is searched under the current hypothesis profile
(``register_profiles``: mergeqa-default in CI, ``--hypothesis-profile=mergeqa-thorough`` to hunt).
Every finding of ``mergeqa.operators.findings`` is replayed from its recorded example as
``xfail(strict=True)``: when a mergekit release fixes one, its XPASS fails the suite and names the
entry of KNOWN to delete. The search of a cell whose finding shows on some random draws only is a
non-strict xfail (the derandomized search meets it; another machine's rounding may not). Either
xfail takes only the finding's own violation (``findings.only_its_own``): an operator that raises
something else fails the test.
Tests of the kit itself are in test_operator_kit.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import settings

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.operators import register_profiles
from mergeqa.operators.catalogue import CATALOGUE, get_property
from mergeqa.operators.description import MergeOperator, PropertyViolation
from mergeqa.operators.findings import KNOWN, SIZE_ONLY, KnownViolation, UnrelatedFailure, only_its_own
from mergeqa.operators.inputs import REGIMES
from mergeqa.operators.mergekit_adapter import SKIPPED_METHODS, mergekit_operator, registered_method_names
from mergeqa.operators.runner import run_property

#: The methods issue 7 names; each must be tested (more may be).
REQUIRED_METHODS = (
    "linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties", "dare_ties",
    "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "model_stock", "sce",
    "nearswap", "ram", "arcee_fusion",
)


def _describe_registered() -> tuple[dict[str, MergeOperator], dict[str, str]]:
    described, undescribed = {}, {}
    for name in registered_method_names():
        if name in SKIPPED_METHODS:
            continue
        try:
            described[name] = mergekit_operator(name)
        except MergeQAUsageError as error:  # reported by test_every_registered_method_is_tested_or_skipped
            undescribed[name] = str(error)
    return described, undescribed


OPERATORS, UNDESCRIBED = _describe_registered()


@pytest.fixture(scope="session")
def operator_settings() -> settings:
    """The loaded hypothesis profile if it is a mergeqa one, else mergeqa-default (without loading it)."""
    if settings.get_current_profile_name().startswith("mergeqa-"):
        return settings()
    register_profiles(load=None)
    return settings.get_profile("mergeqa-default")


def _known_cells() -> dict[tuple[str, str, str], KnownViolation]:
    """Cells with a finding; a robust one wins over a stream-dependent one. Under mergeqa-large
    the findings only its real sizes show (SIZE_ONLY) count too."""
    cells: dict[tuple[str, str, str], KnownViolation] = {}
    large = settings.get_current_profile_name() == "mergeqa-large"
    for known in KNOWN + (SIZE_ONLY if large else ()):
        cell = (known.method, known.property, known.regime)
        if cell not in cells or not known.stream_dependent:
            cells[cell] = known
    return cells


def _holds_cases() -> list[Any]:
    cases, known = [], _known_cells()
    for name, operator in OPERATORS.items():
        for prop in CATALOGUE:
            if prop.name == "cpu_cuda_agree" or prop.not_applicable(operator):
                continue
            for regime in prop.regimes:
                finding = known.get((name, prop.name, regime))
                if finding is not None and not finding.stream_dependent:
                    continue  # replayed strictly below
                marks = [] if finding is None else [pytest.mark.xfail(
                    strict=False, raises=PropertyViolation, reason=f"{finding.id}: {finding.stream_dependent}")]
                cases.append(pytest.param(name, prop.name, regime, id=f"{name}-{prop.name}-{regime}", marks=marks))
    return cases


@pytest.mark.parametrize(("method", "prop", "regime"), _holds_cases())
def test_mergekit_method_has_property(method: str, prop: str, regime: str, operator_settings: settings) -> None:
    with only_its_own(_known_cells().get((method, prop, regime))):  # a non-strict xfail takes its finding only
        run_property(prop, OPERATORS[method], regime, operator_settings)


@pytest.mark.parametrize("known", [
    # strict for every finding: the recorded example is replayed as it is (a stream-dependent one
    # shows on some draws only, but the draw recorded here fails every time)
    pytest.param(k, id=k.id, marks=pytest.mark.xfail(strict=True, raises=PropertyViolation,
                                                     reason=k.stream_dependent or k.reason))
    for k in KNOWN
])
def test_known_violation_still_happens(known: KnownViolation) -> None:
    with only_its_own(known):
        get_property(known.property).check(OPERATORS[known.method], **known.example)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU/CUDA agreement runs only where a CUDA device is present")
@pytest.mark.parametrize(("method", "regime"), [
    (name, regime) for name, op in OPERATORS.items() if not get_property("cpu_cuda_agree").not_applicable(op)
    for regime in REGIMES
])
def test_mergekit_method_agrees_on_cpu_and_cuda(method: str, regime: str, operator_settings: settings) -> None:
    run_property("cpu_cuda_agree", OPERATORS[method], regime, operator_settings)


def test_every_registered_method_is_tested_or_skipped() -> None:
    registered = registered_method_names()
    assert not UNDESCRIBED, (
        f"mergekit methods the adapter cannot describe: {UNDESCRIBED}. Add them to METHOD_NOTES or "
        "SKIPPED_METHODS (with the reason) in mergeqa/operators/mergekit_adapter.py"
    )
    untested = [name for name in registered if name not in OPERATORS and name not in SKIPPED_METHODS]
    assert not untested, f"registered but neither tested nor skipped: {untested}"
    stale = sorted(set(SKIPPED_METHODS) - set(registered))
    assert not stale, f"SKIPPED_METHODS lists methods mergekit no longer registers: {stale}"
    missing = sorted(set(REQUIRED_METHODS) - set(OPERATORS))
    assert not missing, f"methods issue 7 requires but the suite does not test: {missing}"


def test_known_violations_name_applicable_cells_realistic_first() -> None:
    ids = [k.id for k in KNOWN]
    assert len(ids) == len(set(ids)), "two KNOWN entries share an id: give one a variant"
    for known in KNOWN:
        assert known.method in OPERATORS, f"{known.id}: {known.method} is not tested"
        reason = get_property(known.property).not_applicable(OPERATORS[known.method])
        assert reason is None, f"{known.id}: the property does not apply ({reason}); delete the entry"
        assert known.regime in get_property(known.property).regimes, f"{known.id}: no such regime"
    regimes = [k.regime for k in KNOWN]
    assert regimes == sorted(regimes, key=REGIMES.index), "KNOWN lists realistic findings first"


def test_a_replayed_finding_takes_only_its_own_violation(monkeypatch) -> None:
    """An operator broken to raise on every call fails its findings' replays (it kept 6 of
    nearswap's 10 xfails green when any PropertyViolation counted): each replay is an unrelated
    failure, or holds (the fp16 properties skip a raising fp32 reference), which a strict xfail
    reports as XPASS. A finding that *is* a raise (della's one-entry rows) still counts as itself."""
    import dataclasses

    def broken(*args, **kwargs):
        raise ZeroDivisionError("broken on purpose")

    findings = [k for k in KNOWN if k.method == "nearswap"]
    assert findings, "no nearswap finding to replay"
    outcomes = []
    for known in findings:
        operator = dataclasses.replace(OPERATORS["nearswap"], fn=broken)
        try:  # either an unrelated failure, or the property holds (a strict xfail then XPASSes): never the finding
            with only_its_own(known):
                get_property(known.property).check(operator, **known.example)
            outcomes.append("holds")
        except UnrelatedFailure as failure:
            assert "raised ZeroDivisionError" in str(failure)
            outcomes.append("unrelated")
    assert "unrelated" in outcomes, outcomes
    della = next(k for k in KNOWN if k.method == "della" and k.property == "finite_on_degenerate")
    with pytest.raises(PropertyViolation, match="raised RuntimeError"):
        with only_its_own(della):
            get_property(della.property).check(OPERATORS["della"], **della.example)


# ----------------------------------------------------------------------------- root causes


def test_each_cell_names_a_root_cause_and_each_realistic_one_has_its_trigger() -> None:
    from mergeqa.operators.findings import ROOT_CAUSES, ROOTS, cells

    keys = [r.key for r in ROOT_CAUSES]
    assert len(keys) == len(set(keys)), "two root causes share a key"
    for known in KNOWN:
        assert known.root in ROOTS, f"{known.id}: root {known.root!r} is not in ROOT_CAUSES"
    for root in ROOT_CAUSES:
        assert root.label in REGIMES, root.key
        assert cells(root.key) or root.at_scale, f"{root.key}: no cell in KNOWN and no trigger at scale"
        if root.label == "realistic":
            assert root.at_scale is not None, f"{root.key}: a realistic finding replays its trigger at size"
    labels = [r.label for r in ROOT_CAUSES]
    assert labels == sorted(labels, key=REGIMES.index), "ROOT_CAUSES lists realistic findings first"


def test_root_causes_and_labels_of_issue_31() -> None:
    """The causes and labels measured against mergekit 0.1.5's source (bench/operator_findings.py)."""
    from mergeqa.operators.findings import ROOTS, cells

    sce = next(k for k in KNOWN if k.id == "sce-low_precision_agrees-realistic")
    assert sce.root == "sce_mask fp16 variance underflow"
    assert ROOTS[sce.root].cause.startswith("sce_mask") and "sce_weight is not the cause" in ROOTS[sce.root].cause
    assert ROOTS["sce_weight absolute fallback"].label == "realistic"
    assert {k.root for k in KNOWN if k.method == "sce" and k.property == "scale_equivariant"} == {
        "sce_weight absolute fallback"}
    nearswap = {k.root for k in KNOWN if k.method == "nearswap"}
    assert nearswap == {"nearswap fp16 reciprocal"}, "nearswap has one root cause: one finding"
    assert ROOTS["nearswap fp16 reciprocal"].label == "degenerate"  # t = 0 only
    assert "t = 0" in ROOTS["nearswap fp16 reciprocal"].trigger
    # The showcase stand-ins (deltas 10x the weight std) are degenerate cells; their roots are
    # realistic only through the trigger replayed at real size.
    for cell in ("ties-fp16_finite-degenerate-l1-sum", "model_stock-fp16_finite-degenerate-norm-product"):
        known = next(k for k in KNOWN if k.id == cell)
        assert known.example["inputs"].source.count("delta=0.2") == 1, cell
    realistic_cells = [k for k in KNOWN if k.regime == "realistic" and "RealisticInputs(" in (k.example["inputs"].source or "")]
    for known in realistic_cells:
        assert "delta=0.2" not in known.example["inputs"].source, f"{known.id}: delta 10x the weights is not realistic"
    assert ROOTS["model_stock fp16 product underflow"].label == "degenerate"
    della = ROOTS["DELLA L1 rescale"].behaviour
    assert "paper" in della and "1/p_i" in della and "L1" in della and "which it meets exactly" in della
    assert len(cells("nearswap fp16 reciprocal")) == 10  # ten cells, one finding
    # Frozen layers in multislerp: a raise in float32/bf16 with 3+ models, NaN in fp16 (eps is 0):
    # two causes, each replayed at 4096x4096 on untouched tensors (not on fine-tuned ones).
    for key, raises in (("multislerp zero sum", "ValueError"), ("multislerp fp16 eps", "")):
        at = ROOTS[key].at_scale
        assert ROOTS[key].label == "realistic" and at.recipe.kind == "untouched" and at.raises == raises, key


@pytest.mark.parametrize("root", [
    pytest.param(r, id=r.key.replace(" ", "_")) for r in __import__(
        "mergeqa.operators.findings", fromlist=["ROOT_CAUSES"]).ROOT_CAUSES if r.at_scale is not None
])
def test_realistic_trigger_at_real_size(root: Any) -> None:
    """Each realistic trigger replayed at its real size (up to 131M entries): only under
    ``--hypothesis-profile=mergeqa-large`` (minutes on a CPU; bench/operator_findings.py prints it)."""
    if settings.get_current_profile_name() != "mergeqa-large":
        pytest.skip("real-size triggers run under --hypothesis-profile=mergeqa-large")
    at = root.at_scale
    assert at.replay(OPERATORS[at.method]) is not None, f"{root.key}: holds at size; the finding is stale"
