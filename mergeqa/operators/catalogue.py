"""The catalogue of merge-operator properties: what each promise is and how it is checked.

A property draws inputs for an operator in a regime (``inputs``: realistic or degenerate), calls
it, and when the promise does not hold raises ``PropertyViolation`` with the figures. Searching
with hypothesis, shrinking and reporting belong to ``runner``; mergekit specifics to
``mergekit_adapter``; the quality of whole merged models to the plugin's checks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from hypothesis import currently_in_test_context, event
from hypothesis import strategies as st

from mergeqa.core.errors import MergeQAUsageError, did_you_mean
from mergeqa.operators import inputs as mi
from mergeqa.operators.description import (
    MergeOperator,
    OperatorRaised,
    PropertyViolation,
    seeded,
    single_threaded,
)
from mergeqa.operators.inputs import REGIMES, BlockInputs, MergeInputs, Regime, _dtype_name

if TYPE_CHECKING:
    import torch

# ----------------------------------------------------------------------------- checking one call


def call(operator: MergeOperator, inputs: MergeInputs, **kwargs: Any) -> torch.Tensor:
    """Call the operator and hold it to the basics every property relies on.

    It must return a tensor of the models' shape and leave its inputs as they were; an exception
    becomes ``OperatorRaised`` (a violation: the inputs are within the operator's contract).
    """
    import torch

    before = [t.clone() for t in inputs.tensors]
    try:
        result = operator(inputs, **kwargs)
    except Exception as error:
        raise OperatorRaised(f"{operator.name} raised {type(error).__name__}: {error}") from error
    if not isinstance(result, torch.Tensor) or result.shape != inputs.models[0].shape:
        got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise PropertyViolation(
            f"{operator.name} returned {got}, expected a tensor of shape {tuple(inputs.models[0].shape)}"
        )
    for index, (old, new) in enumerate(zip(before, inputs.tensors)):
        if not torch.equal(old, new):
            raise PropertyViolation(f"{operator.name} modified input tensor {index} in place")
    return result


def assert_close(
    got: torch.Tensor,
    want: torch.Tensor,
    *,
    dtype: torch.dtype,
    scale: float,
    factor: float | None = None,
    rtol: float | None = None,
    what: str,
    equal_nan: bool = False,
) -> None:
    """Fail unless ``|got - want| <= factor * eps(dtype) * scale`` (or ``rtol * scale``) everywhere.

    NaN fails unless ``equal_nan`` and both sides are NaN: consistency checks (order, weights,
    scale, state dict, device) pass where both paths give NaN, which is another property's finding.
    """
    import torch

    got64, want64 = got.detach().double().cpu(), want.detach().double().cpu()
    if (factor is None) == (rtol is None):
        raise TypeError("assert_close takes exactly one of factor and rtol")
    bound = (rtol if rtol is not None else factor * torch.finfo(dtype).eps) * scale
    allowed = f"rtol {rtol:g}" if rtol is not None else f"{factor:g} x eps({_dtype_name(want)})"
    difference = (got64 - want64).abs()
    bad = ~(difference <= bound) & ~(got64 == want64)  # inf == inf is fine
    if equal_nan:
        bad &= ~(got64.isnan() & want64.isnan())
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        worst = "NaN" if bool(difference[bad].isnan().any()) else f"{float(difference[bad].max()):.3g}"
        raise PropertyViolation(
            f"{what}: max |got - want| = {worst} > {bound:.3g} ({allowed} x input scale {scale:.3g}); "
            f"first at {index}: got {float(got64[index])!r}, "
            f"want {float(want64[index])!r}"
        )


def both_paths(first: Callable[[], torch.Tensor], second: Callable[[], torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Run two ways of computing one merge (each a ``call``); ``None`` when both raise the same
    exception type. A consistency property (order, weights, scale, device) then holds: the
    refusal itself is another property's finding. Only one path raising is a violation."""
    try:
        want = first()
    except OperatorRaised as refused:
        try:
            second()
        except OperatorRaised as again:
            if type(again.__cause__) is type(refused.__cause__):
                _note(f"both paths raised {type(refused.__cause__).__name__}")
                return None
        raise
    return want, second()


def _note(message: str) -> None:
    """Count an outcome in hypothesis's statistics (a no-op when a check is replayed by hand)."""
    if currently_in_test_context():
        event(message)


def _nonfinite_summary(tensor: torch.Tensor) -> str:
    import torch

    values = tensor.detach().double().cpu()
    nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
    index = tuple(int(i) for i in (~torch.isfinite(values)).nonzero()[0])
    return f"{nan} NaN and {inf} Inf of {values.numel()} entries (first at {index}: {float(values[index])})"




# ----------------------------------------------------------------------------- the properties


class MergeProperty(ABC):
    """One promise a merge method can make, checkable on any ``MergeOperator``.

    ``examples(op, regime)`` draws the keyword arguments of ``check(op, **example)``, which raises
    ``PropertyViolation`` when the promise is broken; ``runner.run_property`` searches with
    hypothesis and raises the shrunk violation. ``requirement(op)`` says why a property does not
    apply. ``cost`` divides the profile's example count (a property that merges hundreds of times
    per example runs fewer examples). ``size_sensitive`` properties can fail only past some tensor
    size (reductions overflowing or losing precision): the mergeqa-large profile gives them real
    matrix sizes.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    regimes: ClassVar[tuple[Regime, ...]] = REGIMES
    cost: ClassVar[int] = 1
    size_sensitive: ClassVar[bool] = False

    def requirement(self, operator: MergeOperator) -> str | None:
        """Why the property does not apply to ``operator`` (``None``: it applies)."""
        return None

    def unavailable(self) -> str | None:
        """Why the property cannot run here, e.g. no CUDA device (``None``: it can)."""
        return None

    @abstractmethod
    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]: ...

    @abstractmethod
    def check(self, operator: MergeOperator, **example: Any) -> None: ...

    def not_applicable(self, operator: MergeOperator) -> str | None:
        """The operator's own reason, then the structural one."""
        return operator.not_applicable.get(self.name) or self.requirement(operator)

    def __repr__(self) -> str:
        return f"<property {self.name}: {self.summary}>"


def _inputs(inputs: st.SearchStrategy[MergeInputs]) -> st.SearchStrategy[dict[str, Any]]:
    return inputs.map(lambda i: {"inputs": i})


@dataclasses.dataclass(frozen=True, repr=False)
class Idempotent(MergeProperty):
    """merge(A, A, ..., A) == A, without a base (see ``ZeroTaskVectors`` for methods that take one).

    Within ``factor`` (8) x eps x input scale, plus, for an operator that reduces over the whole
    tensor (``locality`` other than "entry": norms, as in karcher), sqrt(n) / 2 x eps x input
    scale: the probabilistic bound on the relative error of a float32 reduction over n entries
    (Higham and Mary 2019, lambda sqrt(n) u). torch's float32 ``vector_norm`` on CPU under-counts
    a 16x131072 tensor by ~250 eps (float64 as the truth), and karcher, which divides by one such
    norm and multiplies by another, returns A x (1 - 26..43 eps) there; at 4096 entries 0.4 eps.
    """

    name: ClassVar[str] = "idempotent"
    summary: ClassVar[str] = "merging copies of one tensor returns it"
    factor: float = 8.0

    def requirement(self, operator: MergeOperator) -> str | None:
        if operator.base == "required":
            return "needs a base: copies of the base are the zero_task_vectors check"
        return None

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        return mi.inputs_in(regime, operator, with_base=False).map(lambda i: {"inputs": i.copies_of_first()})

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        got = call(operator, inputs)
        reduction = 0.0 if operator.locality == "entry" else math.sqrt(got.numel()) / 2
        assert_close(got, inputs.models[0], dtype=inputs.dtype, scale=inputs.scale(),
                     factor=self.factor + reduction, what="merge(A, ..., A) != A")


@dataclasses.dataclass(frozen=True, repr=False)
class ZeroTaskVectors(MergeProperty):
    """With every model equal to the base (all task vectors zero: untouched layers) the merge
    returns the base."""

    name: ClassVar[str] = "zero_task_vectors"
    summary: ClassVar[str] = "models equal to the base give the base"
    factor: float = 8.0

    def requirement(self, operator: MergeOperator) -> str | None:
        return "takes no base" if operator.base == "none" else None

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        return mi.inputs_in(regime, operator, with_base=True).map(lambda i: {"inputs": i.at_base()})

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        got = call(operator, inputs)
        assert_close(got, inputs.base, dtype=inputs.dtype, scale=inputs.scale(),
                     factor=self.factor, what="merge(base; base, ..., base) != base")


@dataclasses.dataclass(frozen=True, repr=False)
class Endpoints(MergeProperty):
    """At each declared endpoint (e.g. SLERP's t=0 and t=1) the merge returns that input."""

    name: ClassVar[str] = "endpoints"
    summary: ClassVar[str] = "endpoint parameters return the corresponding input"
    factor: float = 8.0

    def requirement(self, operator: MergeOperator) -> str | None:
        return None if operator.endpoints else "declares no endpoints"

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        def at(endpoint: Any) -> st.SearchStrategy[dict[str, Any]]:
            inputs = mi.inputs_in(regime, operator, models=operator.model_counts(at_least=endpoint.min_models),
                                  with_base=True if endpoint.returns == "base" else None)
            return inputs.map(lambda i: {
                "inputs": i.with_params(**endpoint.params_for(len(i.models))),
                "returns": endpoint.returns,
            })

        return st.one_of([at(endpoint) for endpoint in operator.endpoints])

    def check(self, operator: MergeOperator, inputs: MergeInputs, returns: int | str) -> None:
        want = inputs.base if returns == "base" else inputs.models[returns]
        got = call(operator, inputs)
        assert_close(got, want, dtype=inputs.dtype, scale=inputs.scale(), factor=self.factor,
                     what=f"endpoint {dict(inputs.params)} does not return input {returns!r}")


@dataclasses.dataclass(frozen=True, repr=False)
class OrderInvariant(MergeProperty):
    """Permuting the models (with their per-model parameters) leaves the merge unchanged."""

    name: ClassVar[str] = "order_invariant"
    summary: ClassVar[str] = "permuting the models does not change the merge"
    factor: float = 16.0

    def requirement(self, operator: MergeOperator) -> str | None:
        if operator.max_models is not None and operator.max_models < 2:
            return "merges a single model (besides the base)"
        if operator.stochastic:
            return "draws its random masks model by model, so a permutation changes the draw"
        return None

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        inputs = mi.inputs_in(regime, operator, models=operator.model_counts(at_least=2))

        @st.composite
        def draw_example(draw: st.DrawFn) -> dict[str, Any]:
            drawn = draw(inputs)
            permutation = draw(_permutations(len(drawn.models)))
            return {"inputs": drawn, "permutation": list(permutation)}

        return draw_example()

    def check(self, operator: MergeOperator, inputs: MergeInputs, permutation: Sequence[int]) -> None:
        per_model = set(operator.per_model)
        permuted = dataclasses.replace(
            inputs,
            models=tuple(inputs.models[i] for i in permutation),
            params={k: [v[i] for i in permutation] if k in per_model else v for k, v in inputs.params.items()},
        )
        merged = both_paths(lambda: call(operator, inputs), lambda: call(operator, permuted))
        if merged is None:
            return
        want, got = merged
        assert_close(got, want, dtype=inputs.dtype, scale=inputs.scale(), factor=self.factor,
                     what=f"models in order {list(permutation)} merge differently", equal_nan=True)


@dataclasses.dataclass(frozen=True, repr=False)
class WeightNormalised(MergeProperty):
    """Multiplying every weight by the same positive factor leaves the merge unchanged."""

    name: ClassVar[str] = "weight_normalised"
    summary: ClassVar[str] = "only the ratios of the weights matter"
    factor: float = 16.0

    def requirement(self, operator: MergeOperator) -> str | None:
        if operator.weights is None:
            return "has no weights"
        if not operator.normalizes_weights:
            return "does not normalise its weights: scaling them scales the task vectors"
        return None

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries({
            "inputs": mi.inputs_in(regime, operator),
            "factor": st.sampled_from([2.0, 0.5, 3.0, 0.1, 10.0]),
        })

    def check(self, operator: MergeOperator, inputs: MergeInputs, factor: float) -> None:
        weights = inputs.params[operator.weights]
        scaled = inputs.with_params(**{operator.weights: [w * factor for w in weights]})
        merged = both_paths(lambda: call(operator, inputs), lambda: call(operator, scaled))
        if merged is None:
            return
        want, got = merged
        assert_close(got, want, dtype=inputs.dtype, scale=inputs.scale(), factor=self.factor,
                     what=f"weights x {factor:g} change the merge", equal_nan=True)


@dataclasses.dataclass(frozen=True, repr=False)
class ScaleEquivariant(MergeProperty):
    """merge(c * inputs) == c * merge(inputs) for powers of two c (exact in floating point).

    Drawn in fp32 with c in 2**-12..2**12; the degenerate regime's entries of 2**-6..2**6 then
    reach the small norms (~1e-7) where absolute epsilons inside an operator start to matter.
    ``rtol`` of the input scale (0.1%) tolerates epsilons that barely move the result and catches
    ones that change it (a norm clamped, a tensor taken for zero).
    """

    name: ClassVar[str] = "scale_equivariant"
    summary: ClassVar[str] = "scaling every input scales the merge"
    rtol: float = 1e-3

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        exponent = st.integers(1, 12).flatmap(lambda k: st.sampled_from([k, -k]))
        return st.fixed_dictionaries({
            "inputs": mi.inputs_in(regime, operator, dtypes=("float32",)),
            "scale": exponent.map(lambda k: 2.0**k),
        })

    def check(self, operator: MergeOperator, inputs: MergeInputs, scale: float) -> None:
        merged = both_paths(lambda: call(operator, inputs) * scale,
                            lambda: call(operator, inputs.map(lambda t: t * scale)))
        if merged is None:
            return
        want, got = merged
        assert_close(got, want, dtype=inputs.dtype, scale=inputs.scale() * scale, rtol=self.rtol,
                     what=f"merge(x * {scale:g}) != merge(x) * {scale:g}", equal_nan=True)


@dataclasses.dataclass(frozen=True, repr=False)
class FiniteOnDegenerate(MergeProperty):
    """Degenerate-looking inputs give a finite output. Degenerate regime: zero, colinear/antipodal
    and outlier sets, rows of one element, all-zero weights. Realistic regime: untouched tensors
    (zero task vectors), LoRA-like and correlated task vectors. Raising ``ValueError`` (an explicit
    refusal) also passes: the promise is "no silent NaN/Inf"."""

    name: ClassVar[str] = "finite_on_degenerate"
    summary: ClassVar[str] = "degenerate inputs give finite output or a ValueError"

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        if regime == "realistic":
            return _inputs(mi.realistic_inputs(operator, kinds=("untouched", "lora", "correlated")))
        return _inputs(mi.merge_inputs(operator, kinds=("zero", "colinear", "outlier"), min_side=1,
                                       exponents=(-20, 6), min_total_weight=None, allow_zero=True))

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        import torch

        try:
            got = call(operator, inputs)
        except OperatorRaised as raised:
            if isinstance(raised.__cause__, ValueError):
                _note("refused with ValueError")
                return
            raise
        if not bool(torch.isfinite(got).all()):
            raise PropertyViolation(f"output has {_nonfinite_summary(got)}")


@dataclasses.dataclass(frozen=True, repr=False)
class DtypePreserved(MergeProperty):
    """The merge of fp32 / bf16 / fp16 inputs comes back in the same dtype."""

    name: ClassVar[str] = "dtype_preserved"
    summary: ClassVar[str] = "output dtype equals input dtype"

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        return _inputs(mi.inputs_in(regime, operator))

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        got = call(operator, inputs)
        if got.dtype != inputs.dtype:
            raise PropertyViolation(f"{_dtype_name(inputs.models[0])} inputs gave a {_dtype_name(got)} output")


@functools.lru_cache(maxsize=None)
def _permutations(n: int) -> st.SearchStrategy[list[int]]:
    return st.permutations(range(n))


def _density_models(operator: MergeOperator) -> int:
    # A per-model density is one model's kept fraction; a shared one (e.g. SCE's top-k over the
    # variance across models) needs at least two models to mean anything.
    return max(operator.min_models, 1 if operator.density in operator.per_model else 2)


@dataclasses.dataclass(frozen=True, repr=False)
class DensityKept(MergeProperty):
    """With density d the merged task vector keeps about d of its entries.

    Deterministic pruning: within one entry of ``d * n``, plus ``lost`` (0.1%) of the entries: a
    kept delta below half an ulp of its base entry vanishes in the sum (realistic deltas are
    normal, so a few are that small). Stochastic pruning: plus ``z * sqrt(n d (1 - d))``
    (binomial spread, z = 4.5).
    """

    name: ClassVar[str] = "density_kept"
    summary: ClassVar[str] = "the kept fraction of the task vector is close to the density"
    z: float = 4.5
    lost: float = 1e-3

    def requirement(self, operator: MergeOperator) -> str | None:
        return None if operator.density else "has no density parameter"

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        return _inputs(mi.sparsification_inputs(operator, _density_models(operator), regime))

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        import torch

        density = inputs.params[operator.density]
        density = density[0] if isinstance(density, list) else density
        merged = call(operator, inputs).double() - inputs.base.double()
        n = merged.numel()
        kept = int(torch.count_nonzero(merged))
        spread = self.z * math.sqrt(n * density * (1 - density)) if operator.stochastic else 0.0
        allowed = 1.0 + self.lost * n + spread
        if abs(kept - density * n) > allowed:
            raise PropertyViolation(
                f"kept {kept} of {n} entries ({kept / n:.3f}) at density {density:.3g}; "
                f"expected {density * n:.1f} +- {allowed:.1f}"
            )


@dataclasses.dataclass(frozen=True)
class BiasEstimate:
    """Mean merged task vector over seeded draws, against the task vector, by magnitude class.

    Entries are split into ``len(ratios)`` classes by |task vector| (quartiles, smallest first).
    Per draw and class, ``ratio = <merged tv, tv> / <tv, tv>`` over the class; ``ratios``,
    ``errors`` and ``z`` are its mean over ``draws`` draws (seeds ``first_seed ..``), the standard
    error of that mean, and ``(ratio - 1) / error``. ``biased``: some class has ``|ratio - 1| >
    effect`` and ``|z| > z_bound``. 1.0 everywhere is unbiased in expectation.
    """

    draws: int
    first_seed: int
    ratios: tuple[float, ...]
    errors: tuple[float, ...]
    z: tuple[float, ...]
    effect: float
    z_bound: float
    entries: int

    @property
    def biased(self) -> bool:
        return any(abs(r - 1) > self.effect and abs(z) > self.z_bound for r, z in zip(self.ratios, self.z))

    @property
    def verdict(self) -> str:
        """"biased", "unbiased" (no class off by more than ``effect`` with the power to see it),
        or "undecided" (no bias shown, but one of ``effect`` would not have been detected)."""
        if self.biased:
            return "biased"
        return "unbiased" if self.detectable <= self.effect else "undecided"

    @property
    def detectable(self) -> float:
        """The smallest bias this estimate would have flagged in its noisiest class: the power
        statement behind an "unbiased" verdict (max of ``effect`` and ``z_bound`` errors)."""
        return max(self.effect, self.z_bound * max(self.errors))

    def describe(self) -> str:
        classes = ", ".join(f"{r:.3f} +- {e:.3f} (z {z:+.1f})" for r, e, z in zip(self.ratios, self.errors, self.z))
        return (f"E[merged tv] / tv by |tv| class (smallest first) over {self.draws} draws from seed "
                f"{self.first_seed}, {self.entries} entries: {classes}; bound |ratio - 1| > {self.effect:g} "
                f"with |z| > {self.z_bound:g} (detectable bias {self.detectable:.1%})")


def estimate_bias(
    operator: MergeOperator,
    inputs: MergeInputs,
    *,
    batch: int = 100,
    max_draws: int = 1000,
    classes: int = 4,
    effect: float = 0.05,
    z_bound: float = 6.0,
) -> BiasEstimate:
    """Draw merges with seeds ``inputs.seed + i`` in batches of ``batch`` until a class is biased
    (see ``BiasEstimate``), or no class is a candidate (``|ratio - 1| <= effect / 2``) and an
    ``effect`` bias would be detected (``detectable <= effect``), or ``max_draws``. The stopping
    rule only saves draws: a verdict needs both the effect and z; an "unbiased" verdict at
    ``max_draws`` states its ``detectable`` bias."""
    import torch

    base = inputs.base.double().reshape(-1)
    task_vector = sum(m.double().reshape(-1) - base for m in inputs.models) / len(inputs.models)
    order = task_vector.abs().argsort()
    groups = [g for g in order.tensor_split(min(classes, order.numel())) if bool(task_vector[g].any())]
    norms = torch.stack([task_vector[g].pow(2).sum() for g in groups])
    rows: list[torch.Tensor] = []
    while True:
        for i in range(len(rows), len(rows) + batch):
            merged = call(operator, inputs.with_seed(inputs.seed + i)).double().reshape(-1) - base
            rows.append(torch.stack([(merged[g] * task_vector[g]).sum() for g in groups]) / norms)
        table = torch.stack(rows)
        mean, error = table.mean(0), table.std(0) / math.sqrt(len(rows))
        z = torch.where(error > 0, (mean - 1) / error, (mean - 1).sign() * math.inf)
        estimate = BiasEstimate(len(rows), inputs.seed, tuple(mean.tolist()), tuple(error.tolist()),
                                tuple(z.nan_to_num(0.0).tolist()), effect, z_bound, task_vector.numel())
        candidates = bool(((mean - 1).abs() > effect / 2).any())
        if estimate.biased or len(rows) >= max_draws or not (candidates or estimate.detectable > effect):
            return estimate


@dataclasses.dataclass(frozen=True, repr=False)
class RescaleUnbiased(MergeProperty):
    """Random pruning with rescaling keeps the task vector in expectation (DARE's promise), in
    every magnitude class of its entries (DELLA prunes by magnitude, so a global check would hide
    a per-entry bias).

    Seeded statistical test (``estimate_bias``): 100 to 1000 draws per example (``cost`` 10: one
    example in the default profile, 20 in the thorough one), a class is biased when its
    mean ratio is off by more than ``effect`` (5%) and by more than ``z_bound`` (6) standard
    errors: about 1e-9 false alarms per class and look, and a 5% bias is detected once its
    standard error is below 0.8%. Degenerate: tensors of 2-16 entries, where L1-norm matching
    is biased by O(1/n) (a finding about tiny tensors); realistic: ``min_entries`` (4096) and up,
    where a class ratio's standard error over 100 draws is ~0.5% (biased in expectation).
    """

    name: ClassVar[str] = "rescale_unbiased"
    summary: ClassVar[str] = "random pruning with rescaling is unbiased in expectation"
    cost: ClassVar[int] = 10
    effect: float = 0.05
    z_bound: float = 6.0
    min_entries: int = 4096

    def requirement(self, operator: MergeOperator) -> str | None:
        if operator.density is None:
            return "has no density parameter"
        if not operator.stochastic:
            return "prunes deterministically: there is no expectation to preserve"
        return None

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        def below_one(inputs: MergeInputs) -> dict[str, Any]:
            density = inputs.params[operator.density]
            value = [min(d, 0.9) for d in density] if isinstance(density, list) else min(density, 0.9)
            return {"inputs": inputs.with_params(**{operator.density: value})}

        kinds = ("independent", "outlier")
        return mi.sparsification_inputs(operator, _density_models(operator), regime, kinds,
                                        min_entries=self.min_entries).map(below_one)

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        estimate = estimate_bias(operator, inputs, effect=self.effect, z_bound=self.z_bound)
        if estimate.biased:
            raise PropertyViolation(f"biased in expectation: {estimate.describe()}")


def _z_text(z: float) -> str:
    return f"= {z:.1f}" if z < 1e6 else "> 1e6 (no rounding noise)"


def _fits(reference: torch.Tensor, dtype: torch.dtype) -> bool:
    import torch

    return bool(torch.isfinite(reference).all()) and float(reference.abs().max()) <= 0.75 * torch.finfo(dtype).max


@dataclasses.dataclass(frozen=True, repr=False)
class Fp16Finite(MergeProperty):
    """fp16 inputs give a finite fp16 merge whenever the same merge computed from float32 copies
    of the inputs (same seed) is finite and fits in fp16 with a quarter to spare. Degenerate:
    entries near overflow (2**10..2**15). Realistic: LLM-sized tensors, where reductions (norms,
    L1 sums, dot products) over millions of entries overflow. Otherwise the example passes
    vacuously (counted as a hypothesis event)."""

    name: ClassVar[str] = "fp16_finite"
    summary: ClassVar[str] = "no Inf/NaN from fp16 inputs whose merge fits in fp16"
    size_sensitive: ClassVar[bool] = True

    def requirement(self, operator: MergeOperator) -> str | None:
        return None if "float16" in operator.dtypes else "does not take float16"

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        if regime == "realistic":
            return _inputs(mi.realistic_inputs(operator, dtypes=("float16",)))
        return _inputs(mi.merge_inputs(operator, dtypes=("float16",), exponents=(10, 15),
                                       kinds=("independent", "outlier"), allow_zero=True))

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        import torch

        try:
            reference = call(operator, inputs.map(lambda t: t.float())).double()
        except OperatorRaised:
            _note("float32 reference raised")
            return
        if not _fits(reference, torch.float16):
            _note("float32 reference does not fit in float16")
            return
        got = call(operator, inputs)
        if not bool(torch.isfinite(got).all()):
            raise PropertyViolation(
                f"fp16 output has {_nonfinite_summary(got)}, while the float32 merge is finite "
                f"with max |entry| {float(reference.abs().max()):.4g} (fp16 max 65504)"
            )


@dataclasses.dataclass(frozen=True, repr=False)
class LowPrecisionAgrees(MergeProperty):
    """An fp16 or bf16 merge agrees with the float32 merge of the same (already rounded) inputs,
    up to the dtype's own rounding.

    Catches silent wrong answers, not only non-finite ones. The reference is the float32 merge
    itself, not rounded to the dtype (rounding it moves a task vector near the dtype's resolution
    towards the base and reads that as the merge's error). ``T`` is the rms input task vector
    (model - base; the model itself without a base), ``v`` the float32 merged task vector, ``w``
    the low-precision one. Per entry, the dtype's rounding allows ``factor`` (8) x eps(dtype) x
    (|float32 merge| + |base|) + ``rtol`` (2%) x rms(T). An entry off by more than
    that is *moved*. Four checks, in this order:

    * non-finite output where the float32 merge is finite and fits in the dtype fails;
    * on the entries that are not moved, the component of ``w - v`` along ``v`` (the merge pulled
      towards or away from the base) stays within ``rtol`` of ``|T|`` unless it is within
      ``z_bound`` (6) standard errors of the rounding noise (the rest of ``w - v``, taken per
      entry as proportional to eps x the entry's scale, so that outlier entries round coarser).
      Not checked when ``|v|`` there is below ``resolved`` (2) x the error of rounding the float32
      merge to the dtype: a merged task vector the dtype cannot hold has no direction to compare;
    * the moved entries exchange equal mass: the merged task vector's norm with the moved entries
      as ``w`` has them differs from ``|v|`` by at most ``rtol`` of ``|T|``. A tie-break among equal magnitudes at a top-k threshold (the
      low-precision merge keeps entry j where the float32 one keeps i) passes; dropping entries
      without keeping others of the same size (a collapse to the base, a mask that keeps too
      little) does not;
    * at most ``mismatch`` (1%, and at least 2) of the entries are moved: a top-k threshold or a
      sign decided differently among near-tied entries.

    Not counted: which of several equal magnitudes a top-k keeps, as long as it keeps as much
    (1% of the entries at most); a direction error each entry of which stays within the rounding
    allowance and which sits within ``z_bound`` standard errors of the rounding noise. If the
    float32 merge raises or does not fit in the dtype, the example passes vacuously.
    """

    name: ClassVar[str] = "low_precision_agrees"
    summary: ClassVar[str] = "fp16/bf16 merges agree with the float32 merge up to rounding"
    size_sensitive: ClassVar[bool] = True
    rtol: float = 0.02
    z_bound: float = 6.0
    factor: float = 8.0
    mismatch: float = 0.01
    resolved: float = 2.0

    def requirement(self, operator: MergeOperator) -> str | None:
        low = [d for d in operator.dtypes if d != "float32"]
        return None if low and "float32" in operator.dtypes else "takes no fp16/bf16 or no float32"

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        low = tuple(d for d in operator.dtypes if d != "float32")
        return _inputs(mi.inputs_in(regime, operator, dtypes=low))

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        import torch

        dtype, name = inputs.dtype, _dtype_name(inputs.models[0])
        try:
            reference = call(operator, inputs.map(lambda t: t.float())).double()
        except OperatorRaised:
            _note("float32 reference raised")
            return
        if not _fits(reference, dtype):
            _note(f"float32 reference does not fit in {name}")
            return
        got = call(operator, inputs).to(dtype).double()  # a promoted output is dtype_preserved's finding
        if not bool(torch.isfinite(got).all()):
            raise PropertyViolation(f"{name} merge has {_nonfinite_summary(got)}, while the float32 merge is "
                                    f"finite with max |entry| {float(reference.abs().max()):.4g}")
        anchor = inputs.base.double() if inputs.base is not None else torch.zeros_like(reference)
        task = torch.stack([(m.double() - anchor).reshape(-1) for m in inputs.models])
        t_rms = float(task.pow(2).mean().sqrt())
        allowance = self.factor * torch.finfo(dtype).eps * (reference.abs() + anchor.abs()) + self.rtol * t_rms
        v, w = (reference - anchor).reshape(-1), (got - anchor).reshape(-1)
        moved = (w - v).abs() > allowance.reshape(-1)
        rounding = (reference.to(dtype).double() - reference).reshape(-1)  # what storing the float32 merge costs
        ulp = (torch.finfo(dtype).eps * (reference.abs() + anchor.abs())).reshape(-1)  # rounding noise scales with it
        kept = ~moved
        self._along(v[kept], w[kept], rounding[kept], ulp[kept], t_rms, name)
        self._moved_mass(v, w, moved, t_rms, name)
        self._moved_entries(got, reference, moved, t_rms, name)

    def _moved_entries(self, got: torch.Tensor, reference: torch.Tensor, moved: torch.Tensor, t_rms: float,
                       name: str) -> None:
        n, count = moved.numel(), int(moved.sum())
        allowed = max(2, int(self.mismatch * n))
        if count > allowed:
            index = tuple(int(i) for i in moved.reshape(got.shape).nonzero()[0])
            raise PropertyViolation(
                f"{count} of {n} entries of the {name} merge differ from the float32 merge by more than "
                f"{self.factor:g} x eps x (|merge| + |base|) + {self.rtol:.0%} x rms task vector {t_rms:.3g} "
                f"(at most {allowed} may); first at {index}: {float(got[index])!r} vs {float(reference[index])!r}"
            )

    def _moved_mass(self, v: torch.Tensor, w: torch.Tensor, moved: torch.Tensor, t_rms: float, name: str) -> None:
        """The norm of the merged task vector with the moved entries as the low-precision merge has
        them, against the float32 one: a tie-break exchanges equal squares and changes nothing."""
        scale, length = t_rms * math.sqrt(v.numel()), float(v.norm())
        exchanged = float(w[moved].pow(2).sum()) - float(v[moved].pow(2).sum())
        change = math.sqrt(max(length**2 + exchanged, 0.0)) - length
        if abs(change) > self.rtol * scale:
            raise PropertyViolation(
                f"the {int(moved.sum())} entries the {name} merge moves past the rounding allowance hold a task "
                f"vector of norm {float(w[moved].norm()):.4g} where the float32 merge's hold "
                f"{float(v[moved].norm()):.4g}: the merged task vector's norm {change:+.4g} "
                f"({abs(change) / scale:.1%} of the input task vectors' norm {scale:.4g}; bound {self.rtol:.0%}: "
                "a tie-break among equal magnitudes exchanges equal squares)"
            )

    def _along(self, v: torch.Tensor, w: torch.Tensor, rounding: torch.Tensor, ulp: torch.Tensor, t_rms: float,
               name: str) -> None:
        """The systematic error along ``v``, against rounding noise whose size per entry follows
        ``ulp`` (eps x the entry's scale: outlier entries round coarser), fitted on the rest of the
        error: standard error ``c sqrt(sum v_i^2 ulp_i^2) / |v|`` with ``c^2 = |rest|^2 / |ulp|^2``."""
        n, length = v.numel(), float(v.norm())
        if n == 0 or length <= self.resolved * float(rounding.norm()):
            _note(f"merged task vector below {name}'s resolution")  # its direction is rounding noise
            return
        e = w - v
        along = float(e @ v) / length
        rest, spread = float((e - along * v / length).norm()), float(ulp.norm())
        noise = rest / spread * float((v * ulp).norm()) / length if spread > 0 else 0.0
        z = abs(along) / noise if noise > 0 else math.inf
        scale = t_rms * math.sqrt(n)
        if abs(along) > self.rtol * scale and z > self.z_bound:
            raise PropertyViolation(
                f"the {name} merged task vector is {1 + along / length:.4g} x the float32 one along its "
                f"direction (error {along:+.4g}, {abs(along) / scale:.1%} of the input task vectors' norm "
                f"{scale:.4g}, z {_z_text(z)}; {n} entries within the rounding allowance); "
                f"bound {self.rtol:.0%} at z > {self.z_bound:g}"
            )


@dataclasses.dataclass(frozen=True, repr=False)
class CpuCudaAgree(MergeProperty):
    """The merge on a CUDA device matches the CPU merge within 32 x eps(dtype) x input scale."""

    name: ClassVar[str] = "cpu_cuda_agree"
    summary: ClassVar[str] = "CPU and CUDA agree within tolerance"
    factor: float = 32.0

    def requirement(self, operator: MergeOperator) -> str | None:
        if operator.stochastic:
            return "draws random masks: CPU and CUDA RNG streams differ"
        return None

    def unavailable(self) -> str | None:
        import torch

        return None if torch.cuda.is_available() else "needs a CUDA device"

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        return _inputs(mi.inputs_in(regime, operator))

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        merged = both_paths(lambda: call(operator, inputs), lambda: call(operator, inputs, device="cuda").cpu())
        if merged is None:
            return
        want, got = merged
        assert_close(got, want, dtype=inputs.dtype, scale=inputs.scale(), factor=self.factor,
                     what="CUDA merge differs from CPU merge", equal_nan=True)


@dataclasses.dataclass(frozen=True, repr=False)
class StateDictConsistent(MergeProperty):
    """Merging whole state dicts (batched, buffers copied) equals merging tensor by tensor.
    Degenerate: blocks of hidden size 2-4; realistic: 32-64 (weights ~N(0, 0.02) in both)."""

    name: ClassVar[str] = "state_dict_consistent"
    summary: ClassVar[str] = "merging a state dict equals merging each tensor"
    factor: float = 4.0

    def requirement(self, operator: MergeOperator) -> str | None:
        return None if operator.merge_state_dicts else "has no state-dict entry point"

    def examples(self, operator: MergeOperator, regime: Regime) -> st.SearchStrategy[dict[str, Any]]:
        counts, dtypes = operator.model_counts(), st.sampled_from(operator.dtypes)
        hidden = st.sampled_from([32, 64]) if regime == "realistic" else st.integers(2, 4)

        @st.composite
        def draw_example(draw: st.DrawFn) -> dict[str, Any]:
            n = draw(counts)
            with_base = operator.base == "required" or (operator.base == "optional" and draw(st.booleans()))
            return {"inputs": BlockInputs(
                seeds=tuple(draw(mi._SEEDS) for _ in range(n + with_base)),
                hidden=draw(hidden),
                dtype=draw(dtypes),
                with_base=with_base,
                params=mi.draw_parameters(draw, operator, n, min_total_weight=0.1),
                seed=draw(mi._SEEDS) if operator.stochastic else 0,
            )}

        return draw_example()

    def check(self, operator: MergeOperator, inputs: BlockInputs) -> None:
        import torch

        dicts = inputs.state_dicts()
        base, models = (dicts[0], dicts[1:]) if inputs.with_base else (None, dicts)
        kwargs = dict(inputs.params, **({"base": base} if operator.base != "none" else {}))
        try:
            with seeded(inputs.seed if operator.stochastic else None), single_threaded():
                merged = operator.merge_state_dicts(models, **kwargs)
        except Exception as error:
            if self._refused_alike(operator, inputs, models, base, error):
                return
            raise OperatorRaised(f"merge_state_dicts raised {type(error).__name__}: {error}") from error
        if list(merged) != list(models[0]):
            raise PropertyViolation(f"merged keys {list(merged)} differ from the input keys {list(models[0])}")
        with seeded(inputs.seed if operator.stochastic else None):
            for key, tensor in merged.items():
                if not models[0][key].is_floating_point():
                    if tensor.dtype != models[0][key].dtype or not torch.equal(tensor, models[0][key]):
                        raise PropertyViolation(f"buffer {key} was not copied unchanged")
                    continue
                one = MergeInputs(tuple(m[key] for m in models), None if base is None else base[key],
                                  inputs.params, inputs.seed)
                want = call(operator, one, reseed=False)
                if tensor.dtype != want.dtype:
                    raise PropertyViolation(f"{key}: state-dict merge gave {tensor.dtype}, tensor merge {want.dtype}")
                assert_close(tensor, want, dtype=one.dtype, scale=one.scale(), factor=self.factor,
                             what=f"{key}: state-dict merge differs from tensor merge", equal_nan=True)

    @staticmethod
    def _refused_alike(operator: MergeOperator, inputs: BlockInputs, models: list[dict[str, torch.Tensor]],
                       base: dict[str, torch.Tensor] | None, error: Exception) -> bool:
        """Whether merging tensor by tensor raises the same exception type: a consistent refusal."""
        try:
            with seeded(inputs.seed if operator.stochastic else None):
                for key in models[0]:
                    if models[0][key].is_floating_point():
                        operator(MergeInputs(tuple(m[key] for m in models), None if base is None else base[key],
                                             inputs.params, inputs.seed), reseed=False)
        except Exception as again:
            if type(again) is type(error):
                _note(f"both paths raised {type(error).__name__}")
                return True
        return False


#: Every property, in table order.
CATALOGUE: tuple[MergeProperty, ...] = (
    Idempotent(),
    ZeroTaskVectors(),
    Endpoints(),
    OrderInvariant(),
    WeightNormalised(),
    ScaleEquivariant(),
    FiniteOnDegenerate(),
    DtypePreserved(),
    DensityKept(),
    RescaleUnbiased(),
    Fp16Finite(),
    LowPrecisionAgrees(),
    CpuCudaAgree(),
    StateDictConsistent(),
)
PROPERTIES: dict[str, MergeProperty] = {p.name: p for p in CATALOGUE}


def get_property(name: str | MergeProperty) -> MergeProperty:
    """The catalogue property called ``name`` (a ``MergeProperty`` is returned as is)."""
    if isinstance(name, MergeProperty):
        return name
    try:
        return PROPERTIES[name]
    except KeyError:
        raise MergeQAUsageError(f"unknown merge property {name!r}." + did_you_mean(name, PROPERTIES)) from None
