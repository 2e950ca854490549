"""Property tests of mergekit's merge methods, and tests of the property kit itself.

Every (method, property) pair that applies is searched under the current hypothesis profile
(``register_profiles``: mergeqa-default in CI, ``--hypothesis-profile=mergeqa-thorough`` to hunt).
Every violation found so far is replayed from its shrunk counterexample as ``xfail(strict=True)``:
when a mergekit release fixes one, its XPASS fails the suite and names the entry of KNOWN to delete.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mergekit.merge_methods import TensorGroup, merge_method

from mergeqa.errors import MergeQAUsageError
from mergeqa.operators import PROFILES, register_profiles
from mergeqa.operators import strategies as mst
from mergeqa.operators.mergekit_adapter import SKIPPED_METHODS, mergekit_operator, registered_method_names
from mergeqa.operators.properties import (
    CATALOGUE,
    BlockInputs,
    Endpoint,
    MergeInputs,
    MergeOperator,
    PerModel,
    PropertyViolation,
    as_operator,
    check_merge_operator,
    get_property,
)

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


# ----------------------------------------------------------------------------- known violations


@dataclasses.dataclass(frozen=True)
class Known:
    """A violation of mergekit 0.1.5, its shrunk counterexample, and why it happens."""

    method: str
    property: str
    example: dict[str, Any]
    reason: str
    variant: str = ""  # tells apart two distinct violations of one (method, property)

    @property
    def id(self) -> str:
        return "-".join(filter(None, (self.method, self.property, self.variant)))


def _fp16_task_vector_overflow(**params: Any) -> dict[str, Any]:
    """base 32768, model -32768: the task vector (-65536) overflows fp16, the merge (~26214) does not."""
    return dict(inputs=MergeInputs.of(models=[[-32768.0, 0.0]], base=[32768.0, 0.0], dtype="float16",
                                      params={"weight": [0.1], **params}))


_GTA_FP16 = "task vectors are computed in the input dtype: model - base overflows fp16 though the merge fits"
_L1_RESCALE = ("rescales by the L1 norm ratio, not 1/p per kept entry: E[kept * |x|_1 / |kept|_1] != x "
               "(0.75x for [1, 1] at density 0.5; all-dropped draws give 0)")

KNOWN = [
    Known("linear", "finite_on_degenerate",
          dict(inputs=MergeInputs.of(models=[[0.0]], dtype="float32", params={"weight": [0.0]})),
          "normalize=True divides by the sum of the weights: all-zero weights give 0/0 = NaN, not an error"),
    Known("multislerp", "finite_on_degenerate",
          dict(inputs=MergeInputs.of(models=[[0.0], [0.0]], dtype="float32", params={"weight": [0.0, 0.0]})),
          "normalize_weights divides by the sum of the weights: all-zero weights give NaN, not an error"),
    Known("multislerp", "zero_task_vectors",
          dict(inputs=MergeInputs.of(models=[[1.0, 1.0], [1.0, 1.0]], base=[1.0, 1.0], dtype="float16",
                                     params={"weight": [0.1, 0.0]})),
          "eps=1e-8 underflows to 0 in fp16, so zero task vectors are normalised as 0/0 = NaN", "fp16"),
    Known("multislerp", "zero_task_vectors",
          dict(inputs=MergeInputs.of(models=[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], base=[1.0, 1.0],
                                     dtype="float32", params={"weight": [0.0, 0.0, 1.0]})),
          "3+ models that leave a tensor untouched (e.g. frozen layers) raise 'weighted sum of the input "
          "tensors is zero'", "three-models"),
    Known("multislerp", "idempotent",
          dict(inputs=MergeInputs.of(models=[[0.0625, 0.0625], [0.0625, 0.0625]], dtype="float16",
                                     params={"weight": [0.1, 0.0]})),
          "same root as multislerp/endpoints: identical fp16 inputs leave a zero tangent, sin(0) / 0 = NaN"),
    Known("multislerp", "endpoints",
          dict(inputs=MergeInputs.of(models=[[1.0, 1.0], [1.0, 1.0]], dtype="float16",
                                     params={"weight": [1.0, 0.0]}), returns=0),
          "fp16: the tangent norm plus eps=1e-8 is exactly 0, so sin(0) / 0 = NaN at a vertex"),
    Known("multislerp", "dtype_preserved",
          dict(inputs=MergeInputs.of(models=[[0.0625, 0.0625], [0.0625, 0.0625], [0.0625, 0.0625]],
                                     base=[0.0625, 0.0625], dtype="float32", params={"weight": [0.0, 0.0, 1.0]})),
          "same root as zero_task_vectors[three-models]: zero task vectors raise ValueError"),
    Known("multislerp", "scale_equivariant",
          dict(inputs=MergeInputs.of(models=[[0.001953125, 0.001953125, 0.001953125],
                                             [0.001953125, 0.001953125, 0.03125]],
                                     base=[0.001953125, 0.0078125, 0.001953125], dtype="float32",
                                     params={"weight": [1.0, 1.0]}), scale=2.0**-16),
          "eps=1e-8 is added to task-vector norms: shrunk at scale 2**-12 it sits at the 0.1% boundary; "
          "at 2**-16 (norms ~5e-7) an entry is off by 7%"),
    Known("multislerp", "fp16_finite",
          dict(inputs=MergeInputs.of(models=[[0.0, 0.0], [0.0, 0.0]], dtype="float16",
                                     params={"weight": [0.1, 0.0]})),
          "same root as zero_task_vectors[fp16]: eps=1e-8 is 0 in fp16, zero vectors give 0/0 = NaN"),
    Known("nearswap", "zero_task_vectors",
          dict(inputs=MergeInputs.of(models=[[1.0, 1.0]], base=[1.0, 1.0], dtype="float16", params={"t": 0.0})),
          "t / |a-b| runs as reciprocal(|a-b|.clamp(1e-6)) * t: in fp16 1/1e-6 = inf and inf * 0 = NaN "
          "wherever the models agree"),
    Known("nearswap", "endpoints",
          dict(inputs=MergeInputs.of(models=[[0.0625, 0.0625]], base=[0.0625, 0.0625], dtype="float16",
                                     params={"t": 0.0}), returns="base"),
          "same root as nearswap/zero_task_vectors: at t=0, inf * 0 = NaN in fp16 where a == b"),
    Known("nearswap", "finite_on_degenerate",
          dict(inputs=MergeInputs.of(models=[[0.0]], base=[0.0], dtype="float16", params={"t": 0.0})),
          "same root as nearswap/zero_task_vectors: inf * 0 = NaN in fp16 where a == b"),
    Known("nearswap", "fp16_finite",
          dict(inputs=MergeInputs.of(models=[[0.0, 0.0]], base=[0.0, 0.0], dtype="float16", params={"t": 0.0})),
          "same root as nearswap/zero_task_vectors: inf * 0 = NaN in fp16 where a == b"),
    Known("ramplus_tl", "dtype_preserved",
          dict(inputs=MergeInputs.of(models=[[1.0, 1.0]], base=[1.0, 1.0], dtype="bfloat16")),
          "rho = shared / unique.clamp(epsilon) is float32 and promotes the bf16/fp16 merge"),
    Known("arcee_fusion", "dtype_preserved",
          dict(inputs=MergeInputs.of(models=[[1.0, 1.0]], base=[1.0, 1.0], dtype="bfloat16")),
          "the fusion mask is .float(), which promotes bf16/fp16 merges to float32"),
    Known("sce", "fp16_finite",
          dict(inputs=MergeInputs.of(models=[[[-16384.0, 0.0], [0.0, 0.0]]], base=[[16384.0, 0.0], [0.0, 0.0]],
                                     dtype="float16", params={"select_topk": 1.0})),
          "sce_weight squares the task vectors in fp16: 32768**2 overflows, inf / inf = NaN"),
    Known("sce", "scale_equivariant",
          dict(inputs=MergeInputs.of(models=[[1.0, 1.0], [0.5, 0.5]], base=[0.0, 0.0], dtype="float32",
                                     params={"select_topk": 1.0}), scale=2.0**-11),
          "sce_weight falls back to uniform weights when the summed mean square of the task vectors is "
          "below an absolute 1e-6, i.e. for typical fine-tuning deltas of ~1e-3"),
    Known("ram", "fp16_finite",
          dict(inputs=MergeInputs.of(models=[[-32768.0, 0.0]], base=[32768.0, 0.0], dtype="float16")),
          "task vectors are computed in fp16: model - base overflows (-65536 -> -inf), and -inf + inf = NaN"),
    Known("sce", "density_kept",
          dict(inputs=MergeInputs.of(models=[[[0.0625, 0.0625], [0.0625, 0.0625]]] * 2,
                                     base=[[0.0, 0.0], [0.0, 0.0]], dtype="float32", params={"select_topk": 0.5})),
          "select_topk ranks entries by variance across task vectors and counts only non-zero variance: "
          "fine-tunes that agree keep nothing (merge = base)"),
    Known("nuslerp", "fp16_finite",
          dict(inputs=MergeInputs.of(models=[[32768.0, 0.0], [-32768.0, 0.0]], base=[32768.0, 0.0],
                                     dtype="float16", params={"weight": [0.0, 1.0]})),
          "task vectors (model - base) are taken in fp16 and overflow, though the merge (-32768) fits"),
    Known("karcher", "order_invariant",
          dict(inputs=MergeInputs.of(models=[[0.0625, 0.0625], [-0.0625, -0.0625]], dtype="float32"),
               permutation=[1, 0]),
          "antipodal inputs have no mean direction; the iteration starts from the first model, so the "
          "merge of A and -A is A or -A depending on order"),
    Known("karcher", "scale_equivariant",
          dict(inputs=MergeInputs.of(models=[[0.001953125, 0.001953125], [0.001953125, 0.001953125]],
                                     dtype="float32"), scale=0.001953125),
          "tol=1e-5 is an absolute threshold on tensor norms: tensors with a smaller norm count as zero "
          "and merge to 0"),
    Known("sce", "finite_on_degenerate",
          dict(inputs=MergeInputs.of(models=[[64.0, 0.0, 0.0], [-256.0, 0.0, 0.0], [64.0, 0.0, 0.0]],
                                     base=[64.0, 0.0, 0.0], dtype="float16", params={"select_topk": 1.0})),
          "sce_weight squares the task vectors in fp16: a task vector of -320 already overflows (102400)"),
    Known("ramplus_tl", "fp16_finite",
          dict(inputs=MergeInputs.of(models=[[32768.0, 0.0], [-32768.0, 0.0]], base=[32768.0, 0.0],
                                     dtype="float16")),
          "same as ram/fp16_finite: fp16 task vectors overflow, -inf + inf = NaN"),
    Known("arcee_fusion", "fp16_finite",
          dict(inputs=MergeInputs.of(models=[[-32768.0, 0.0]], base=[32768.0, 0.0], dtype="float16")),
          "the difference model - base overflows fp16 (-inf), and -inf * a zero mask entry = NaN"),
    Known("model_stock", "scale_equivariant",
          dict(inputs=MergeInputs.of(
              models=[[[0.03125, 0.03125, 0.03125], [0.03125, 0.03125, 0.03125]]] * 4,
              base=[[0.03125, 0.03125, 0.03125], [0.03125, 0.03125, 0.015625]], dtype="float32"), scale=0.0625),
          "the norm product is clamped at an absolute 1e-6: task vectors with norms below ~1e-3 get a "
          "smaller cosine, so the merge drifts towards the base"),
    Known("model_stock", "finite_on_degenerate",
          dict(inputs=MergeInputs.of(models=[[128.0, 0.0], [-128.0, 0.0], [-128.0, 0.0]], base=[128.0, 0.0],
                                     dtype="float16")),
          "dot products of the offsets are taken in fp16: 256**2 overflows, inf / inf = NaN"),
    Known("model_stock", "fp16_finite",
          dict(inputs=MergeInputs.of(models=[[0.0, 0.0], [0.0, 0.0]], base=[0.0, 1024.0], dtype="float16")),
          "same root as model_stock/finite_on_degenerate: offset norms and dots overflow fp16"),
    Known("task_arithmetic", "fp16_finite", _fp16_task_vector_overflow(), _GTA_FP16),
    *(Known(method, "fp16_finite", _fp16_task_vector_overflow(density=[1.0]), _GTA_FP16)
      for method in ("ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
                     "della_linear")),
    *(Known(method, "rescale_unbiased",
            dict(inputs=MergeInputs.of(models=[[1.0, 1.0]], base=[0.0, 0.0], dtype="float32",
                                       params={"density": [0.5], "weight": [1.0]})), _L1_RESCALE)
      for method in ("dare_ties", "dare_linear", "della", "della_linear")),
    *(Known(method, "finite_on_degenerate",
            dict(inputs=MergeInputs.of(models=[[0.0]], base=[0.0], dtype="float32",
                                       params={"density": [0.5], "weight": [0.0]})),
            "a row of one entry makes rank normalisation 0/0: bernoulli(NaN) raises RuntimeError")
      for method in ("della", "della_linear")),
]


def _known_pairs() -> set[tuple[str, str]]:
    return {(k.method, k.property) for k in KNOWN}


def _holds_cases() -> list[Any]:
    cases = []
    for name, operator in OPERATORS.items():
        for prop in CATALOGUE:
            if prop.name == "cpu_cuda_agree" or prop.not_applicable(operator):
                continue
            if (name, prop.name) not in _known_pairs():
                cases.append(pytest.param(name, prop.name, id=f"{name}-{prop.name}"))
    return cases


@pytest.mark.parametrize(("method", "prop"), _holds_cases())
def test_mergekit_method_has_property(method: str, prop: str, operator_settings: settings) -> None:
    get_property(prop).run(OPERATORS[method], operator_settings)


@pytest.mark.parametrize("known", [
    pytest.param(k, id=k.id, marks=pytest.mark.xfail(strict=True, raises=PropertyViolation, reason=k.reason))
    for k in KNOWN
])
def test_known_violation_still_happens(known: Known) -> None:
    get_property(known.property).check(OPERATORS[known.method], **known.example)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU/CUDA agreement runs only where a CUDA device is present")
@pytest.mark.parametrize("method", [
    name for name, op in OPERATORS.items() if not get_property("cpu_cuda_agree").not_applicable(op)
])
def test_mergekit_method_agrees_on_cpu_and_cuda(method: str, operator_settings: settings) -> None:
    get_property("cpu_cuda_agree").run(OPERATORS[method], operator_settings)


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


def test_known_violations_name_applicable_pairs() -> None:
    ids = [k.id for k in KNOWN]
    assert len(ids) == len(set(ids)), "two KNOWN entries share an id: give one a variant"
    for known in KNOWN:
        assert known.method in OPERATORS, f"{known.id}: {known.method} is not tested"
        reason = get_property(known.property).not_applicable(OPERATORS[known.method])
        assert reason is None, f"{known.id}: the property does not apply ({reason}); delete the entry"


# ----------------------------------------------------------------------------- the kit itself


def _linear(models: list[torch.Tensor], weight: list[float]) -> torch.Tensor:
    """A correct normalised linear merge (float64 inside)."""
    total = sum(w * m.double() for w, m in zip(weight, models))
    return (total / sum(weight)).to(models[0].dtype)


def _unnormalised(models: list[torch.Tensor], weight: list[float]) -> torch.Tensor:
    return sum(w * m for w, m in zip(weight, models))


def _prune_half_too_much(models: list[torch.Tensor], base: torch.Tensor, density: list[float]) -> torch.Tensor:
    delta = models[0] - base
    keep = int(density[0] * delta.numel() / 2)
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[delta.abs().flatten().argsort(descending=True)[:keep]] = 1
    return base + delta * mask.reshape(delta.shape)


def _dropout_without_rescale(models: list[torch.Tensor], base: torch.Tensor, density: list[float]) -> torch.Tensor:
    delta = models[0] - base
    return base + delta * torch.bernoulli(torch.full_like(delta, density[0]))


def _mean_with_float_buffers(models: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: sum(m[key].double() for m in models).div(len(models)).to(models[0][key].dtype
            if models[0][key].is_floating_point() else torch.float32) for key in models[0]}


def _mean(models: list[torch.Tensor]) -> torch.Tensor:
    return (sum(m.double() for m in models) / len(models)).to(models[0].dtype)


_SLERP_LIKE = {"base": "required", "max_models": 1, "parameters": {"t": mst.interpolation_factors()},
               "endpoints": (Endpoint("base", {"t": 0.0}), Endpoint(0, {"t": 1.0}))}
_PRUNING = {"base": "required", "max_models": 1, "density": "density",
            "parameters": {"density": PerModel(mst.densities(max_density=0.9))}}

#: (property, a merge function that breaks it, its description): each property can fail.
BROKEN = [
    ("idempotent", _unnormalised, {"weights": "weight"}),
    ("zero_task_vectors", lambda models, base: models[0] + 0.5 * base, {"base": "required"}),
    ("endpoints", lambda models, base, t: t * base + (1 - t) * models[0], _SLERP_LIKE),
    ("order_invariant", lambda models: 0.75 * models[0] + 0.25 * models[-1], {"min_models": 2}),
    ("weight_normalised", _unnormalised, {"weights": "weight", "normalizes_weights": True}),
    ("scale_equivariant", lambda models: torch.where(models[0].abs() > 1e-3, models[0], 0.0), {}),
    ("finite_on_degenerate", lambda models: models[0] / models[0].norm(), {}),
    ("dtype_preserved", lambda models: models[0].float(), {}),
    ("density_kept", _prune_half_too_much, _PRUNING),
    ("rescale_unbiased", _dropout_without_rescale, {**_PRUNING, "stochastic": True}),
    ("fp16_finite", lambda models: models[0] * 4 / 4, {}),
    ("cpu_cuda_agree", lambda models: models[0] + (0.5 if models[0].is_cuda else 0.0), {}),
    ("state_dict_consistent", _mean, {"merge_state_dicts": _mean_with_float_buffers}),
]


def test_every_property_has_a_broken_operator() -> None:
    assert sorted(name for name, _, _ in BROKEN) == sorted(p.name for p in CATALOGUE)


@pytest.mark.parametrize(("prop", "fn", "description"), [pytest.param(*case, id=case[0]) for case in BROKEN])
def test_broken_operator_is_caught_with_a_replayable_counterexample(
    prop: str, fn: Any, description: dict[str, Any], operator_settings: settings
) -> None:
    if get_property(prop).unavailable():
        pytest.skip(get_property(prop).unavailable())
    with pytest.raises(PropertyViolation) as caught:
        check_merge_operator(fn, [prop], settings=operator_settings, **description)
    message = str(caught.value)
    assert f"violates {prop}" in message and "Shrunk counterexample" in message
    # The counterexample is a real failure: replaying it fails again.
    with pytest.raises(PropertyViolation):
        get_property(prop).check(as_operator(fn, **description), **caught.value.example)


def test_counterexample_is_shrunk(operator_settings: settings) -> None:
    operator = MergeOperator(lambda models: 0.75 * models[0] + 0.25 * models[-1], name="first_heavy", min_models=2)
    with pytest.raises(PropertyViolation) as caught:
        get_property("order_invariant").run(operator, operator_settings)
    example = caught.value.example
    inputs = example["inputs"]
    # Small: the smallest shape the generic strategy allows (1-d, two entries), fp32, few models.
    # Shrinking has a wall-clock budget, so on a loaded machine it may stop at three models
    # instead of two: assert what every stopping point guarantees.
    assert inputs.models[0].shape == (2,) and inputs.dtype == torch.float32
    assert len(inputs.models) <= 3
    assert example["permutation"] != sorted(example["permutation"])
    assert "MergeInputs.of(models=[[" in str(caught.value)


def test_correct_operator_passes(operator_settings: settings) -> None:
    results = check_merge_operator(
        _linear,
        ["idempotent", "endpoints", "order_invariant", "weight_normalised", "scale_equivariant",
         "dtype_preserved", "fp16_finite"],
        settings=operator_settings,
        weights="weight",
        normalizes_weights=True,
        endpoints=[Endpoint.one_hot("weight", 0), Endpoint.one_hot("weight", 1)],
    )
    assert [r.status for r in results] == ["holds"] * 7
    assert all(r.examples > 0 for r in results)


def test_mergekit_method_object_is_accepted(operator_settings: settings) -> None:
    from mergekit.merge_methods import get

    results = check_merge_operator(get("linear"), ["idempotent", "dtype_preserved"], settings=operator_settings)
    assert [r.status for r in results] == ["holds", "holds"]


@merge_method(name="scaled_first")
def _scaled_first(group: TensorGroup, alpha: float) -> torch.Tensor:
    return group.entries[0].tensor * alpha


def test_mergekit_method_with_a_required_parameter_asks_for_its_strategy(operator_settings: settings) -> None:
    with pytest.raises(MergeQAUsageError, match=r"needs parameter\(s\) alpha .* parameters=\{'alpha'"):
        check_merge_operator(_scaled_first, ["idempotent"])
    results = check_merge_operator(_scaled_first, ["idempotent", "dtype_preserved"], settings=operator_settings,
                                   parameters={"alpha": 1.0})
    assert [r.status for r in results] == ["holds", "holds"]


# ----------------------------------------------------------------------------- usage errors


def test_unknown_property_suggests_the_name() -> None:
    with pytest.raises(MergeQAUsageError, match="Did you mean 'idempotent'"):
        get_property("idempotnt")


def test_requested_property_without_description_names_the_gap() -> None:
    with pytest.raises(MergeQAUsageError, match="endpoints cannot be checked on _mean: it declares no endpoints"):
        check_merge_operator(_mean, ["endpoints"])


def test_operator_description_is_validated() -> None:
    with pytest.raises(MergeQAUsageError, match="min_models=3 is larger than max_models=2"):
        MergeOperator(_mean, min_models=3, max_models=2)
    with pytest.raises(MergeQAUsageError, match="see MergeOperator"):
        check_merge_operator(_mean, ["idempotent"], bases="required")
    with pytest.raises(MergeQAUsageError, match="unknown property 'idempotnt'"):
        MergeOperator(_mean, not_applicable={"idempotnt": "typo"})


def test_unknown_mergekit_method_lists_the_valid_ones() -> None:
    with pytest.raises(MergeQAUsageError, match="Did you mean 'slerp'.*Available: .*linear"):
        mergekit_operator("slurp")


@pytest.mark.parametrize(("call", "message"), [
    (lambda: mst.shapes(min_side=3, max_side=2), "min_side=3 is larger than max_side=2"),
    (lambda: mst.magnitudes("float16", max_exponent=20), "exponents -14..20 leave the normal range"),
    (lambda: mst.densities(min_density=0.0), r"min_density=0.0 must be in \(0, 1\]"),
    (lambda: mst.merge_weights(2, min_total=2.0), "min_total=2.0 is larger than max_weight=1.0"),
    (lambda: mst.aligned_tensors(2, kinds=("colinar",)), "unknown \\['colinar'\\]"),
    (lambda: mst.tensors("float64", (2,)), "dtype='float64' is not a merge dtype"),
])
def test_strategy_arguments_are_checked_up_front(call: Any, message: str) -> None:
    from hypothesis.errors import InvalidArgument

    with pytest.raises(mst.InvalidStrategyArgument, match=message) as caught:
        call()
    assert isinstance(caught.value, InvalidArgument) and isinstance(caught.value, MergeQAUsageError)


# ----------------------------------------------------------------------------- strategies


@given(mst.aligned_tensors(st.integers(1, 4), kinds=mst.TENSOR_KINDS, magnitude=mst.magnitudes("float16")))
def test_aligned_tensors_share_shape_and_dtype(tensors: list[torch.Tensor]) -> None:
    first = tensors[0]
    assert all(t.shape == first.shape and t.dtype == first.dtype for t in tensors)
    assert all(bool(torch.isfinite(t).all()) for t in tensors)


@given(st.integers(1, 5).flatmap(lambda n: mst.merge_weights(n, min_total=0.5)))
def test_merge_weights_keep_their_minimum_total(weights: list[float]) -> None:
    assert sum(weights) >= 0.5 and all(0.0 <= w <= 1.0 for w in weights)
    assert all(w == 0.0 or w >= 2.0**-10 for w in weights)


@given(mst.transformer_block_state_dicts(2, hidden=st.integers(2, 4)))
def test_transformer_block_state_dicts_align(dicts: list[dict[str, torch.Tensor]]) -> None:
    first, second = dicts
    assert list(first) == list(second) and "self_attn.q_proj.weight" in first
    assert all(first[k].shape == second[k].shape for k in first)
    assert torch.equal(first["position_ids"], second["position_ids"])


@given(mst.aligned_tensors(2, dtype=mst.float_dtypes(), magnitude=mst.magnitudes("float16")))
def test_merge_inputs_repr_rebuilds_the_exact_call(tensors: list[torch.Tensor]) -> None:
    inputs = MergeInputs(models=(tensors[0],), base=tensors[1], params={"t": math.inf, "w": [0.5]}, seed=3)
    rebuilt = eval(repr(inputs), {"MergeInputs": MergeInputs})  # noqa: S307 - our own repr
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(rebuilt.tensors, inputs.tensors))
    assert rebuilt.params == inputs.params and rebuilt.seed == 3


def test_block_inputs_repr_rebuilds_the_state_dicts() -> None:
    inputs = BlockInputs(seeds=(1, 2), hidden=2, dtype="bfloat16", with_base=True, params={"weight": [1.0]})
    rebuilt = eval(repr(inputs), {"BlockInputs": BlockInputs})  # noqa: S307 - our own repr
    assert rebuilt == inputs and torch.equal(rebuilt.state_dicts()[1]["mlp.up_proj.weight"],
                                             inputs.state_dicts()[1]["mlp.up_proj.weight"])


def test_register_profiles_registers_both_without_loading() -> None:
    before = settings.get_current_profile_name()
    register_profiles(load=None)
    assert settings.get_current_profile_name() == before
    default, thorough = settings.get_profile("mergeqa-default"), settings.get_profile("mergeqa-thorough")
    assert default.deadline is None and thorough.deadline is None
    assert default.derandomize and default.max_examples < thorough.max_examples
    assert set(PROFILES) == {"mergeqa-default", "mergeqa-thorough"}
    with pytest.raises(MergeQAUsageError, match="Did you mean 'mergeqa-default'"):
        register_profiles(load="mergeqa-defualt")
