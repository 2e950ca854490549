"""Which source tensors a merge config maps to each output tensor: the provenance the static checks
(lint, config) compare a merged checkpoint with, instead of same-named parent tensors.

    prov = provenance_for(merged_dir, given=[parent_a, parent_b, base])   # None: no config
    prov.tensors["model.layers.4.mlp.up_proj.weight"].sources
    # (Source(model=".../lists", path=PosixPath(".../lists"), tensor="model.layers.2.mlp.up_proj.weight", layer=2),)
    prov.num_layers                                             # 6 for a 6-layer passthrough

The config is the merged directory's `mergekit_config.yml` (mergekit writes it into every output)
or the run's --merge-config; mergekit's own `MergeConfiguration` parses it and mergekit's
architecture definitions name the tensors. The mapping follows mergekit's planner
(`mergekit/plan.py`): `models:` become one slice of every layer of every model (the base model
added when it is not listed); output layers are numbered on across slices, output layer k of a
slice reading layer `layer_range[0] + k` of each source (ranges are [start, end)); the
embeddings come from the first slice's sources, the final norm and lm_head from the last's.
Parameters (gradients of t, weight, density) change the values, not the mapping: they are kept,
resolved per tensor as mergekit resolves them, for messages only.

Not for building merges (mergeqa.models.merging) and not a check: lint and the config check use it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeqa.core.errors import MergeQAUsageError

CONFIG_FILE = "mergekit_config.yml"
_PLACEHOLDER = re.compile(r"^\$\{?(\w+)\}?$")


@dataclass(frozen=True)
class Source:
    """One input of an output tensor: the model as the config names it, the directory it
    resolved to (None: not found), the tensor read there and its layer (None outside layers)."""

    model: str
    path: Path | None
    tensor: str
    layer: int | None = None
    present: bool = True  # False: the resolved model has no such tensor (the config does not fit it)

    @property
    def label(self) -> str:
        """'lists:model.layers.2.mlp.up_proj.weight'."""
        return f"{(self.path or Path(self.model)).name}:{self.tensor}"


@dataclass(frozen=True)
class Mapped:
    """An output tensor's sources, its output layer (None for embeddings, norm, head), the
    slice position `t` mergekit interpolates gradients with, and the resolved parameters."""

    sources: tuple[Source, ...]
    layer: int | None = None
    t: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Provenance:
    """The mapping of one merged checkpoint. `unresolved`: {model as the config names it: why it
    was not found}; `unavailable`: why no tensor mapping could be made (then `tensors` is empty)."""

    origin: str  # "merged/mergekit_config.yml" or "--merge-config x.yaml"
    merge_method: str
    num_layers: int | None
    layer_sources: list[tuple[tuple[str, int], ...]] = field(default_factory=list)  # per output layer
    tensors: dict[str, Mapped] = field(default_factory=dict)
    unresolved: dict[str, str] = field(default_factory=dict)
    unavailable: str = ""

    @property
    def complete(self) -> bool:
        """Every source found and every tensor mapped: the checks can compare all of it."""
        return not self.unresolved and not self.unavailable

    def problem(self) -> str:
        """One line saying what keeps the mapping from being complete ('' when it is)."""
        if self.unresolved:
            what = "; ".join(f"{m!r}: {why}" for m, why in self.unresolved.items())
            return f"{self.origin} names source model(s) that cannot be found ({what})"
        return f"{self.origin}: {self.unavailable}" if self.unavailable else ""

    def layer_plan(self) -> str:
        """'0-2 <- arithmetic 0-2; 3-5 <- lists 1-3': output layers and where each run comes from."""
        runs: list[list] = []  # [first output layer, last, sources of the first]
        for out, srcs in enumerate(self.layer_sources):
            if runs:
                first, _, start = runs[-1]
                if [m for m, _ in srcs] == [m for m, _ in start] and all(
                        i == i0 + out - first for (_, i), (_, i0) in zip(srcs, start, strict=True)):
                    runs[-1][1] = out
                    continue
            runs.append([out, out, srcs])

        def span(a: int, b: int) -> str:
            return f"{a}-{b}" if b > a else str(a)

        return "; ".join(f"{span(first, last)} <- " + " + ".join(
            f"{Path(m).name} {span(i, i + last - first)}" for m, i in srcs) for first, last, srcs in runs)


# -- finding the config and its models -----------------------------------------------------------
def find_config(merged_dir: str | Path, merge_config: str | Path | None = None) -> tuple[Path, str] | None:
    """(file, origin label) of the config that built `merged_dir`: its mergekit_config.yml, else
    the --merge-config it was built from; None when there is neither."""
    own = Path(merged_dir) / CONFIG_FILE
    if own.is_file():
        return own, str(own)
    if merge_config is not None and Path(merge_config).is_file():
        return Path(merge_config), f"--merge-config {merge_config}"
    return None


def resolve_model(ref: str, given: list[Path]) -> tuple[Path | None, str]:
    """The directory a config's model reference means, and '' or why it was not found.

    Matched against the given models (--parents, --base) by path, then by directory name (a
    `${name}` placeholder by its name, a hub id `org/name` also by its huggingface cache folder
    `models--org--name`); else a model directory at that path; else not found."""
    given = [Path(p) for p in given]
    raw = ref.split("@", 1)[0].rstrip("/")
    path = Path(raw).expanduser()
    if "+" in raw and not path.exists():
        return None, "a model with a LoRA applied: mergeqa compares with plain model directories"
    for p in given:
        if path.exists() and p.exists() and path.resolve() == p.resolve():
            return p, ""
    placeholder = _PLACEHOLDER.match(raw)
    name = placeholder.group(1) if placeholder else path.name
    hub = "models--" + raw.replace("/", "--")  # a hub id, given as its huggingface cache snapshot
    named = list(dict.fromkeys(p for p in given if p.name == name or hub in p.parts))
    if len(named) == 1:
        return named[0], ""
    if len(named) > 1:
        return None, f"{len(named)} given models are called {name!r} ({', '.join(map(str, named))}): rename one"
    if not placeholder and (path / "config.json").is_file():
        return path, ""
    shown = ", ".join(p.name for p in given) or "none"
    return None, (f"not among --parents/--base ({shown}) by directory name, and no model directory at "
                  f"{raw}; pass it with --parents or --base")


def _tensor_names(path: Path) -> set[str]:
    """Tensor names of a checkpoint, from its safetensors index or headers (no data read)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text()).get("weight_map", {}))
    from safetensors import safe_open

    names: set[str] = set()
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            names.update(h.keys())
    return names


# -- the mapping ---------------------------------------------------------------------------------
_CACHE: dict[tuple, Provenance | None] = {}


def provenance_for(merged_dir: str | Path, given: list[str | Path],
                   merge_config: str | Path | None = None) -> Provenance | None:
    """The provenance of `merged_dir` from its config (see `find_config`), its models resolved
    against `given` (the --parents and --base directories); None when there is no config. A
    config mergekit cannot parse is a usage error naming the file."""
    found = find_config(merged_dir, merge_config)
    if found is None:
        return None
    file, origin = found
    given = [Path(p) for p in given]
    st = file.stat()
    key = (str(file), st.st_mtime_ns, st.st_size, tuple(map(str, given)))
    if key not in _CACHE:
        _CACHE[key] = _build(file, origin, given)
    return _CACHE[key]


def _build(file: Path, origin: str, given: list[Path]) -> Provenance:
    from mergeqa.models.merging import read_merge_config

    names = [p.name for p in given]  # ${name} placeholders: the given model of that directory name
    subs = {p.name: str(p) for p in given if p.name.isidentifier() and names.count(p.name) == 1}
    try:
        config, _ = read_merge_config(file, subs)
    except MergeQAUsageError as exc:
        raise MergeQAUsageError(str(exc).replace(f"--merge-config {file}", origin, 1)
                                + f" (the merge config the static checks compare with; fix or remove {file})") from None
    except RuntimeError as exc:  # mergekit's own validators ("Exactly one of 'models', 'slices' ...")
        raise MergeQAUsageError(f"{origin}: {exc} (the merge config the static checks compare with; "
                                f"fix or remove {file})") from None
    refs = {str(m): m for m in config.referenced_models()}
    paths: dict[str, Path | None] = {}
    prov = Provenance(origin, config.merge_method, None)
    for ref in refs:
        paths[ref], why = resolve_model(ref, given)
        if why:
            prov.unresolved[ref] = why
    return _map(config, paths, prov)


def _map(config, paths: dict[str, Path | None], prov: Provenance) -> Provenance:
    """Follow mergekit's planner over the config; fills prov's layers and tensors."""
    resolved = {r: p for r, p in paths.items() if p is not None}
    arch, hf_configs, why = _architecture(config, resolved)
    modules = _modules(config, arch)
    if arch is None or modules is None:
        prov.unavailable = why or "mergekit cannot tell which tensors form a layer here"
        if config.slices:  # the layer count is in the config itself
            prov.num_layers = sum(s.sources[0].layer_range[1] - s.sources[0].layer_range[0] for s in config.slices)
        return prov
    planner = _Planner(config, arch, hf_configs, paths, {r: _tensor_names(p) for r, p in resolved.items()}, prov)
    for i, (module_name, definition) in enumerate(modules.items()):
        layers = planner.module(module_name, definition, main=i == 0)
        if layers is None:
            break
        if i == 0:
            prov.num_layers = layers
    return prov


class _Planner:
    """mergekit's MergePlanner (mergekit/plan.py) without the tensors: which inputs each output
    weight is read from, in the order and numbering mergekit plans them."""

    def __init__(self, config, arch, hf_configs: dict, paths: dict, names: dict[str, set[str]], prov: Provenance):
        self.config, self.arch, self.hf_configs, self.paths, self.names, self.prov = (
            config, arch, hf_configs, paths, names, prov)
        self.first_cfg = next(iter(hf_configs.values()))
        self.method = _method(config.merge_method)

    def _arch(self, module_name: str, ref=None):
        return _module_arch(self.arch, module_name, self.hf_configs.get(str(ref), self.first_cfg))

    def _slices(self, module_name: str, definition):
        """mergekit's normalize_config: `models` become one slice of every layer of every model,
        the base model added when it is not listed."""
        from mergekit.config import InputSliceDefinition, OutputModuleDefinition, OutputSliceDefinition

        if not definition.models:
            return definition
        models = [(m.model, m.parameters) for m in definition.models]
        base = self.config.base_model
        if base is not None and all(m != base for m, _ in models):
            models.append((base, None))
        sources = [InputSliceDefinition(model=m, layer_range=(0, self._arch(module_name, m).num_layers()),
                                        parameters=params) for m, params in models]
        return OutputModuleDefinition(slices=[OutputSliceDefinition(sources=sources)], parameters=definition.parameters)

    def module(self, module_name: str, definition, main: bool) -> int | None:
        """Map one module's weights; its output layer count (None: a slice mergekit refuses)."""
        from mergekit.config import ConfigReader

        definition = self._slices(module_name, definition)
        slices = definition.slices
        for s in slices:
            lengths = {src.layer_range[1] - src.layer_range[0] for src in s.sources}
            if len(lengths) != 1:
                self.prov.unavailable = (f"a slice's sources span different numbers of layers ({sorted(lengths)}): "
                                         "mergekit refuses such a config")
                return None
        out_arch = self._arch(module_name)
        reader = ConfigReader(config=self.config, t=0, module=definition)
        first = [s.model for s in slices[0].sources]
        for w in out_arch.pre_weights():  # embeddings: from the first slice's models
            self.add(w, [w] * len(first), first, reader.for_out_slice(slices[0]))
        out_layer = 0
        for s in slices:
            n = s.sources[0].layer_range[1] - s.sources[0].layer_range[0]
            models = [src.model for src in s.sources]
            for k in range(n):
                t = k / (n - 1) if n > 1 else 1.0  # where gradients are interpolated
                at = [src.layer_range[0] + k for src in s.sources]
                ins = [self._arch(module_name, m).layer_weights(index=i) for m, i in zip(models, at, strict=True)]
                for j, w_out in enumerate(out_arch.layer_weights(index=out_layer)):
                    self.add(w_out, [w[j] for w in ins], models, reader.for_out_slice(s).with_t(t), out_layer, at, t)
                if main:
                    self.prov.layer_sources.append(tuple(zip(map(str, models), at, strict=True)))
                out_layer += 1
        last = [s.model for s in slices[-1].sources]
        for w in out_arch.post_weights():  # final norm, lm_head: from the last slice's models
            self.add(w, [w] * len(last), last, reader.for_out_slice(slices[-1]))
        return out_layer

    def add(self, out_weight, in_weights, models, reader, layer=None, src_layers=None, t=0.0) -> None:
        """Record one output weight's sources (the name each model holds it under)."""
        refs = [str(m) for m in models]
        present = [any(n in self.names.get(r, ()) for n in [w.name, *(w.aliases or ())])
                   for r, w in zip(refs, in_weights, strict=True)]
        if out_weight.optional and not any(present) and all(r in self.names for r in refs):
            return  # mergekit skips an optional weight no input has (a tied lm_head)
        sources = []
        for i, (ref, w) in enumerate(zip(refs, in_weights, strict=True)):
            have = self.names.get(ref)
            tensor = next((n for n in [w.name, *(w.aliases or ()), *(w.tied_names or ())]
                           if have is not None and n in have), w.name)
            sources.append(Source(ref, self.paths.get(ref), tensor, src_layers[i] if src_layers else None,
                                  present=have is None or tensor in have or out_weight.optional))
        self.prov.tensors[out_weight.name] = Mapped(tuple(sources), layer, t, _parameters(
            self.method, reader, out_weight.name, models, in_weights, t))


def _architecture(config, resolved: dict[str, Path]):
    """(mergekit ModelArchitecture, {ref: transformers config}, why not) for the found models:
    mergekit's JSON definition, else the one mergekit infers from the checkpoints."""
    from mergekit.architecture import arch_info_for_config
    from mergekit.architecture.auto import infer_architecture_info
    from mergekit.common import ModelReference
    from mergekit.options import MergeOptions
    from transformers import AutoConfig

    if not resolved:
        return None, {}, "none of its source models was found"
    hf = {r: AutoConfig.from_pretrained(str(p)) for r, p in resolved.items()}
    infos = [arch_info_for_config(c) for c in hf.values()]
    if all(i is not None for i in infos):
        if any(i != infos[0] for i in infos):
            return None, hf, "its source models have different architectures"
        return infos[0], hf, ""
    base = resolved.get(str(config.base_model)) if config.base_model else None
    try:
        return infer_architecture_info(tuple(ModelReference.parse(str(p)) for p in resolved.values()),
                                       ModelReference.parse(str(base)) if base else None, MergeOptions()), hf, ""
    except Exception as exc:  # noqa: BLE001 (mergekit cannot infer one: then there is no mapping)
        return None, hf, f"mergekit has no architecture definition for these models ({exc})"


def _modules(config, arch) -> dict | None:
    """{module name: OutputModuleDefinition} as mergekit normalises `models:` and `slices:`."""
    from mergekit.config import OutputModuleDefinition

    if arch is None:
        return None
    if config.modules:
        return dict(config.modules)
    if config.slices:
        if len(arch.modules) != 1:
            return None
        return {next(iter(arch.modules)): OutputModuleDefinition(slices=config.slices)}
    return {name: OutputModuleDefinition(models=config.models) for name in arch.modules}


def _module_arch(arch, module_name: str, hf_config):
    from mergekit.architecture import ConfiguredModuleArchitecture

    module = arch.modules[module_name]
    return ConfiguredModuleArchitecture(info=module.architecture, config=hf_config, weight_prefix=module.weight_prefix)


def _method(name: str):
    from mergekit import merge_methods

    try:
        return merge_methods.get(name)
    except Exception:  # noqa: BLE001 (an unknown method only costs the parameters shown)
        return None


def _parameters(method, reader, tensor: str, models, in_weights, t: float) -> dict[str, Any]:
    """The merge parameters of one output tensor ({'t': 0.3} or {'lists.weight': 0.5}), resolved
    with mergekit's resolver (filters, gradients at this layer's t); {} when it cannot."""
    if method is None:
        return {}
    from mergekit.parameter_resolver import resolve_parameters

    try:
        shared, per_input = resolve_parameters(
            method.spec, tensor_name=tensor, inputs={m: w.name for m, w in zip(models, in_weights, strict=True)},
            sources=reader.parameter_sources, base_model=reader.base_model, t=t)
    except Exception:  # noqa: BLE001 (a missing required parameter: mergekit itself would refuse)
        return {}
    out = {k: v for k, v in shared.items() if v is not None}
    for m, params in per_input.items():
        out.update({f"{Path(str(m)).name}.{k}": v for k, v in params.items() if v is not None})
    return out
