"""The catalogue of merge-operator properties, and ``check_merge_operator`` for method authors.

A property draws inputs for an operator (with ``mergeqa.operators.strategies``), calls it, and when
the promise does not hold fails with ``PropertyViolation``, carrying hypothesis's shrunk
counterexample as Python that replays it. Not for: mergekit specifics (``mergekit_adapter``) or
the quality of whole merged models (the plugin's checks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from hypothesis import Phase, currently_in_test_context, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mergeqa.errors import MergeQAUsageError, did_you_mean
from mergeqa.operators import strategies as mst

if TYPE_CHECKING:
    import torch

BasePolicy = Literal["required", "optional", "none"]

#: Seconds of shrinking a property gets after its first failure (see ``MergeProperty.run``).
SHRINK_SECONDS = 10.0


class PropertyViolation(AssertionError):
    """A merge operator broke a promise; the message holds the figures and the counterexample.

    ``example`` is the (shrunk) keyword arguments of ``MergeProperty.check`` that fail, so
    ``get_property(name).check(operator, **violation.example)`` replays it.
    """

    def __init__(self, message: str, *, example: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.detail = message
        self.example = dict(example) if example is not None else None


class OperatorRaised(PropertyViolation):
    """The operator raised on inputs its contract accepts; ``__cause__`` is its exception."""


# ----------------------------------------------------------------------------- describing operators


@dataclasses.dataclass(frozen=True)
class PerModel:
    """Marks a parameter drawn once per model (and passed as a list in model order)."""

    strategy: Any


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Parameters under which the merge must return one input unchanged.

    ``returns`` is ``"base"`` or the index of a model; ``params`` is a mapping, or a function of
    the number of models giving one (see ``one_hot``).
    """

    returns: int | Literal["base"]
    params: Mapping[str, Any] | Callable[[int], Mapping[str, Any]]

    @classmethod
    def one_hot(cls, weights: str, index: int) -> Endpoint:
        """The weight of model ``index`` is 1 and every other weight 0: the merge returns that model."""
        return cls(index, lambda n: {weights: [float(i == index) for i in range(n)]})

    def params_for(self, n_models: int) -> dict[str, Any]:
        return dict(self.params(n_models) if callable(self.params) else self.params)

    @property
    def min_models(self) -> int:
        return 1 if self.returns == "base" else self.returns + 1


@dataclasses.dataclass(frozen=True)
class MergeOperator:
    """What the catalogue needs to know about a merge function.

    ``fn(models, base=None, **params) -> Tensor`` merges a list of same-shaped tensors (``base``
    is passed only when ``base`` is not ``"none"``). ``parameters`` maps names to a strategy or a
    constant (shared by all models) or ``PerModel(strategy)``; the ``weights`` parameter, if
    named, is drawn by the properties themselves within ``weight_range``. ``stochastic``
    operators draw from torch's global RNG, so every call is seeded (and the RNG restored
    afterwards). ``not_applicable`` maps property names to why the method does not promise them.
    """

    fn: Callable[..., torch.Tensor]
    name: str = ""
    base: BasePolicy = "none"
    min_models: int = 1
    max_models: int | None = None
    parameters: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weights: str | None = None
    weight_range: tuple[float, float] = (0.0, 1.0)
    normalizes_weights: bool = False
    density: str | None = None
    endpoints: tuple[Endpoint, ...] = ()
    stochastic: bool = False
    dtypes: tuple[str, ...] = mst.DTYPE_NAMES
    merge_state_dicts: Callable[..., Mapping[str, torch.Tensor]] | None = None
    not_applicable: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise MergeQAUsageError(f"fn={self.fn!r} is not callable; pass the merge function")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", type(self.fn).__name__))
        object.__setattr__(self, "endpoints", tuple(self.endpoints))
        object.__setattr__(self, "dtypes", tuple(self.dtypes))
        for dtype in self.dtypes:
            mst.resolve_dtype(dtype)
        self._validate()

    def _validate(self) -> None:
        where = f"merge operator {self.name!r}"
        if self.base not in ("required", "optional", "none"):
            raise MergeQAUsageError(f"{where}: base={self.base!r}; use 'required', 'optional' or 'none'")
        if self.min_models < 1:
            raise MergeQAUsageError(f"{where}: min_models={self.min_models} must be at least 1")
        if self.max_models is not None and self.max_models < self.min_models:
            raise MergeQAUsageError(
                f"{where}: min_models={self.min_models} is larger than max_models={self.max_models}"
            )
        low, high = self.weight_range
        if low > high:
            raise MergeQAUsageError(f"{where}: weight_range={self.weight_range} is reversed")
        if self.density is not None and self.density not in self.parameters:
            raise MergeQAUsageError(
                f"{where}: density={self.density!r} is not in parameters; add "
                f"parameters={{{self.density!r}: PerModel(densities())}}"
            )
        if self.weights is not None and self.weights in self.parameters:
            raise MergeQAUsageError(
                f"{where}: {self.weights!r} is both weights= and a parameter; weights are drawn by "
                "the properties, so leave it out of parameters"
            )
        for endpoint in self.endpoints:
            if endpoint.returns == "base" and self.base == "none":
                raise MergeQAUsageError(f"{where}: an endpoint returns the base, but base='none'")
            if self.max_models is not None and endpoint.min_models > self.max_models:
                raise MergeQAUsageError(f"{where}: endpoint {endpoint.returns} needs more models")
        unknown = set(self.not_applicable) - set(PROPERTIES)
        if unknown:
            name = sorted(unknown)[0]
            raise MergeQAUsageError(
                f"{where}: not_applicable names unknown property {name!r}."
                + did_you_mean(name, PROPERTIES)
            )

    @property
    def per_model(self) -> tuple[str, ...]:
        """Names of the parameters passed as one value per model (the weights included)."""
        names = [name for name, value in self.parameters.items() if isinstance(value, PerModel)]
        return tuple(names + ([self.weights] if self.weights else []))

    def model_counts(self, at_least: int = 1) -> st.SearchStrategy[int]:
        """How many models to merge: from the minimum up to two more (fewer if max_models says so)."""
        low = max(self.min_models, at_least)
        high = low + 2 if self.max_models is None else min(self.max_models, low + 2)
        return st.integers(low, max(low, high))

    def __call__(
        self, inputs: MergeInputs, *, device: str | None = None, reseed: bool = True
    ) -> torch.Tensor:
        """Merge ``inputs`` (moved to ``device`` if given), seeding torch's RNG if stochastic."""
        moved = inputs if device is None else inputs.map(lambda t: t.to(device))
        kwargs = dict(moved.params)
        if self.base != "none":
            kwargs["base"] = moved.base
        with seeded(moved.seed if self.stochastic and reseed else None), single_threaded():
            return self.fn(list(moved.models), **kwargs)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch's CPU ops on one thread for the block, then restore the thread count.

    The kit's tensors have tens of entries: intra-op threads only add synchronisation, which on a
    loaded 2-core machine costs ~16 ms per reduction against ~2 us single-threaded.
    """
    from mergeqa.threads import torch_threads

    with torch_threads(1):
        yield


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's global RNG for the block and restore it afterwards (no-op for ``None``)."""
    if seed is None:
        yield
        return
    import torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------- one merge call


def _literal(value: Any) -> str:
    """Python source for floats (inf/nan included), lists, tuples, dicts and strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float('{value}')"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_literal(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


@dataclasses.dataclass(frozen=True)
class MergeInputs:
    """One call of a merge operator: models, an optional base, parameters and an RNG seed.

    Its repr is ``MergeInputs.of(...)`` with the exact values, so a counterexample printed by a
    failing property can be pasted into a test.
    """

    models: tuple[torch.Tensor, ...]
    base: torch.Tensor | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0

    @classmethod
    def of(
        cls,
        models: Sequence[Any],
        base: Any = None,
        *,
        dtype: str = "float32",
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> MergeInputs:
        """Build from nested lists of numbers (what ``repr`` prints)."""
        import torch

        torch_dtype = mst.resolve_dtype(dtype)

        def build(values: Any) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64).to(torch_dtype)

        return cls(
            models=tuple(build(m) for m in models),
            base=None if base is None else build(base),
            params=dict(params or {}),
            seed=seed,
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.models[0].dtype

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.models + (() if self.base is None else (self.base,))

    def scale(self) -> float:
        """The largest absolute entry over all inputs: what tolerances are relative to."""
        return max(float(t.double().abs().max()) if t.numel() else 0.0 for t in self.tensors)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> MergeInputs:
        """The same call with ``fn`` applied to every tensor (cast, scale, move)."""
        base = None if self.base is None else fn(self.base)
        return dataclasses.replace(self, models=tuple(fn(m) for m in self.models), base=base)

    def with_params(self, **params: Any) -> MergeInputs:
        return dataclasses.replace(self, params={**self.params, **params})

    def __repr__(self) -> str:
        parts = [f"models={_literal([m.tolist() for m in self.models])}"]
        if self.base is not None:
            parts.append(f"base={_literal(self.base.tolist())}")
        parts.append(f"dtype={_dtype_name(self.models[0])!r}")
        if self.params:
            parts.append(f"params={_literal(dict(self.params))}")
        if self.seed:
            parts.append(f"seed={self.seed}")
        return f"MergeInputs.of({', '.join(parts)})"


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


# ----------------------------------------------------------------------------- drawing inputs


_SEEDS = st.integers(0, 2**16)


def _draw_parameters(
    draw: st.DrawFn, operator: MergeOperator, n: int, min_total_weight: float | None
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in operator.parameters.items():
        if isinstance(value, PerModel):
            strategy = value.strategy
            params[name] = [draw(strategy) if isinstance(strategy, st.SearchStrategy) else strategy
                            for _ in range(n)]
        else:
            params[name] = draw(value) if isinstance(value, st.SearchStrategy) else value
    if operator.weights is not None:
        low, high = operator.weight_range
        floor = None if min_total_weight is None else min(max(min_total_weight, low), high)
        params[operator.weights] = draw(mst.merge_weights(n, min_weight=low, max_weight=high, min_total=floor))
    return params


def merge_inputs(
    operator: MergeOperator,
    *,
    models: st.SearchStrategy[int] | None = None,
    with_base: bool | None = None,
    dtypes: Sequence[str] | None = None,
    exponents: tuple[int, int] = (-6, 6),
    kinds: Sequence[str] = ("independent",),
    min_side: int = 2,
    max_side: int = 4,
    min_total_weight: float | None = 0.1,
    allow_zero: bool = False,
) -> st.SearchStrategy[MergeInputs]:
    """Return a strategy for one call of ``operator``, within its contract.

    Draws the number of models (``operator.model_counts()`` unless ``models``), whether to pass a
    base (always when required, never when ``'none'``; ``with_base`` overrides for optional bases),
    a dtype from ``dtypes`` (default: the operator's), a magnitude ``2**k`` with ``k`` in
    ``exponents`` (clipped to the dtype), an aligned tensor set of ``kinds``, the operator's
    parameters and, for stochastic operators, a seed. Entries are non-zero unless ``allow_zero``:
    zero vectors are degenerate inputs with a property of their own. Weights keep a total of at
    least ``min_total_weight`` (``None`` allows all zeros). Costs one float draw per tensor entry
    plus a few per parameter; the defaults (at most 16 entries, at most 5 tensors) keep a draw
    near a millisecond.
    """
    if exponents[0] > exponents[1]:
        raise mst.InvalidStrategyArgument(f"exponents={exponents} is reversed")
    mst.check_kinds(kinds)
    counts = models if models is not None else operator.model_counts()
    dtype_strategy = mst.float_dtypes(dtypes or operator.dtypes)
    shape_strategy = mst.shapes(min_side=min_side, max_side=max_side)
    kind_strategy = st.sampled_from(list(kinds))

    @st.composite
    def draw_inputs(draw: st.DrawFn) -> MergeInputs:
        n = draw(counts)
        take_base = operator.base == "required" or (
            operator.base == "optional" and (draw(mst._BOOLEANS) if with_base is None else with_base)
        )
        dtype = draw(dtype_strategy)
        lowest, highest = mst.exponent_limits(dtype)
        low = min(max(exponents[0], lowest), highest - 1)
        high = max(min(exponents[1], highest - 1), low)
        magnitude = mst._draw_magnitude(draw, low, high)
        shape, kind = draw(shape_strategy), draw(kind_strategy)
        tensors = mst._draw_tensor_set(draw, n + take_base, dtype, shape, magnitude, kind, allow_zero)
        params = _draw_parameters(draw, operator, n, min_total_weight)
        seed = draw(_SEEDS) if operator.stochastic else 0
        base = tensors[0] if take_base else None
        return MergeInputs(tuple(tensors[take_base:]), base, params, seed)

    return draw_inputs()


# ----------------------------------------------------------------------------- the properties


class MergeProperty(ABC):
    """One promise a merge method can make, checkable on any ``MergeOperator``.

    ``examples(op)`` draws the keyword arguments of ``check(op, **example)``, which raises
    ``PropertyViolation`` when the promise is broken; ``run(op)`` searches with hypothesis and
    raises the shrunk violation. ``requirement(op)`` says why a property does not apply.
    """

    name: ClassVar[str]
    summary: ClassVar[str]

    def requirement(self, operator: MergeOperator) -> str | None:
        """Why the property does not apply to ``operator`` (``None``: it applies)."""
        return None

    def unavailable(self) -> str | None:
        """Why the property cannot run here, e.g. no CUDA device (``None``: it can)."""
        return None

    @abstractmethod
    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]: ...

    @abstractmethod
    def check(self, operator: MergeOperator, **example: Any) -> None: ...

    def not_applicable(self, operator: MergeOperator) -> str | None:
        """The operator's own reason, then the structural one."""
        return operator.not_applicable.get(self.name) or self.requirement(operator)

    def run(
        self,
        operator: MergeOperator,
        settings: hypothesis_settings | None = None,
        *,
        shrink_seconds: float = SHRINK_SECONDS,
    ) -> int:
        """Search for a violation; return how many examples passed, or raise the shrunk violation.

        ``settings`` defaults to the current hypothesis profile; deadlines are always off (CPU
        timings of tensor code jitter) and only the first distinct bug is reported. Shrinking
        gets ``shrink_seconds`` from the first failure: after that, candidates not seen before are
        passed without running, so hypothesis settles on the smallest failure found so far (still
        a real, replayed failure, just possibly not the smallest there is).
        """
        passed = 0
        failing: set[str] = set()
        first_failure: list[float] = []

        def property_holds(example: dict[str, Any]) -> None:
            nonlocal passed
            key = repr(example)
            if first_failure and time.perf_counter() - first_failure[0] > shrink_seconds and key not in failing:
                return
            try:
                self.check(operator, **example)
            except PropertyViolation as violation:
                violation.example = example
                failing.add(key)
                first_failure[:] = first_failure or [time.perf_counter()]
                raise
            passed += 1

        base = settings if settings is not None else hypothesis_settings()
        test = given(example=self.examples(operator))(property_holds)
        # The explain phase re-runs the shrunk example dozens of times to annotate it: too slow
        # for tensor code, and the counterexample printed below says what matters.
        phases = [phase for phase in base.phases if phase != Phase.explain]
        test = hypothesis_settings(base, deadline=None, report_multiple_bugs=False, phases=phases)(test)
        # Distinct database keys and derandomized seeds per (operator, property).
        test.hypothesis.inner_test._hypothesis_internal_add_digest = (
            f"{operator.name}:{self.name}".encode()
        )
        try:
            test()
        except PropertyViolation as violation:
            raise PropertyViolation(
                f"{operator.name} violates {self.name} ({self.summary}): {violation.detail}\n"
                f"Shrunk counterexample; replay with "
                f"get_property({self.name!r}).check(operator, **example) where example is\n"
                f"    {_literal_example(violation.example)}",
                example=violation.example,
            ) from violation
        return passed

    def __repr__(self) -> str:
        return f"<property {self.name}: {self.summary}>"


def _literal_example(example: Mapping[str, Any] | None) -> str:
    if example is None:
        return "{}"
    return "dict(" + ", ".join(f"{key}={value!r}" if isinstance(value, MergeInputs) else
                                f"{key}={_literal(value)}" for key, value in example.items()) + ")"


@dataclasses.dataclass(frozen=True, repr=False)
class Idempotent(MergeProperty):
    """merge(A, A, ..., A) == A, without a base (see ``ZeroTaskVectors`` for methods that take one)."""

    name: ClassVar[str] = "idempotent"
    summary: ClassVar[str] = "merging copies of one tensor returns it"
    factor: float = 8.0

    def requirement(self, operator: MergeOperator) -> str | None:
        if operator.base == "required":
            return "needs a base: copies of the base are the zero_task_vectors check"
        return None

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        def copies(inputs: MergeInputs) -> dict[str, Any]:
            return {"inputs": dataclasses.replace(inputs, models=(inputs.models[0],) * len(inputs.models))}

        return merge_inputs(operator, with_base=False).map(copies)

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        got = call(operator, inputs)
        assert_close(got, inputs.models[0], dtype=inputs.dtype, scale=inputs.scale(),
                     factor=self.factor, what="merge(A, ..., A) != A")


@dataclasses.dataclass(frozen=True, repr=False)
class ZeroTaskVectors(MergeProperty):
    """With every model equal to the base (all task vectors zero) the merge returns the base."""

    name: ClassVar[str] = "zero_task_vectors"
    summary: ClassVar[str] = "models equal to the base give the base"
    factor: float = 8.0

    def requirement(self, operator: MergeOperator) -> str | None:
        return "takes no base" if operator.base == "none" else None

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        def copies(inputs: MergeInputs) -> dict[str, Any]:
            return {"inputs": dataclasses.replace(inputs, models=(inputs.base,) * len(inputs.models))}

        return merge_inputs(operator, with_base=True).map(copies)

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

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        def at(endpoint: Endpoint) -> st.SearchStrategy[dict[str, Any]]:
            inputs = merge_inputs(
                operator,
                models=operator.model_counts(at_least=endpoint.min_models),
                with_base=True if endpoint.returns == "base" else None,
            )
            return inputs.map(lambda i: {
                "inputs": i.with_params(**endpoint.params_for(len(i.models))),
                "returns": endpoint.returns,
            })

        return st.one_of([at(endpoint) for endpoint in operator.endpoints])

    def check(self, operator: MergeOperator, inputs: MergeInputs, returns: int | str) -> None:
        want = inputs.base if returns == "base" else inputs.models[returns]
        got = call(operator, inputs)
        assert_close(got, want, dtype=inputs.dtype, scale=inputs.scale(), factor=self.factor,
                     what=f"endpoint {inputs.params} does not return input {returns!r}")


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

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        inputs = merge_inputs(operator, models=operator.model_counts(at_least=2))

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

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries({
            "inputs": merge_inputs(operator),
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

    Drawn in fp32 with entries of 2**-10..2**6 and c in 2**-12..2**12, so it also reaches the
    small norms (~1e-7) where absolute epsilons inside an operator start to matter. ``rtol`` of
    the input scale (0.1%) tolerates epsilons that barely move the result and catches ones that
    change it (a norm clamped, a tensor taken for zero).
    """

    name: ClassVar[str] = "scale_equivariant"
    summary: ClassVar[str] = "scaling every input scales the merge"
    rtol: float = 1e-3

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        exponent = st.integers(1, 12).flatmap(lambda k: st.sampled_from([k, -k]))
        return st.fixed_dictionaries({
            "inputs": merge_inputs(operator, dtypes=("float32",)),
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
    """Zero, colinear/antipodal and outlier inputs, rows of one element and all-zero weights give
    a finite output. Raising ``ValueError`` (an explicit refusal) also passes: the promise is
    "no silent NaN/Inf"."""

    name: ClassVar[str] = "finite_on_degenerate"
    summary: ClassVar[str] = "degenerate inputs give finite output or a ValueError"

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        inputs = merge_inputs(operator, kinds=("zero", "colinear", "outlier"), min_side=1,
                              exponents=(-20, 6), min_total_weight=None, allow_zero=True)
        return st.fixed_dictionaries({"inputs": inputs})

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

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries({"inputs": merge_inputs(operator)})

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        got = call(operator, inputs)
        if got.dtype != inputs.dtype:
            raise PropertyViolation(f"{_dtype_name(inputs.models[0])} inputs gave a {_dtype_name(got)} output")


@functools.lru_cache(maxsize=None)
def _permutations(n: int) -> st.SearchStrategy[list[int]]:
    return st.permutations(range(n))


def _sparsification_inputs(
    operator: MergeOperator, n_models: int, kinds: Sequence[str]
) -> st.SearchStrategy[MergeInputs]:
    """fp32 base in [-1, 1] plus task vectors with no zero entry, weights 1: every entry the merge
    keeps shows up as a non-zero entry of merge - base."""

    import torch

    shape_strategy, kind_strategy = mst.shapes(min_side=2, max_side=4), st.sampled_from(list(kinds))

    @st.composite
    def draw_inputs(draw: st.DrawFn) -> MergeInputs:
        shape, kind = draw(shape_strategy), draw(kind_strategy)
        base = mst._draw_tensor(draw, torch.float32, shape, 1.0, True)
        deltas = mst._draw_tensor_set(draw, n_models, torch.float32, shape, 1.0, kind, False)
        params = _draw_parameters(draw, operator, n_models, min_total_weight=None)
        if operator.weights is not None:
            params[operator.weights] = [1.0] * n_models
        seed = draw(_SEEDS) if operator.stochastic else 0
        return MergeInputs(tuple(base + d for d in deltas), base, params, seed)

    return draw_inputs()


def _density_models(operator: MergeOperator) -> int:
    # A per-model density is one model's kept fraction; a shared one (e.g. SCE's top-k over the
    # variance across models) needs at least two models to mean anything.
    return max(operator.min_models, 1 if operator.density in operator.per_model else 2)


@dataclasses.dataclass(frozen=True, repr=False)
class DensityKept(MergeProperty):
    """With density d the merged task vector keeps about d of its entries.

    Deterministic pruning: within one entry of ``d * n``. Stochastic pruning: within
    ``z * sqrt(n d (1 - d)) + 1`` (binomial spread, z = 4.5).
    """

    name: ClassVar[str] = "density_kept"
    summary: ClassVar[str] = "the kept fraction of the task vector is close to the density"
    z: float = 4.5

    def requirement(self, operator: MergeOperator) -> str | None:
        return None if operator.density else "has no density parameter"

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        inputs = _sparsification_inputs(operator, _density_models(operator), ("independent",))
        return st.fixed_dictionaries({"inputs": inputs})

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        import torch

        density = inputs.params[operator.density]
        density = density[0] if isinstance(density, list) else density
        merged = call(operator, inputs).double() - inputs.base.double()
        n = merged.numel()
        kept = int(torch.count_nonzero(merged))
        allowed = 1.0 + (self.z * math.sqrt(n * density * (1 - density)) if operator.stochastic else 0.0)
        if abs(kept - density * n) > allowed:
            raise PropertyViolation(
                f"kept {kept} of {n} entries ({kept / n:.3f}) at density {density:.3g}; "
                f"expected {density * n:.1f} +- {allowed:.1f}"
            )


@dataclasses.dataclass(frozen=True, repr=False)
class RescaleUnbiased(MergeProperty):
    """Random pruning with rescaling keeps the task vector in expectation (DARE's promise).

    Seeded statistical test: the merge is repeated with seeds ``seed .. seed + draws - 1`` and
    every entry of the mean merged task vector must lie within ``z`` standard errors (plus a
    1e-6 relative slack) of the task vector. z = 5 over at most 16 entries keeps the false-alarm
    rate per example below 1e-5. Costs ``draws`` merges per example.
    """

    name: ClassVar[str] = "rescale_unbiased"
    summary: ClassVar[str] = "random pruning with rescaling is unbiased in expectation"
    draws: int = 200
    z: float = 5.0

    def requirement(self, operator: MergeOperator) -> str | None:
        if operator.density is None:
            return "has no density parameter"
        if not operator.stochastic:
            return "prunes deterministically: there is no expectation to preserve"
        return None

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        def below_one(inputs: MergeInputs) -> dict[str, Any]:
            density = inputs.params[operator.density]
            cap = (lambda d: min(d, 0.9))
            value = [cap(d) for d in density] if isinstance(density, list) else cap(density)
            return {"inputs": inputs.with_params(**{operator.density: value})}

        inputs = _sparsification_inputs(operator, _density_models(operator), ("independent", "outlier"))
        return inputs.map(below_one)

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        import torch

        base = inputs.base.double()
        task_vector = sum(m.double() - base for m in inputs.models) / len(inputs.models)
        samples = torch.stack([
            call(operator, dataclasses.replace(inputs, seed=inputs.seed + i)).double() - base
            for i in range(self.draws)
        ])
        mean, error = samples.mean(0), samples.std(0) / math.sqrt(self.draws)
        bad = (mean - task_vector).abs() > self.z * error + 1e-6 * task_vector.abs()
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            sigmas = float((mean - task_vector)[index].abs() / error[index]) if error[index] > 0 else math.inf
            raise PropertyViolation(
                f"mean merged task vector over {self.draws} seeded draws is biased: at {index} "
                f"{float(mean[index]):.4g} vs task vector {float(task_vector[index]):.4g} "
                f"({sigmas:.1f} standard errors; ratio {float(mean[index] / task_vector[index]):.3f})"
            )


@dataclasses.dataclass(frozen=True, repr=False)
class Fp16Finite(MergeProperty):
    """fp16 inputs up to near overflow (2**10..2**15) give a finite fp16 merge whenever the same
    merge computed from float32 copies of the inputs (same seed) is finite and fits in fp16 with
    a quarter to spare. Otherwise the example passes vacuously (counted as a hypothesis event)."""

    name: ClassVar[str] = "fp16_finite"
    summary: ClassVar[str] = "no Inf/NaN from fp16 inputs whose merge fits in fp16"

    def requirement(self, operator: MergeOperator) -> str | None:
        return None if "float16" in operator.dtypes else "does not take float16"

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        inputs = merge_inputs(operator, dtypes=("float16",), exponents=(10, 15),
                              kinds=("independent", "outlier"), allow_zero=True)
        return st.fixed_dictionaries({"inputs": inputs})

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        import torch

        try:
            reference = call(operator, inputs.map(lambda t: t.float())).double()
        except OperatorRaised:
            _note("float32 reference raised")
            return
        limit = 0.75 * torch.finfo(torch.float16).max
        if not bool(torch.isfinite(reference).all()) or float(reference.abs().max()) > limit:
            _note("float32 reference does not fit in float16")
            return
        got = call(operator, inputs)
        if not bool(torch.isfinite(got).all()):
            finite_max = float(reference.abs().max())
            raise PropertyViolation(
                f"fp16 output has {_nonfinite_summary(got)}, while the float32 merge is finite "
                f"with max |entry| {finite_max:.4g} (fp16 max 65504)"
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

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries({"inputs": merge_inputs(operator)})

    def check(self, operator: MergeOperator, inputs: MergeInputs) -> None:
        merged = both_paths(lambda: call(operator, inputs), lambda: call(operator, inputs, device="cuda").cpu())
        if merged is None:
            return
        want, got = merged
        assert_close(got, want, dtype=inputs.dtype, scale=inputs.scale(), factor=self.factor,
                     what="CUDA merge differs from CPU merge", equal_nan=True)


@dataclasses.dataclass(frozen=True)
class BlockInputs:
    """Models (and an optional base) shaped like a transformer block, rebuilt from seeds."""

    seeds: tuple[int, ...]
    hidden: int = 4
    dtype: str = "float32"
    with_base: bool = False
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        return [mst.transformer_block(s, hidden=self.hidden, dtype=self.dtype) for s in self.seeds]

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={_literal(getattr(self, f.name))}" for f in dataclasses.fields(self))
        return f"BlockInputs({fields})"


@dataclasses.dataclass(frozen=True, repr=False)
class StateDictConsistent(MergeProperty):
    """Merging whole state dicts (batched, buffers copied) equals merging tensor by tensor."""

    name: ClassVar[str] = "state_dict_consistent"
    summary: ClassVar[str] = "merging a state dict equals merging each tensor"
    factor: float = 4.0

    def requirement(self, operator: MergeOperator) -> str | None:
        return None if operator.merge_state_dicts else "has no state-dict entry point"

    def examples(self, operator: MergeOperator) -> st.SearchStrategy[dict[str, Any]]:
        counts, hidden, dtypes = operator.model_counts(), st.integers(2, 4), st.sampled_from(operator.dtypes)

        @st.composite
        def draw_example(draw: st.DrawFn) -> dict[str, Any]:
            n = draw(counts)
            with_base = operator.base == "required" or (operator.base == "optional" and draw(mst._BOOLEANS))
            return {"inputs": BlockInputs(
                seeds=tuple(draw(_SEEDS) for _ in range(n + with_base)),
                hidden=draw(hidden),
                dtype=draw(dtypes),
                with_base=with_base,
                params=_draw_parameters(draw, operator, n, min_total_weight=0.1),
                seed=draw(_SEEDS) if operator.stochastic else 0,
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


# ----------------------------------------------------------------------------- the engine


@dataclasses.dataclass
class PropertyResult:
    """The outcome of one property on one operator."""

    property: str
    status: Literal["holds", "violated", "n/a", "skipped"]
    reason: str = ""
    examples: int = 0
    seconds: float = 0.0
    violation: PropertyViolation | None = None


def evaluate(
    operator: MergeOperator,
    properties: Sequence[str | MergeProperty] | None = None,
    *,
    settings: hypothesis_settings | None = None,
    shrink_seconds: float = SHRINK_SECONDS,
) -> list[PropertyResult]:
    """Run ``properties`` (default: the whole catalogue) on ``operator``; never raises violations."""
    results = []
    for prop in [get_property(p) for p in (CATALOGUE if properties is None else properties)]:
        reason = prop.not_applicable(operator)
        if reason:
            results.append(PropertyResult(prop.name, "n/a", reason))
            continue
        missing = prop.unavailable()
        if missing:
            results.append(PropertyResult(prop.name, "skipped", missing))
            continue
        start = time.perf_counter()
        try:
            passed = prop.run(operator, settings, shrink_seconds=shrink_seconds)
        except PropertyViolation as violation:
            results.append(PropertyResult(prop.name, "violated", str(violation),
                                          seconds=time.perf_counter() - start, violation=violation))
        else:
            results.append(PropertyResult(prop.name, "holds", examples=passed,
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
    settings: hypothesis_settings | None = None,
    **description: Any,
) -> list[PropertyResult]:
    """Check a merge function against catalogue properties; raise one violation report if any fail.

    ``fn`` is ``fn(models, base=None, **params) -> Tensor``, a ``MergeOperator``, or a mergekit
    method (e.g. what ``@merge_method`` returns). ``description`` holds ``MergeOperator`` fields
    (``base``, ``weights``, ``parameters``, ``endpoints``, ...). ``properties`` lists the promises
    to hold it to; a listed property the description cannot support is a usage error naming the
    missing field. ``None`` runs every property that applies. Returns the per-property results.
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
    results = evaluate(operator, properties, settings=settings)
    violated = [r for r in results if r.status == "violated"]
    if violated:
        raise PropertyViolation(
            f"{operator.name} violates {len(violated)} of {len(results)} properties:\n\n"
            + "\n\n".join(r.reason for r in violated),
            example=violated[0].violation.example,
        )
    return results
