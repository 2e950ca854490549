"""Drawing one call of a merge operator, in two regimes, with a repr that replays it.

``degenerate``: tiny tensors (at most 16 entries) at magnitudes from 2**-20 to near fp16 overflow,
zero, colinear and outlier sets: where epsilons and overflow live. ``realistic``: tensors of LLM
shape and size (``RealisticInputs``: weights ~N(0, 0.02), task vectors at the measured scales of
SFT (5e-4..2e-3 per entry) and continued pre-training (3e-2); dense, correlated, LoRA-like or
untouched), rebuilt from a seed, so a 60M-entry counterexample prints as one line. The
``mergeqa-large`` profile draws the real shapes of Llama/Mistral/Qwen2 matrices (1e7..6e7 entries):
whole tensors for operators with tensor-wide reductions, row blocks of them for entry- or row-local
ones. Sources of the scales and shapes: docs/operators.md. Not for: the properties (``catalogue``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from hypothesis import strategies as st

from mergeqa.operators import strategies as mst
from mergeqa.operators.description import MergeOperator, PerModel

if TYPE_CHECKING:
    import torch

Regime = Literal["realistic", "degenerate"]
#: The two input regimes every property runs in, realistic first (see the module docstring).
REGIMES: tuple[Regime, ...] = ("realistic", "degenerate")

#: How the task vectors of a realistic set relate (see ``RealisticInputs``).
REALISTIC_KINDS = ("dense", "correlated", "lora", "untouched")
#: Task-vector std relative to the weight std 0.02, as measured on released fine-tunes (sources in
#: docs/operators.md): SFT 1e-3, 5e-4 and 2e-3 per entry (0.05, 0.025, 0.1 of the weights) and
#: continued pre-training 3e-2 (1.5x). The first three are the fine-tuning bands.
DELTA_BANDS = (0.05, 0.025, 0.1, 1.5)
#: Weight matrices of Llama-2-7B, Llama-3-8B, Mistral-7B and Qwen2-7B from 1e7 to 6e7 entries
#: (attention 4096x4096 and 3584x3584, MLP 11008x4096 and 14336x4096 both ways): what the
#: ``mergeqa-large`` profile draws. Embeddings (32000x4096, 128256x4096) are larger than its cap
#: and are replayed by bench/operator_findings.py only.
REAL_SHAPES = ((4096, 4096), (3584, 3584), (11008, 4096), (14336, 4096), (4096, 11008), (4096, 14336))
#: Largest realistic tensor (entries) per hypothesis profile; other profiles get the default's.
REALISTIC_MAX_ENTRIES = {"mergeqa-default": 2**14, "mergeqa-thorough": 2**21, "mergeqa-large": 6 * 10**7}
#: From this cap on, realistic shapes are REAL_SHAPES (whole, or row blocks of BLOCK_ENTRIES).
REAL_SHAPES_FROM = 10**7
#: Entries of the row block a local operator gets of a real shape (``MergeOperator.locality``).
BLOCK_ENTRIES = 2**20
_MAX_ENTRIES: contextvars.ContextVar[int | None] = contextvars.ContextVar("max_entries", default=None)
#: Above this many entries a MergeInputs without a recipe prints a summary, not its values.
_PRINTABLE_ENTRIES = 4096
_SEEDS = st.integers(0, 2**16)


@contextlib.contextmanager
def realistic_size(max_entries: int) -> Iterator[None]:
    """Cap realistic tensors at ``max_entries`` entries while the block draws."""
    token = _MAX_ENTRIES.set(max_entries)
    try:
        yield
    finally:
        _MAX_ENTRIES.reset(token)


def realistic_max_entries() -> int:
    """The cap set by ``realistic_size``, else the loaded profile's (``REALISTIC_MAX_ENTRIES``)."""
    from hypothesis import settings

    explicit = _MAX_ENTRIES.get()
    if explicit is not None:
        return explicit
    name = settings.get_current_profile_name()
    return REALISTIC_MAX_ENTRIES.get(name, REALISTIC_MAX_ENTRIES["mergeqa-default"])


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

    Its repr replays it: ``MergeInputs.of(...)`` with the exact values, or, for inputs built by a
    recipe (``source``), the recipe followed by the transformations applied since
    (``RealisticInputs(...).build().copies_of_first()``). ``map`` drops the recipe.
    """

    models: tuple[torch.Tensor, ...]
    base: torch.Tensor | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    source: str | None = dataclasses.field(default=None, compare=False)

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

    def _derived(self, call: str, **changes: Any) -> MergeInputs:
        source = None if self.source is None else f"{self.source}.{call}"
        return dataclasses.replace(self, source=source, **changes)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> MergeInputs:
        """The same call with ``fn`` applied to every tensor (cast, scale, move); drops the recipe."""
        base = None if self.base is None else fn(self.base)
        return dataclasses.replace(self, models=tuple(fn(m) for m in self.models), base=base, source=None)

    def with_params(self, **params: Any) -> MergeInputs:
        return self._derived(f"with_params({', '.join(f'{k}={_literal(v)}' for k, v in params.items())})",
                             params={**self.params, **params})

    def with_seed(self, seed: int) -> MergeInputs:
        return self._derived(f"with_seed({seed})", seed=seed)

    def copies_of_first(self) -> MergeInputs:
        """Every model replaced by the first (what ``idempotent`` merges)."""
        return self._derived("copies_of_first()", models=(self.models[0],) * len(self.models))

    def at_base(self) -> MergeInputs:
        """Every model replaced by the base: all task vectors zero."""
        return self._derived("at_base()", models=(self.base,) * len(self.models))

    def __repr__(self) -> str:
        if self.source is not None:
            return self.source
        if sum(t.numel() for t in self.tensors) > _PRINTABLE_ENTRIES:
            return (f"<MergeInputs of {len(self.models)} {_dtype_name(self.models[0])} tensors of shape "
                    f"{tuple(self.models[0].shape)}, params={_literal(dict(self.params))}, seed={self.seed}: "
                    "too large to print, built without a recipe>")
        parts = [f"models={_literal([m.tolist() for m in self.models])}"]
        if self.base is not None:
            parts.append(f"base={_literal(self.base.tolist())}")
        parts.append(f"dtype={_dtype_name(self.models[0])!r}")
        if self.params:
            parts.append(f"params={_literal(dict(self.params))}")
        if self.seed:
            parts.append(f"seed={self.seed}")
        return f"MergeInputs.of({', '.join(parts)})"


@dataclasses.dataclass(frozen=True)
class RealisticInputs:
    """A realistic merge call, rebuilt exactly from a seed: a recipe, not tensors.

    The base is ~N(0, ``weight``) (what LLM initialisations and checkpoints look like); each model
    is base + a task vector of entry std ``delta``: ``"dense"`` (independent), ``"correlated"``
    (a shared direction plus half as much own noise: fine-tunes of one base on related data,
    cosine ~0.8), ``"lora"`` (rank 8 product, for 2-D shapes) or ``"untouched"`` (zero: frozen
    layers). ``outliers`` entries of the base are 50x larger and the same entries of every task
    vector 20x (outlier features). ``deltas`` gives each model its own task-vector std (fine-tunes
    of unequal strength); ``block_of`` records that ``shape`` is a block of rows of a real matrix
    (entries are i.i.d., so the block is distributed as those rows of the whole matrix). Built in
    float32, then cast to ``dtype``. ``torch_source()`` is the Python that builds it with torch
    alone; ``build()`` runs exactly that.
    """

    shape: tuple[int, ...]
    models: int = 1
    with_base: bool = True
    kind: str = "dense"
    delta: float = 2e-4  # the recipes recorded in findings rely on it; drawn deltas are DELTA_BANDS
    deltas: tuple[float, ...] = ()
    weight: float = 0.02
    outliers: int = 0
    dtype: str = "float32"
    data_seed: int = 0
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    block_of: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.deltas and len(self.deltas) != self.models:
            raise mst.InvalidStrategyArgument(f"deltas={self.deltas} gives {len(self.deltas)} stds for "
                                              f"models={self.models}; give one per model")
        if self.kind not in REALISTIC_KINDS:
            raise mst.InvalidStrategyArgument(f"kind={self.kind!r}; use one of {', '.join(REALISTIC_KINDS)}")
        mst.resolve_dtype(self.dtype)

    @property
    def entries(self) -> int:
        return math.prod(self.shape)

    def torch_source(self) -> str:
        """Python (torch only) that defines ``base`` and ``models`` for this recipe."""
        shape = _literal(tuple(self.shape))
        lines = [f"g = torch.Generator().manual_seed({self.data_seed})",
                 f"base = torch.randn({shape}, generator=g) * {self.weight!r}"]
        if self.outliers:
            lines += [f"hot = torch.randint(0, {self.entries}, ({self.outliers},), generator=g)",
                      "base.view(-1)[hot] *= 50"]
        if self.kind == "correlated":
            lines.append(f"shared = torch.randn({shape}, generator=g) * {self.delta!r}")
        lines.append("models = []")
        scales = tuple(self.deltas) or (self.delta,) * self.models
        lines.append(f"for scale in {_literal(scales)}:" if self.deltas else f"for scale in [{self.delta!r}] * {self.models}:")
        if self.kind == "untouched":
            lines.append("    delta = torch.zeros_like(base)")
        elif self.kind == "lora" and len(self.shape) == 2:
            rows, columns = self.shape
            lines.append(f"    delta = torch.randn({rows}, 8, generator=g) @ torch.randn(8, {columns}, generator=g)"
                         " * (scale / 8 ** 0.5)")
        elif self.kind == "correlated":
            lines.append(f"    delta = shared + torch.randn({shape}, generator=g) * (scale / 2)")
        else:
            lines.append(f"    delta = torch.randn({shape}, generator=g) * scale")
        if self.outliers:
            lines.append("    delta.view(-1)[hot] *= 20")
        lines.append("    models.append(base + delta)")
        lines.append(f"base, models = base.to(torch.{self.dtype}), [m.to(torch.{self.dtype}) for m in models]")
        return "\n".join(lines)

    def build(self) -> MergeInputs:
        import torch

        namespace: dict[str, Any] = {"torch": torch}
        exec(self.torch_source(), namespace)  # noqa: S102 - our own recipe; the repr shows the same code
        return MergeInputs(tuple(namespace["models"]), namespace["base"] if self.with_base else None,
                           dict(self.params), self.seed, source=f"{self!r}.build()")

    def __repr__(self) -> str:
        """Only the fields that differ from their defaults (and the shape)."""
        fields = [f"shape={_literal(tuple(self.shape))}"]
        for field in dataclasses.fields(self)[1:]:
            value = getattr(self, field.name)
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            if value != default and not (field.name == "delta" and self.deltas):
                fields.append(f"{field.name}={_literal(dict(value) if field.name == 'params' else value)}")
        return f"RealisticInputs({', '.join(fields)})"


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


def draw_parameters(
    draw: st.DrawFn, operator: MergeOperator, n: int, min_total_weight: float | None
) -> dict[str, Any]:
    """The operator's parameters for ``n`` models (per-model ones as lists), weights included."""
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


def _take_base(draw: st.DrawFn, operator: MergeOperator, with_base: bool | None) -> bool:
    return operator.base == "required" or (
        operator.base == "optional" and (draw(mst._BOOLEANS) if with_base is None else with_base)
    )


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
    """Return a strategy for one call of ``operator`` in the degenerate regime, within its contract.

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
        take_base = _take_base(draw, operator, with_base)
        dtype = draw(dtype_strategy)
        lowest, highest = mst.exponent_limits(dtype)
        low = min(max(exponents[0], lowest), highest - 1)
        high = max(min(exponents[1], highest - 1), low)
        magnitude = mst._draw_magnitude(draw, low, high)
        shape, kind = draw(shape_strategy), draw(kind_strategy)
        tensors = mst._draw_tensor_set(draw, n + take_base, dtype, shape, magnitude, kind, allow_zero)
        params = draw_parameters(draw, operator, n, min_total_weight)
        seed = draw(_SEEDS) if operator.stochastic else 0
        base = tensors[0] if take_base else None
        return MergeInputs(tuple(tensors[take_base:]), base, params, seed)

    return draw_inputs()


def _realistic_shapes(max_entries: int, min_entries: int = 256) -> st.SearchStrategy[tuple[int, ...]]:
    """Power-of-two LLM-like shapes from ``min_entries`` (at least 256) to ``max_entries``:
    vectors (norms, biases) and matrices (projections) with sides of at least 16. About half the
    draws take the largest size (reductions overflow and underflow with size). Shrinks towards
    the smallest."""
    top = max(8, int(math.log2(max_entries)))
    low = min(max(8, math.ceil(math.log2(min_entries))), top)
    sizes = st.one_of(mst._integers(low, top), st.just(top))

    @st.composite
    def draw_shape(draw: st.DrawFn) -> tuple[int, ...]:
        k = draw(sizes)
        if k > 12 or draw(mst._BOOLEANS):  # vectors stop at 4096 (a hidden size)
            rows = draw(mst._integers(4, k - 4))
            return (2**rows, 2 ** (k - rows))
        return (2**k,)

    return draw_shape()


def real_shape(shape: tuple[int, ...], locality: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape to build, ``block_of``) for a real matrix ``shape``: the whole matrix for an operator
    with tensor-wide reductions, else a block of its rows of about ``BLOCK_ENTRIES`` entries."""
    if locality == "tensor":
        return shape, ()
    rows = max(1, min(shape[0], BLOCK_ENTRIES // shape[1]))
    return (rows, shape[1]), shape


def realistic_inputs(
    operator: MergeOperator,
    *,
    models: st.SearchStrategy[int] | None = None,
    with_base: bool | None = None,
    dtypes: Sequence[str] | None = None,
    kinds: Sequence[str] = REALISTIC_KINDS,
    bands: Sequence[float] = DELTA_BANDS,
    min_total_weight: float | None = 0.1,
    max_entries: int | None = None,
    min_entries: int = 256,
) -> st.SearchStrategy[MergeInputs]:
    """Return a strategy for one call of ``operator`` in the realistic regime (``RealisticInputs``).

    Draws the model count, base, dtype, an LLM-like shape of ``min_entries`` up to
    ``max_entries`` entries (default: ``realistic_max_entries()``, i.e. per profile; from
    ``REAL_SHAPES_FROM`` on, one of ``REAL_SHAPES``, whole or as a row block per
    ``operator.locality``), a kind of task vector, a delta band (``DELTA_BANDS``, relative to the
    weight std 0.02), 0 or 4 outliers, a data seed, the parameters and an RNG seed. Costs a dozen
    draws whatever the size; building costs one randn per tensor (about 10 ms per million
    entries, 1 s for a 14336x4096 MLP matrix). Shrinking simplifies sizes, kinds and seeds, not
    single values.
    """
    bad = [kind for kind in kinds if kind not in REALISTIC_KINDS]
    if not kinds or bad:
        raise mst.InvalidStrategyArgument(f"kinds={list(kinds)!r}; use some of {', '.join(REALISTIC_KINDS)}")
    counts = models if models is not None else operator.model_counts()
    dtype_strategy = st.sampled_from(list(dtypes or operator.dtypes))
    kind_strategy, band_strategy = st.sampled_from(list(kinds)), st.sampled_from(list(bands))
    outliers = st.sampled_from([0, 4])

    @st.composite
    def draw_inputs(draw: st.DrawFn) -> MergeInputs:
        limit = max_entries if max_entries is not None else realistic_max_entries()
        n = draw(counts)
        block_of: tuple[int, ...] = ()
        if limit >= REAL_SHAPES_FROM:
            fitting = [s for s in REAL_SHAPES if math.prod(s) <= limit] or [min(REAL_SHAPES, key=math.prod)]
            shape, block_of = real_shape(draw(st.sampled_from(fitting)), operator.locality)
        else:
            shape = draw(_realistic_shapes(limit, min_entries))
        recipe = RealisticInputs(
            shape=shape, block_of=block_of, models=n,
            with_base=_take_base(draw, operator, with_base),
            kind=draw(kind_strategy), delta=0.02 * draw(band_strategy), outliers=draw(outliers),
            dtype=draw(dtype_strategy), data_seed=draw(_SEEDS),
            params=draw_parameters(draw, operator, n, min_total_weight),
            seed=draw(_SEEDS) if operator.stochastic else 0,
        )
        return recipe.build()

    return draw_inputs()


def inputs_in(regime: Regime, operator: MergeOperator, **options: Any) -> st.SearchStrategy[MergeInputs]:
    """``realistic_inputs`` or ``merge_inputs`` with the options both accept (models, with_base,
    dtypes, min_total_weight)."""
    if regime == "realistic":
        return realistic_inputs(operator, **options)
    if regime == "degenerate":
        return merge_inputs(operator, **options)
    raise mst.InvalidStrategyArgument(f"regime={regime!r}; use one of {', '.join(REGIMES)}")


def sparsification_inputs(
    operator: MergeOperator, n_models: int, regime: Regime, kinds: Sequence[str] = ("independent",),
    min_entries: int = 256,
) -> st.SearchStrategy[MergeInputs]:
    """fp32 base plus task vectors with no zero entry, weights 1: every entry the merge keeps shows
    up as a non-zero entry of merge - base. Degenerate: base in [-1, 1], deltas of ``kinds``;
    realistic: dense or correlated task vectors in the fine-tuning bands, of ``min_entries`` and
    up."""
    import torch

    if regime == "realistic":
        inputs = realistic_inputs(operator, models=st.just(n_models), dtypes=("float32",),
                                  kinds=("dense", "correlated"), bands=DELTA_BANDS[:3], min_total_weight=None,
                                  min_entries=min_entries)
        if operator.weights is None:
            return inputs
        return inputs.map(lambda i: i.with_params(**{operator.weights: [1.0] * n_models}))

    shape_strategy, kind_strategy = mst.shapes(min_side=2, max_side=4), st.sampled_from(list(kinds))

    @st.composite
    def draw_inputs(draw: st.DrawFn) -> MergeInputs:
        shape, kind = draw(shape_strategy), draw(kind_strategy)
        base = mst._draw_tensor(draw, torch.float32, shape, 1.0, True)
        deltas = mst._draw_tensor_set(draw, n_models, torch.float32, shape, 1.0, kind, False)
        params = draw_parameters(draw, operator, n_models, min_total_weight=None)
        if operator.weights is not None:
            params[operator.weights] = [1.0] * n_models
        seed = draw(_SEEDS) if operator.stochastic else 0
        return MergeInputs(tuple(base + d for d in deltas), base, params, seed)

    return draw_inputs()
