"""mergekit's merge methods as ``MergeOperator``s, called through its public entry points.

Tensors go through ``mergekit.merge_methods.merge_tensors``, state dicts through
``merge_state_dicts``; the structure (base policy, model counts, parameters) is read from each
method's ``spec`` (a deterministic pruner's ``rescale`` flag is drawn both ways), and what a
spec cannot say (endpoints, which parameter is a density, what the
method does not promise) comes from ``METHOD_NOTES``. Not for: running full merges from YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st

from mergeqa.core.errors import MergeQAUsageError, did_you_mean
from mergeqa.operators import strategies as mst
from mergeqa.operators.description import Endpoint, MergeOperator, PerModel

if TYPE_CHECKING:
    import torch
    from mergekit.merge_methods import MergeMethod

_SCALE_THRESHOLD = "compares entries of the task vectors with an absolute epsilon"

#: What a method's spec cannot say: MergeOperator fields per registered method name. Methods not
#: listed here are still tested, with what their spec says.
#: Locality (``MergeOperator.locality``) is "entry" only where mergekit 0.1.5's source has no
#: reduction across entries; ties/breadcrumbs (global magnitude top-k), dare/della (L1 rescaling of
#: the whole tensor), slerp/nuslerp/multislerp/karcher (norms), model_stock (cosines), sce (top-k
#: of variances, mean squares), arcee_fusion (softmax) and ram keep the default "tensor".
METHOD_NOTES: dict[str, dict[str, Any]] = {
    "linear": {"endpoints": (Endpoint.one_hot("weight", 0), Endpoint.one_hot("weight", 1)), "locality": "entry"},
    "slerp": {"endpoints": (Endpoint("base", {"t": 0.0}), Endpoint(0, {"t": 1.0}))},
    "nearswap": {
        # weight = clamp(t / |a - b|, 0, 1): t = 0 keeps the base, t >= max |a - b| takes the model.
        "endpoints": (Endpoint("base", {"t": 0.0}), Endpoint(0, {"t": float("inf")})),
        "not_applicable": {"scale_equivariant": "takes t as an absolute distance between entries"},
        "locality": "entry",
    },
    "nuslerp": {
        "endpoints": (Endpoint.one_hot("weight", 0), Endpoint.one_hot("weight", 1)),
        "normalizes_weights": True,  # t = w1 / (w0 + w1)
    },
    "multislerp": {"endpoints": (Endpoint.one_hot("weight", 0), Endpoint.one_hot("weight", 1))},
    "sce": {"parameters": {"select_topk": mst.densities()}, "density": "select_topk"},
    "della": {"parameters": {"density": PerModel(mst.densities(min_density=0.2, max_density=0.8))}},
    "della_linear": {"parameters": {"density": PerModel(mst.densities(min_density=0.2, max_density=0.8))}},
    "task_arithmetic": {
        "not_applicable": {"density_kept": "has no sparsification step (density is accepted and ignored)"},
        "locality": "entry",
    },
    "arcee_fusion": {
        "not_applicable": {"scale_equivariant": "selects entries by a softmax of the raw weights"},
    },
    "ram": {"not_applicable": {"scale_equivariant": _SCALE_THRESHOLD}},
    "ramplus_tl": {"not_applicable": {"scale_equivariant": _SCALE_THRESHOLD}},
}

#: Registered methods the suite does not test, with the reason. Empty: every method of mergekit
#: 0.1.5 is tested; a method added by a later release is tested from its spec, or fails
#: ``test_every_registered_method_is_tested_or_skipped`` until it is listed here.
SKIPPED_METHODS: dict[str, str] = {}


def registered_method_names() -> list[str]:
    """Names of the methods ``mergekit.merge_methods.registered_methods()`` returns, in its order."""
    from mergekit.merge_methods import registered_methods

    return [method.spec.name for method in registered_methods()]


def get_method(name: str) -> MergeMethod:
    """The registered mergekit method called ``name``; an unknown name lists the valid ones."""
    from mergekit import merge_methods

    names = registered_method_names()
    if name not in names:
        raise MergeQAUsageError(f"unknown mergekit merge method {name!r}." + did_you_mean(name, names))
    return merge_methods.get(name)


def _tensor_merge(method: MergeMethod):
    def merge(models: list[torch.Tensor], base: torch.Tensor | None = None, **params: Any) -> torch.Tensor:
        from mergekit.merge_methods import merge_tensors

        tensors = list(models) if base is None else [base, *models]
        return merge_tensors(tensors, method, parameters=params,
                             base_index=None if base is None else 0)

    merge.__name__ = method.spec.name
    return merge


def _state_dict_merge(method: MergeMethod):
    def merge(models: list[Mapping[str, torch.Tensor]], base: Mapping[str, torch.Tensor] | None = None,
              **params: Any) -> dict[str, torch.Tensor]:
        from mergekit.merge_methods import merge_state_dicts

        if base is None:
            return merge_state_dicts(list(models), method, parameters=params)
        return merge_state_dicts([base, *models], method, parameters=params, base=0)

    return merge


def _model_counts(method: MergeMethod, base: str) -> tuple[int, int | None]:
    contract = method.spec.contract
    taken = 1 if base == "required" else 0  # an optional base is counted by min/max_non_base
    low = max(contract.min_inputs - taken, contract.min_non_base or 0, 1)
    high = None if contract.max_inputs is None else contract.max_inputs - taken
    if contract.max_non_base is not None:
        high = contract.max_non_base if high is None else min(high, contract.max_non_base)
    return low, high


def _is_stochastic(method: MergeMethod) -> bool:
    from mergekit.sparsify import SparsificationMethod

    random = {SparsificationMethod.random, SparsificationMethod.della_magprune}
    return getattr(method, "sparsification_method", None) in random


def describe(method: MergeMethod) -> tuple[dict[str, Any], list[str]]:
    """``MergeOperator`` fields read from a method's spec (before ``METHOD_NOTES``), and the names
    of required parameters the spec gives no way to draw."""
    from mergekit.merge_methods import BasePolicy, ParameterScope

    spec = method.spec
    base = {BasePolicy.REQUIRED: "required", BasePolicy.OPTIONAL: "optional"}.get(spec.contract.base, "none")
    low, high = _model_counts(method, base)
    fields: dict[str, Any] = {"name": spec.name, "base": base, "min_models": low, "max_models": high,
                              "parameters": {}, "stochastic": _is_stochastic(method)}
    sparsifies = getattr(method, "sparsification_method", None) is not None
    missing = []
    for parameter in spec.parameters:
        per_model = parameter.scope != ParameterScope.SHARED
        if parameter.name == "weight" and per_model:
            fields["weights"] = "weight"
        elif parameter.name == "t" and not per_model:
            fields["parameters"]["t"] = mst.interpolation_factors()
        elif parameter.name == "density" and per_model and sparsifies:
            fields["parameters"]["density"] = PerModel(mst.densities())
            fields["density"] = "density"
        elif parameter.name in ("normalize", "normalize_weights") and not parameter.required:
            fields["normalizes_weights"] = parameter.default is True
        elif parameter.name == "rescale" and sparsifies and not fields["stochastic"]:
            # Deterministic pruning rescales only when asked (ties: rescale: true): draw both.
            # Random pruning keeps its default: without rescaling it is biased by design.
            fields["parameters"]["rescale"] = st.booleans()
        elif parameter.required:
            missing.append(parameter.name)
    return fields, missing


def mergekit_operator(method: str | MergeMethod, **overrides: Any) -> MergeOperator:
    """The ``MergeOperator`` for a mergekit method: a registered name or any ``MergeMethod``.

    ``overrides`` replace fields (e.g. ``parameters={"my_param": st.floats(0, 1)}`` for a
    required parameter the adapter cannot guess; ``parameters`` entries are merged).
    """
    method = get_method(method) if isinstance(method, str) else method
    fields, missing = describe(method)
    for source in (METHOD_NOTES.get(fields["name"], {}), overrides):
        for key, value in source.items():
            merged = key in ("parameters", "not_applicable") and key in fields
            fields[key] = {**fields[key], **value} if merged else value
    unresolved = [name for name in missing if name not in fields["parameters"]]
    if unresolved:
        raise MergeQAUsageError(
            f"mergekit method {fields['name']!r} needs parameter(s) {', '.join(unresolved)} that "
            f"mergeqa cannot guess; pass parameters={{{unresolved[0]!r}: <strategy or value>}}"
        )
    return MergeOperator(fn=_tensor_merge(method), merge_state_dicts=_state_dict_merge(method), **fields)

