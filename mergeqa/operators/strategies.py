"""Hypothesis strategies for the inputs of merge operators, in the style of hypothesis.extra.numpy.

They compose: ``shapes`` and ``float_dtypes`` feed ``aligned_tensors`` (tensors that can be merged
together), which ``mergeqa.operators.inputs.merge_inputs`` turns into one call of an operator.
Every strategy checks its arguments when it is called, not when it draws, and says what it costs.
Not for: model loading or anything that needs a checkpoint on disk.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from mergeqa.core.errors import MergeQAUsageError

if TYPE_CHECKING:  # torch is imported where tensors are built, so importing this module is cheap
    import torch

__all__ = [
    "DTYPE_NAMES",
    "TENSOR_KINDS",
    "InvalidStrategyArgument",
    "aligned_tensors",
    "check_kinds",
    "densities",
    "exponent_limits",
    "float_dtypes",
    "interpolation_factors",
    "magnitudes",
    "merge_weights",
    "resolve_dtype",
    "shapes",
    "tensors",
    "transformer_block",
    "transformer_block_state_dicts",
]

#: The floating dtypes merged checkpoints come in, by their torch names.
DTYPE_NAMES = ("float32", "bfloat16", "float16")

#: How the tensors of an aligned set relate to each other (see ``aligned_tensors``).
TENSOR_KINDS = ("independent", "zero", "colinear", "outlier")

# Entries are 0 or +-[2**-ELEMENT_BINADES, 1] before scaling: a bounded dynamic range inside one
# tensor, so "tiny" and "huge" only ever come from the explicit magnitude (and show in the repr).
ELEMENT_BINADES = 4


class InvalidStrategyArgument(MergeQAUsageError, InvalidArgument):
    """A strategy was called with arguments it cannot honour; the message names the argument."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidStrategyArgument(message)


def _check_int(name: str, value: Any, minimum: int) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool),
        f"{name}={value!r} must be an int",
    )
    _check(value >= minimum, f"{name}={value} must be at least {minimum}")


def _check_order(low_name: str, low: float, high_name: str, high: float) -> None:
    _check(low <= high, f"{low_name}={low} is larger than {high_name}={high}")


def resolve_dtype(dtype: "str | torch.dtype") -> "torch.dtype":
    """``torch.float16`` for ``"float16"`` or ``torch.float16``; anything else is a usage error."""
    import torch

    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = dtype
    _check(
        name in DTYPE_NAMES,
        f"dtype={dtype!r} is not a merge dtype; use one of {', '.join(DTYPE_NAMES)}",
    )
    return getattr(torch, name)


def float_dtypes(names: Sequence[str] = DTYPE_NAMES) -> st.SearchStrategy["torch.dtype"]:
    """Return a strategy for the torch dtypes named in ``names`` (default: fp32, bf16, fp16).

    Shrinks towards the first name. Costs one draw.
    """
    _check(len(names) > 0, "names=() leaves no dtype to draw from")
    dtypes = [resolve_dtype(name) for name in names]
    return st.sampled_from(dtypes)


def shapes(
    *, min_dims: int = 1, max_dims: int = 2, min_side: int = 1, max_side: int = 4
) -> st.SearchStrategy[tuple[int, ...]]:
    """Return a strategy for tensor shapes: tuples of ``min_dims..max_dims`` sides in ``min_side..max_side``.

    Shrinks towards ``(min_side,) * min_dims``. The default keeps tensors at 16 elements or fewer,
    which is what keeps a property run in milliseconds; every element is drawn (see ``tensors``), so
    cost grows linearly with ``max_side ** max_dims``. Use ``min_side=2`` to leave out rows of one
    element, a degenerate case of its own.
    """
    _check_int("min_dims", min_dims, 1)
    _check_int("max_dims", max_dims, 1)
    _check_int("min_side", min_side, 1)
    _check_int("max_side", max_side, 1)
    _check_order("min_dims", min_dims, "max_dims", max_dims)
    _check_order("min_side", min_side, "max_side", max_side)
    dims, side = _integers(min_dims, max_dims), _integers(min_side, max_side)

    @st.composite
    def draw_shape(draw: st.DrawFn) -> tuple[int, ...]:
        return tuple(draw(side) for _ in range(draw(dims)))

    return draw_shape()


def exponent_limits(dtype: "torch.dtype") -> tuple[int, int]:
    """The smallest and largest ``k`` with ``2**k`` a normal, finite number of ``dtype``."""
    import torch

    info = torch.finfo(dtype)
    return math.ceil(math.log2(info.tiny)), math.floor(math.log2(info.max))


def magnitudes(
    dtype: "str | torch.dtype",
    *,
    min_exponent: int | None = None,
    max_exponent: int | None = None,
) -> st.SearchStrategy[float]:
    """Return a strategy for scales ``2**k``, from tiny to near overflow for ``dtype``.

    By default ``k`` runs from the smallest normal exponent of the dtype to one below its largest
    (fp16: ``2**-14`` to ``2**14``, whose doubled entries still fit; bf16/fp32: ``2**-126`` to
    ``2**126``). Powers of two scale entries without rounding, so a difference that shows up at one
    magnitude is the operator's, not the strategy's. Shrinks towards 1.0 (``k=0``) when 0 is in
    range. Costs one draw.
    """
    lowest, highest = exponent_limits(resolve_dtype(dtype))
    low = lowest if min_exponent is None else min_exponent
    high = highest - 1 if max_exponent is None else max_exponent
    _check(
        isinstance(low, int) and isinstance(high, int),
        f"min_exponent={low!r} and max_exponent={high!r} must be ints",
    )
    _check_order("min_exponent", low, "max_exponent", high)
    _check(
        lowest <= low and high <= highest,
        f"exponents {low}..{high} leave the normal range {lowest}..{highest} of {dtype}",
    )
    return _integers(low, high).map(lambda k: 2.0**k)


# Strategies every draw uses, built once. An entry is one float choice in [-1, 1], exact in 32
# bits, snapped to 0.0 below 2**-4 (or to +-2**-4 when zeros are not allowed): one choice per
# entry keeps shrinking fast, and shrinking towards 0 reaches zero tensors (or 2**-4).
_UNIT_FLOATS = st.floats(-1.0, 1.0, width=32, allow_subnormal=False)
_SMALLEST = 2.0**-ELEMENT_BINADES


def _snap(x: float, allow_zero: bool) -> float:
    if abs(x) >= _SMALLEST:
        return x
    return 0.0 if allow_zero else math.copysign(_SMALLEST, x)


_SIGNS = st.sampled_from([1.0, -1.0])
_COEFFICIENTS = st.sampled_from([1.0, -1.0, 0.5, 2.0, -0.5, 0.0, 1.5])
_BOOLEANS = st.booleans()


@functools.lru_cache(maxsize=None)
def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


def _as_strategy(value: Any) -> st.SearchStrategy[Any]:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def _check_magnitude(magnitude: Any) -> None:
    if not isinstance(magnitude, st.SearchStrategy):
        _check(
            isinstance(magnitude, (int, float)) and 0 < magnitude < math.inf,
            f"magnitude={magnitude!r} must be a positive finite number or a strategy",
        )


def _draw_magnitude(draw: st.DrawFn, low: int, high: int) -> float:
    return 2.0 ** draw(_integers(low, high))


def _draw_tensor(
    draw: st.DrawFn, dtype: "torch.dtype", shape: tuple[int, ...], magnitude: float, allow_zero: bool
) -> "torch.Tensor":
    import torch

    values = [_snap(draw(_UNIT_FLOATS), allow_zero) * magnitude for _ in range(math.prod(shape))]
    return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)


def _draw_tensor_set(
    draw: st.DrawFn,
    count: int,
    dtype: "torch.dtype",
    shape: tuple[int, ...],
    magnitude: float,
    kind: str,
    allow_zero: bool,
) -> list["torch.Tensor"]:
    """The body of ``aligned_tensors`` for concrete arguments (composites call it directly)."""
    if kind == "colinear":
        v = _draw_tensor(draw, dtype, shape, magnitude, allow_zero)
        return [(v.double() * draw(_COEFFICIENTS)).to(dtype) for _ in range(count)]
    result = [_draw_tensor(draw, dtype, shape, magnitude, allow_zero) for _ in range(count)]
    if kind == "zero":
        first = draw(_integers(0, count - 1))
        result = [t.new_zeros(t.shape) if i == first or draw(_BOOLEANS) else t for i, t in enumerate(result)]
    elif kind == "outlier":
        result = [_with_outlier(draw, t, magnitude) for t in result]
    return result


def _with_outlier(draw: st.DrawFn, tensor: "torch.Tensor", magnitude: float) -> "torch.Tensor":
    import torch

    _, highest = exponent_limits(tensor.dtype)
    index = draw(_integers(0, tensor.numel() - 1))
    value = min(magnitude * 2.0 ** draw(_integers(4, 8)), 2.0**highest) * draw(_SIGNS)
    flat = tensor.clone().reshape(-1)
    flat[index] = torch.tensor(value, dtype=torch.float64).to(tensor.dtype)
    return flat.reshape(tensor.shape)


def tensors(
    dtype: "str | torch.dtype | st.SearchStrategy[torch.dtype]",
    shape: "tuple[int, ...] | st.SearchStrategy[tuple[int, ...]]",
    *,
    magnitude: "float | st.SearchStrategy[float]" = 1.0,
    allow_zero: bool = True,
) -> st.SearchStrategy["torch.Tensor"]:
    """Return a strategy for one tensor of ``dtype`` and ``shape``, entries bounded by ``magnitude``.

    Each entry is ``0.0`` (unless ``allow_zero=False``) or ``+-x * magnitude`` with ``x`` in
    ``[1/16, 1]``, drawn separately and rounded once into ``dtype``. Costs one float draw per
    element: keep ``shape`` small (tens of elements) and the test stays fast; shrinking moves
    entries towards 0 and simple fractions.
    """
    _check_magnitude(magnitude)
    if not isinstance(dtype, st.SearchStrategy):
        dtype = resolve_dtype(dtype)
    if not isinstance(shape, st.SearchStrategy):
        _check(
            isinstance(shape, tuple) and all(isinstance(s, int) and s >= 1 for s in shape),
            f"shape={shape!r} must be a tuple of ints >= 1",
        )
    dtypes, shape_strategy, magnitude_strategy = map(_as_strategy, (dtype, shape, magnitude))

    @st.composite
    def draw_tensor(draw: st.DrawFn) -> "torch.Tensor":
        d, s, m = draw(dtypes), draw(shape_strategy), draw(magnitude_strategy)
        return _draw_tensor(draw, d, s, m, allow_zero)

    return draw_tensor()


def check_kinds(kinds: Sequence[str]) -> None:
    """Raise ``InvalidStrategyArgument`` unless ``kinds`` is a non-empty list of ``TENSOR_KINDS``."""
    _check(len(kinds) > 0, "kinds=() leaves no kind of tensor set to draw")
    unknown = [kind for kind in kinds if kind not in TENSOR_KINDS]
    _check(not unknown, f"kinds={list(kinds)!r}: unknown {unknown}; use {', '.join(TENSOR_KINDS)}")


def aligned_tensors(
    n: "int | st.SearchStrategy[int]",
    *,
    shape: "tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None" = None,
    dtype: "str | torch.dtype | st.SearchStrategy[torch.dtype] | None" = None,
    magnitude: "float | st.SearchStrategy[float]" = 1.0,
    kinds: Sequence[str] = ("independent",),
    allow_zero: bool = True,
) -> st.SearchStrategy[list["torch.Tensor"]]:
    """Return a strategy for ``n`` tensors of one shape and dtype: the inputs to one merge.

    ``shape`` defaults to ``shapes()``, ``dtype`` to ``float_dtypes()``. ``kinds`` picks how the
    tensors relate, one kind per draw (shrinking towards the first):

    * ``"independent"``: every entry of every tensor drawn separately.
    * ``"zero"``: independent, then a non-empty subset of the tensors replaced by zeros.
    * ``"colinear"``: ``c_i * v`` for one drawn ``v`` and ``c_i`` in ``[-2, 2]`` (so also
      antipodal pairs and zero vectors), the inputs where SLERP-style methods divide by ~0.
    * ``"outlier"``: independent, then one entry per tensor raised to ``2**j`` times the rest,
      ``j`` in ``4..8`` (capped to stay finite in ``dtype``).

    ``allow_zero=False`` keeps every entry of ``independent`` and ``outlier`` sets non-zero (see
    ``tensors``). Costs ``n`` times the cost of ``tensors`` (one float draw per element), except
    ``colinear``, which draws one tensor and ``n`` coefficients.
    """
    if not isinstance(n, st.SearchStrategy):
        _check_int("n", n, 1)
    _check_magnitude(magnitude)
    check_kinds(kinds)
    shape = shapes() if shape is None else shape
    dtype = float_dtypes() if dtype is None else dtype
    if not isinstance(dtype, st.SearchStrategy):
        dtype = resolve_dtype(dtype)
    counts, dtypes, shape_strategy, magnitude_strategy = map(_as_strategy, (n, dtype, shape, magnitude))
    kind_strategy = st.sampled_from(list(kinds))

    @st.composite
    def draw_set(draw: st.DrawFn) -> list["torch.Tensor"]:
        count, d, s = draw(counts), draw(dtypes), draw(shape_strategy)
        m, kind = draw(magnitude_strategy), draw(kind_strategy)
        return _draw_tensor_set(draw, count, d, s, m, kind, allow_zero)

    return draw_set()


@functools.lru_cache(maxsize=None)
def merge_weights(
    n: int,
    *,
    min_weight: float = 0.0,
    max_weight: float = 1.0,
    min_total: float | None = None,
) -> st.SearchStrategy[list[float]]:
    """Return a strategy for ``n`` merge weights in ``[min_weight, max_weight]``.

    Weights closer to zero than ``2**-10`` are drawn as ``0.0``: no merge configuration holds a
    weight like ``1e-45``, and products with one underflow, which is no property of the method.
    ``min_total`` (at most ``max_weight``) guarantees the weights do not all vanish: one drawn
    position is raised to at least ``min_total``, so the sum is at least that. This is a repair,
    not a filter (no ``assume``), so it costs nothing extra. Shrinks towards ``min_weight``.
    Costs ``n + 1`` draws; strategies are cached per argument set, so composites may call it.
    """
    _check_int("n", n, 1)
    _check_order("min_weight", min_weight, "max_weight", max_weight)
    if min_total is not None:
        _check_order("min_total", min_total, "max_weight", max_weight)
    weight = st.floats(min_weight, max_weight, allow_nan=False, allow_subnormal=False)

    @st.composite
    def draw_weights(draw: st.DrawFn) -> list[float]:
        weights = [w if abs(w) >= 2.0**-10 else 0.0 for w in (draw(weight) for _ in range(n))]
        if min_total is not None and sum(weights) < min_total:
            anchor = draw(_integers(0, n - 1))
            weights[anchor] = max(weights[anchor], min_total)
        return weights

    return draw_weights()


def densities(*, min_density: float = 0.1, max_density: float = 1.0) -> st.SearchStrategy[float]:
    """Return a strategy for sparsification densities (fraction of entries kept) in the range.

    ``0 < min_density <= max_density <= 1``. Shrinks towards ``min_density``. Costs one draw.
    """
    _check(0 < min_density <= 1, f"min_density={min_density} must be in (0, 1]")
    _check(0 < max_density <= 1, f"max_density={max_density} must be in (0, 1]")
    _check_order("min_density", min_density, "max_density", max_density)
    return st.floats(min_density, max_density, allow_nan=False, allow_subnormal=False)


def interpolation_factors(*, min_t: float = 0.0, max_t: float = 1.0) -> st.SearchStrategy[float]:
    """Return a strategy for interpolation factors ``t`` in ``[min_t, max_t]`` (default 0..1).

    The endpoints themselves are drawn often, which is where SLERP-style methods are fragile.
    Shrinks towards ``min_t``. Costs one or two draws.
    """
    _check(math.isfinite(min_t) and math.isfinite(max_t), "min_t and max_t must be finite")
    _check_order("min_t", min_t, "max_t", max_t)
    return st.one_of(st.sampled_from([min_t, max_t]), st.floats(min_t, max_t, allow_nan=False))


#: Tensor names and shapes of one transformer block, as (name, rows, columns) in units of
#: hidden ("h") and intermediate ("i") size; columns None means a vector.
_BLOCK = (
    ("input_layernorm.weight", "h", None),
    ("self_attn.q_proj.weight", "h", "h"),
    ("self_attn.k_proj.weight", "h", "h"),
    ("self_attn.v_proj.weight", "h", "h"),
    ("self_attn.o_proj.weight", "h", "h"),
    ("post_attention_layernorm.weight", "h", None),
    ("mlp.gate_proj.weight", "i", "h"),
    ("mlp.up_proj.weight", "i", "h"),
    ("mlp.down_proj.weight", "h", "i"),
)


def transformer_block(
    seed: int,
    *,
    hidden: int = 4,
    intermediate: int | None = None,
    dtype: "str | torch.dtype" = "float32",
    magnitude: float = 0.02,
    buffers: bool = True,
) -> dict[str, "torch.Tensor"]:
    """Build one state dict shaped like a Llama-style decoder layer, deterministically from ``seed``.

    Not a strategy: the building block of ``transformer_block_state_dicts``, public so that a
    counterexample (a few seeds and sizes) rebuilds the exact tensors it failed on.
    """
    import torch

    _check_int("hidden", hidden, 1)
    intermediate = 2 * hidden if intermediate is None else intermediate
    _check_int("intermediate", intermediate, 1)
    dtype = resolve_dtype(dtype)
    sizes = {"h": hidden, "i": intermediate}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, rows, columns in _BLOCK:
        shape = (sizes[rows],) if columns is None else (sizes[rows], sizes[columns])
        values = torch.randn(shape, generator=generator, dtype=torch.float64) * magnitude
        state[name] = values.to(dtype)
    if buffers:
        state["position_ids"] = torch.arange(hidden, dtype=torch.int64)
    return state


def transformer_block_state_dicts(
    n: int,
    *,
    hidden: "int | st.SearchStrategy[int]" = 4,
    intermediate: "int | st.SearchStrategy[int] | None" = None,
    dtype: "str | torch.dtype | st.SearchStrategy[torch.dtype]" = "float32",
    magnitude: float = 0.02,
    buffers: bool = True,
) -> st.SearchStrategy[list[dict[str, "torch.Tensor"]]]:
    """Return a strategy for ``n`` state dicts shaped like one Llama-style transformer block.

    Keys are those of a decoder layer (norms, q/k/v/o projections, gated MLP); ``intermediate``
    defaults to ``2 * hidden``. With ``buffers`` every dict also holds an identical int64
    ``position_ids`` buffer, which a merge must copy, not average. Values are normal with standard
    deviation ``magnitude`` from one drawn seed per model (``transformer_block``): cheap (a few
    draws whatever the size), but shrinking only simplifies seeds and sizes, not single values.
    The four square projections share a shape, which exercises batched execution of same-shaped
    weights.
    """
    _check_int("n", n, 1)
    for name, value in (("hidden", hidden), ("intermediate", intermediate)):
        if value is not None and not isinstance(value, st.SearchStrategy):
            _check_int(name, value, 1)
    _check_magnitude(magnitude)
    if not isinstance(dtype, st.SearchStrategy):
        dtype = resolve_dtype(dtype)

    @st.composite
    def draw_dicts(draw: st.DrawFn) -> list[dict[str, "torch.Tensor"]]:
        h = draw(_as_strategy(hidden))
        i = None if intermediate is None else draw(_as_strategy(intermediate))
        d = draw(_as_strategy(dtype))
        seeds = [draw(_integers(0, 2**32 - 1)) for _ in range(n)]
        return [
            transformer_block(s, hidden=h, intermediate=i, dtype=d, magnitude=magnitude, buffers=buffers)
            for s in seeds
        ]

    return draw_dicts()
