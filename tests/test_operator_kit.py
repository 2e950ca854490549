"""Tests of the merge-operator kit itself: each property can fail, counterexamples replay and
shrink, strategies and recipes rebuild exactly, the statistics have power and hold still across
seed windows, findings reproduce with mergekit alone, and misuse is a usage error.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mergekit.merge_methods import TensorGroup, merge_method

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.operators import PROFILES, register_profiles
from mergeqa.operators import strategies as mst
from mergeqa.operators.catalogue import CATALOGUE, estimate_bias, get_property
from mergeqa.operators.description import Endpoint, MergeOperator, PerModel, PropertyViolation
from mergeqa.operators.findings import KNOWN, reproduction
from mergeqa.operators.inputs import BlockInputs, MergeInputs, RealisticInputs, realistic_inputs, realistic_size
from mergeqa.operators.mergekit_adapter import mergekit_operator
from mergeqa.operators.runner import as_operator, check_merge_operator, run_property

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def operator_settings() -> settings:
    """The loaded hypothesis profile if it is a mergeqa one, else mergeqa-default (without loading it)."""
    if settings.get_current_profile_name().startswith("mergeqa-"):
        return settings()
    register_profiles(load=None)
    return settings.get_profile("mergeqa-default")



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


def _shrunk_below_float32(models: list[torch.Tensor]) -> torch.Tensor:
    return models[0] if models[0].dtype == torch.float32 else models[0] * 0.9


def _gated_by_fp16_squares(models: list[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """Keeps the task vector only if its sum of squares times 2**-10, taken in the input dtype, is
    non-zero: fine in float32, the base in fp16 when SFT deltas (5e-4..2e-3) give products under
    fp16's smallest subnormal (6e-8)."""
    delta = models[0] - base
    return base + delta * (delta * delta * 2**-10).sum().clamp(max=1).ceil()


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
    ("low_precision_agrees", _shrunk_below_float32, {}),
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
        check_merge_operator(fn, [prop], regimes=("degenerate",), settings=operator_settings, **description)
    message = str(caught.value)
    assert f"violates {prop}" in message and "Shrunk counterexample" in message
    # The counterexample is a real failure: replaying it fails again.
    with pytest.raises(PropertyViolation):
        get_property(prop).check(as_operator(fn, **description), **caught.value.example)


def test_counterexample_is_shrunk(operator_settings: settings) -> None:
    operator = MergeOperator(lambda models: 0.75 * models[0] + 0.25 * models[-1], name="first_heavy", min_models=2)
    with pytest.raises(PropertyViolation) as caught:
        run_property("order_invariant", operator, "degenerate", operator_settings)
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
    assert [r.status for r in results] == ["holds"] * 14  # 7 properties x 2 regimes
    assert [r.regime for r in results[:2]] == ["realistic", "degenerate"]
    assert all(r.examples > 0 for r in results)


def test_mergekit_method_object_is_accepted(operator_settings: settings) -> None:
    from mergekit.merge_methods import get

    results = check_merge_operator(get("linear"), ["idempotent", "dtype_preserved"], settings=operator_settings)
    assert [r.status for r in results] == ["holds"] * 4


@merge_method(name="scaled_first")
def _scaled_first(group: TensorGroup, alpha: float) -> torch.Tensor:
    return group.entries[0].tensor * alpha


def test_mergekit_method_with_a_required_parameter_asks_for_its_strategy(operator_settings: settings) -> None:
    with pytest.raises(MergeQAUsageError, match=r"needs parameter\(s\) alpha .* parameters=\{'alpha'"):
        check_merge_operator(_scaled_first, ["idempotent"])
    results = check_merge_operator(_scaled_first, ["idempotent", "dtype_preserved"], settings=operator_settings,
                                   parameters={"alpha": 1.0}, regimes=("degenerate",))
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
    with pytest.raises(MergeQAUsageError, match="unknown property 'idempotnt'.*Did you mean 'idempotent'"):
        check_merge_operator(_mean, ["dtype_preserved"], not_applicable={"idempotnt": "typo"})
    with pytest.raises(MergeQAUsageError, match="unknown input regime 'realstic'"):
        check_merge_operator(_mean, ["dtype_preserved"], regimes=("realstic",))


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
    (lambda: RealisticInputs(shape=(4,), kind="sparse"), "kind='sparse'; use one of dense"),
    (lambda: realistic_inputs(mergekit_operator("linear"), kinds=("lowrank",)), "kinds=\\['lowrank'\\]"),
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
    assert set(PROFILES) == {"mergeqa-default", "mergeqa-thorough", "mergeqa-large"}
    assert settings.get_profile("mergeqa-large").max_examples <= default.max_examples
    with pytest.raises(MergeQAUsageError, match="Did you mean 'mergeqa-default'"):
        register_profiles(load="mergeqa-defualt")


# ----------------------------------------------------------------------------- realistic regime


def test_realistic_counterexample_is_a_one_line_recipe(operator_settings: settings) -> None:
    operator = as_operator(_gated_by_fp16_squares, base="required", max_models=1, name="gated")
    with pytest.raises(PropertyViolation) as caught:
        run_property("low_precision_agrees", operator, "realistic", operator_settings)
    message = str(caught.value)
    assert "on realistic inputs" in message and "RealisticInputs(shape=" in message
    assert "dtype='float16'" in message  # bf16 keeps float32's exponent range: no underflow there
    with pytest.raises(PropertyViolation):  # the recipe replays the failure
        get_property("low_precision_agrees").check(operator, **caught.value.example)
    # Degenerate inputs (task vectors of 2**-6 and up) never underflow: only realistic ones catch it.
    run_property("low_precision_agrees", operator, "degenerate", operator_settings)


@settings(max_examples=10, deadline=None)
@given(st.data())
def test_realistic_inputs_rebuild_from_their_repr(data: st.DataObject) -> None:
    with realistic_size(2**12):
        inputs = data.draw(realistic_inputs(mergekit_operator("ties")))
    rebuilt = eval(repr(inputs), {"RealisticInputs": RealisticInputs})  # noqa: S307 - our own repr
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(rebuilt.tensors, inputs.tensors))
    assert rebuilt.params == inputs.params and rebuilt.seed == inputs.seed
    assert inputs.models[0].numel() <= 2**12


@pytest.mark.parametrize("kind", ["dense", "correlated", "lora", "untouched"])
def test_realistic_inputs_look_like_fine_tunes(kind: str) -> None:
    inputs = RealisticInputs(shape=(128, 256), models=2, kind=kind, delta=2e-4, outliers=4).build()
    base, delta = inputs.base.double(), inputs.models[0].double() - inputs.base.double()
    assert 0.019 < float(base.abs().median()) / 0.6745 < 0.021  # N(0, 0.02): median |x| = 0.6745 sigma
    assert float(base.abs().max()) > 0.5  # the 4 outliers: 50 x the weight std
    if kind == "untouched":
        assert not bool(delta.any())
        return
    typical = float(delta.abs().median()) / 0.6745  # median |N(0, s)| = 0.6745 s, robust to outliers
    spread = {"correlated": 2e-4 * math.sqrt(1.25)}.get(kind, 2e-4)
    assert 0.9 * spread < typical < 1.1 * spread or kind == "lora"
    if kind == "lora":  # rank 8, plus at most 4 entries touched by the outliers; float32 rounding aside
        singular = torch.linalg.svdvals(delta)
        assert float(singular[12]) < 1e-3 * float(singular[0]) < float(singular[7])
    if kind == "correlated":
        other = inputs.models[1].double() - base
        cosine = float((delta * other).sum() / (delta.norm() * other.norm()))
        assert 0.7 < cosine < 0.9


def test_realistic_repr_names_only_what_differs() -> None:
    recipe = RealisticInputs(shape=(64, 64), delta=0.2, dtype="float16", params={"t": 0.5})
    assert repr(recipe) == "RealisticInputs(shape=(64, 64), delta=0.2, dtype='float16', params={'t': 0.5})"
    inputs = recipe.build().with_params(t=1.0).copies_of_first()
    assert repr(inputs) == repr(recipe) + ".build().with_params(t=1.0).copies_of_first()"
    assert "too large to print" in repr(inputs.map(lambda t: t * 2))


# ----------------------------------------------------------------------------- statistics


def _exact_dare(models: list[torch.Tensor], base: torch.Tensor, density: list[float], **_: Any) -> torch.Tensor:
    """DARE as the paper defines it: keep each entry with probability p, divide by p."""
    delta = models[0] - base
    return base + delta * torch.bernoulli(torch.full_like(delta, density[0])) / density[0]


def _two_entries(density: float = 0.5, n: int = 2) -> MergeInputs:
    return MergeInputs.of(models=[[1.0] * n], base=[0.0] * n, params={"density": [density], "weight": [1.0]})


def _realistic_task(seed: int = 0) -> MergeInputs:
    return RealisticInputs(shape=(4096,), params={"density": [0.5], "weight": [1.0]}, seed=seed).build()


def test_bias_estimate_has_power_and_tells_tiny_tensors_from_expectation() -> None:
    dare, della = mergekit_operator("dare_linear"), mergekit_operator("della")
    exact = as_operator(_exact_dare, base="required", max_models=1, stochastic=True)
    tiny = estimate_bias(dare, _two_entries())           # mergekit's L1 matching on 2 entries: 0.75 x
    assert tiny.verdict == "biased" and all(abs(r - 0.75) < 0.1 for r in tiny.ratios)
    large = estimate_bias(dare, _realistic_task())        # ... on 4096 entries: unbiased
    assert large.verdict == "unbiased" and max(abs(r - 1) for r in large.ratios) < 0.02
    assert max(large.errors) < 0.05 / 6                   # power: a 5% bias would be > 6 standard errors
    magnitude = estimate_bias(della, _realistic_task())   # DELLA: biased by magnitude class at any size
    assert magnitude.verdict == "biased" and magnitude.ratios[0] < 0.8 < 1.05 < magnitude.ratios[-1]
    assert estimate_bias(exact, _two_entries(0.5, 4)).verdict != "biased"  # 1/p rescaling, even on 4 entries


@pytest.mark.parametrize(("method", "inputs", "verdict"), [
    ("dare_linear", _two_entries(), "biased"),
    ("dare_linear", _realistic_task(), "unbiased"),
    ("della", _realistic_task(), "biased"),
], ids=["dare-tiny", "dare-realistic", "della-realistic"])
def test_bias_verdict_is_the_same_on_disjoint_seed_windows(method: str, inputs: MergeInputs, verdict: str) -> None:
    # Three windows here (bench/operator_table.py --stability shows ten); windows are 1000 seeds apart.
    verdicts = [estimate_bias(mergekit_operator(method), inputs.with_seed(1000 * w)).verdict for w in range(3)]
    assert verdicts == [verdict] * 3


# ----------------------------------------------------------------------------- findings


def _run_reproduction(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {})  # noqa: S102 - our own generated reproduction
    return out.getvalue()


@pytest.mark.parametrize(("finding", "shows"), [
    ("model_stock-low_precision_agrees-degenerate", "task vector, low precision / float32: 0.0"),
    ("nearswap-fp16_finite-realistic", "finite: False float32 finite: True"),
    ("karcher-order_invariant-degenerate", "max |difference|: 0.12499"),
    ("ramplus_tl-dtype_preserved-realistic", "torch.bfloat16 -> torch.float32"),
])
def test_reproduction_shows_the_finding_with_mergekit_alone(finding: str, shows: str) -> None:
    known = next(k for k in KNOWN if k.id == finding)
    code = reproduction(known)
    assert "mergeqa" not in code
    assert shows in _run_reproduction(code)


def test_the_docs_findings_table_is_the_registry_s() -> None:
    """docs/operators.md's generated block ``operator-findings`` is ``findings.table()`` (the
    registry, no mergekit run): a changed finding without the docs is a red build. The fix:
    ``.venv/bin/python bench/operator_findings.py --write``."""
    import importlib.util

    from mergeqa.operators.findings import table

    spec = importlib.util.spec_from_file_location("operator_findings", REPO / "bench" / "operator_findings.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    figures = bench.blocks()
    names = [m.group("name") for m in figures.BLOCK.finditer(bench.DOC.read_text())]
    assert bench.BLOCK_NAME in names, f"docs/operators.md has no block {bench.BLOCK_NAME!r}"
    diffs = figures.differences({bench.BLOCK_NAME: table()}, files=(bench.DOC,))
    assert not diffs, "\n".join(diffs) + "\nthe findings table drifted: .venv/bin/python bench/operator_findings.py --write"


def test_layers_import_without_a_circle() -> None:
    import subprocess
    import sys

    probe = ("import sys, mergeqa.operators.mergekit_adapter, mergeqa.operators.inputs; "
             "print(sorted(m for m in sys.modules if m.startswith('mergeqa.operators.')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "catalogue" not in loaded and "runner" not in loaded and "description" in loaded


def test_the_docs_example_works_as_written_in_a_fresh_directory() -> None:
    """docs/operators.md's block, alone in a fresh directory (no conftest): it passes under the
    default profile, a planted bug is found, `--hypothesis-profile=mergeqa-thorough` loads without
    any register_profiles() call, and a misspelt profile is one line. The thorough runs in full:
    bench/operator_readme.py (about 100 s and 60 s on one core)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("operator_readme", REPO / "bench" / "operator_readme.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    source = bench.docs_example()
    rc, out, _ = bench.run_example(source, None)
    assert rc == 0 and "1 passed" in out, out[-2000:]
    rc, out, _ = bench.run_example(source.replace(bench.CORRECT, bench.PLANTED), "mergeqa-default")
    assert rc == 1 and re.search(r"violates \d+ of \d+ property checks", out) and "weight_normalised" in out, out[-2000:]
    rc, out, _ = bench.run_example(source, "mergeqa-thorough", "--collect-only")  # unregistered: INTERNALERROR, 3
    assert rc == 0 and "1 test collected" in out, out[-2000:]
    rc, out, _ = bench.run_example(source, "mergeqa-thoro", "--collect-only")
    assert rc == 4 and "Traceback" not in out and "Did you mean 'mergeqa-thorough'?" in out, out[-2000:]


def test_large_profile_draws_real_shapes_whole_or_as_row_blocks() -> None:
    from hypothesis import given, settings as hsettings

    from mergeqa.operators.inputs import BLOCK_ENTRIES, REAL_SHAPES, real_shape, realistic_inputs
    from mergeqa.operators.mergekit_adapter import mergekit_operator

    assert real_shape((14336, 4096), "tensor") == ((14336, 4096), ())
    assert real_shape((14336, 4096), "entry") == ((BLOCK_ENTRIES // 4096, 4096), (14336, 4096))
    assert mergekit_operator("ties").locality == "tensor" and mergekit_operator("linear").locality == "entry"
    seen = []

    @hsettings(max_examples=3, derandomize=True, deadline=None, database=None)
    @given(realistic_inputs(mergekit_operator("linear"), max_entries=6 * 10**7))
    def draw(inputs):
        seen.append(inputs)

    draw()
    for inputs in seen:
        assert "block_of=" in inputs.source
        assert tuple(inputs.models[0].shape)[1:] in {s[1:] for s in REAL_SHAPES}
        assert inputs.models[0].numel() <= BLOCK_ENTRIES


def test_realistic_bands_are_the_measured_delta_scales() -> None:
    from mergeqa.operators.inputs import DELTA_BANDS, RealisticInputs

    stds = sorted(0.02 * band for band in DELTA_BANDS)
    assert stds[0] >= 5e-4 - 1e-12 and stds[-2] <= 2e-3 + 1e-12 and stds[-1] == pytest.approx(3e-2)
    two = RealisticInputs(shape=(4096,), models=2, deltas=(5e-4, 1e-4)).build()
    measured = [float((m - two.base).std()) for m in two.models]
    assert measured == pytest.approx([5e-4, 1e-4], rel=0.05)
    with pytest.raises(Exception, match="one per model"):
        RealisticInputs(shape=(4,), models=3, deltas=(1e-3,))


def test_a_real_size_violation_lets_go_of_its_tensors():
    """pytest keeps a failure's exception for the session: under mergeqa-large the example's
    tensors and the frames' locals went with it (19.6 GB held after one model_stock cell).
    `runner._release` drops both; `_entries` decides which examples keep their tensors."""
    import torch

    from mergeqa.operators.description import PropertyViolation
    from mergeqa.operators.runner import KEPT_ENTRIES, _entries, _release

    def operator_raises():
        held = torch.zeros(1000)  # a local the traceback's frame keeps alive
        raise ValueError(f"inside the operator ({held.numel()})")

    try:
        operator_raises()
    except ValueError as exc:
        cause = exc
    inputs = types.SimpleNamespace(models=[torch.zeros(KEPT_ENTRIES)], base=torch.zeros(8))
    violation = PropertyViolation("broke", example={"inputs": inputs})
    violation.__cause__ = cause
    assert _entries(violation.example) == KEPT_ENTRIES + 8 > KEPT_ENTRIES
    assert "held" in cause.__traceback__.tb_next.tb_frame.f_locals
    _release(violation)
    assert violation.example is None and violation.__cause__ is cause  # the chain stays: it says who raised
    assert "held" not in cause.__traceback__.tb_next.tb_frame.f_locals
