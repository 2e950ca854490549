"""Describing a merge operator: what the property catalogue needs to know about a merge function.

``MergeOperator`` holds the function and its contract (base policy, model counts, parameters and
how to draw them, endpoints, what it does not promise); the violations a property raises live here
too, so every layer above can import them. Not for: drawing inputs (``inputs``), the properties
(``catalogue``) or running them (``runner``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from hypothesis import strategies as st

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.operators import strategies as mst

if TYPE_CHECKING:
    import torch

BasePolicy = Literal["required", "optional", "none"]


class OperatorCall(Protocol):
    """What calling an operator reads of its inputs (``inputs.MergeInputs`` is the one the kit
    draws; declared here so that this module needs nothing from the layer above it)."""

    models: Sequence[torch.Tensor]
    base: torch.Tensor | None
    params: Mapping[str, Any]
    seed: int | None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> OperatorCall: ...


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
    afterwards). ``not_applicable`` maps property names to why the method does not promise them (checked
    against the properties run, by ``runner.evaluate``). ``locality`` says what one output entry
    depends on: ``"entry"`` (the same entry of each input), ``"row"`` (its row) or ``"tensor"``
    (tensor-wide reductions: norms, top-k, L1 rescaling; the safe default). The ``mergeqa-large``
    profile merges whole real matrices for ``"tensor"`` and row blocks of them otherwise.
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
    locality: Literal["entry", "row", "tensor"] = "tensor"

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
        if self.locality not in ("entry", "row", "tensor"):
            raise MergeQAUsageError(f"{where}: locality={self.locality!r}; use 'entry', 'row' or 'tensor'")
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
        self, inputs: OperatorCall, *, device: str | None = None, reseed: bool = True
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
    from mergeqa.core.threads import torch_threads

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
