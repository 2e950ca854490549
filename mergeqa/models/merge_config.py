"""A mergekit config read and checked before anything is loaded, and the one rule for which of its
models are parents and which is the base.

mergekit finds most mistakes only while it merges (an unknown method, a missing model, a layer
range past the end) and some never (a misspelt parameter, `pattern:` for `filter:`, is ignored).
`check_merge_config` finds them from the file, mergekit's own schema (`MergeConfiguration`) and
its method registry (`mergekit.merge_methods`), in about a second, each as one usage error naming
the file and the line. `merge_roles` says whether `base_model` is a base (task vectors are taken
from it) or one more parent (an interpolation endpoint). Building the merge is merging.py's.
"""

from __future__ import annotations

import difflib
import json
import os
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeqa.core.errors import MergeQAUsageError, did_you_mean
from mergeqa.models.refs import validate_model_dir

# How a method uses `base_model` (from its input contract in mergekit's registry):
BASE = "base"          # the inputs are measured from it (task vectors, an anchor): the base
ENDPOINT = "endpoint"  # one of exactly two models the method interpolates between: a parent
INPUT = "input"        # the method has no base; mergekit merges base_model as one more input: a parent

CONDITION_KEYS = ("filter", "value")


@dataclass
class ParsedConfig:
    """One YAML document of a config file parsed by mergekit's schema, with its YAML node for line
    numbers. A file of several documents (mergekit-multi's `name:`, or the older mergekit-mega's
    `out_path:`) is several merges; `references` maps each model path of this document that names
    another document of the file (normalised) to that document's name."""

    path: Path
    text: str  # the document's own text
    config: Any  # mergekit.config.MergeConfiguration
    root: Any  # the document's yaml node
    index: int = 0  # of the document in the file
    name: str = ""  # the merge's name: its `name:`, its out_path's last part, else the file's stem
    references: dict[str, str] = field(default_factory=dict)

    def where(self, *loc) -> str:
        """'--merge-config FILE: line N' for the deepest YAML node on the path `loc`."""
        return _where(self.path, _line(self.root, loc))

    @property
    def depends(self) -> list[str]:
        """The names of the other documents of the file this one merges (built first)."""
        return sorted(set(self.references.values()))

    def is_reference(self, ref) -> bool:
        """Whether a mergekit ModelReference of this document is another document's merge."""
        return model_key(ref.model.path) in self.references


def model_key(path: str) -> str:
    """A model path as documents name each other: normalised (`./models/x` and `models/x` match)."""
    return os.path.normpath(str(path))


def _where(path: Path, line: int | None) -> str:
    return f"--merge-config {path}: line {line}" if line else f"--merge-config {path}"


def _descend(root, loc) -> list:
    """The YAML nodes met following `loc` (mapping keys and list indices) from `root`, as far as
    the path goes."""
    import yaml

    met, node = [root] if root is not None else [], root
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
        else:
            node = None
        if node is None:
            break
        met.append(node)
    return met


def _line(root, loc) -> int | None:
    """The 1-based line of the deepest node on the path `loc`."""
    met = _descend(root, loc)
    return met[-1].start_mark.line + 1 if met else None


def parse_merge_config(path: Path, substitutions: dict[str, str] | None = None, *, document: int | None = None,
                       built: dict[str, str] | None = None) -> ParsedConfig:
    """One document of a mergekit YAML parsed with mergekit's MergeConfiguration: `document` (an
    index), or the only one. `built` maps the names of other documents of the file to the
    directories they were built in; the document's references to them are replaced by those."""
    documents = parse_merge_documents(path, substitutions, built=built)
    if document is None and len(documents) > 1:
        raise MergeQAUsageError(f"--merge-config {path}: {len(documents)} YAML documents "
                                f"({', '.join(d.name for d in documents)}); name one")
    return documents[document or 0]


def parse_merge_documents(path: Path, substitutions: dict[str, str] | None = None, *,
                          built: dict[str, str] | None = None) -> list[ParsedConfig]:
    """Every document of a mergekit YAML, parsed with mergekit's MergeConfiguration. An unreadable
    file, bad YAML, a schema error, or documents that do not name each other consistently (two of
    one name, a circle, two unnamed) is one usage error."""
    import yaml
    from pydantic import ValidationError

    with warnings.catch_warnings():  # mergekit's own numpy deprecations, shown at pytest_configure
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mergekit\.")
        from mergekit.config import MergeConfiguration
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MergeQAUsageError(f"--merge-config {path}: cannot read ({exc.strerror}); "
                                "pass a mergekit YAML file") from None
    if substitutions:
        text = string.Template(text).safe_substitute(substitutions)
    try:
        nodes = [n for n in yaml.compose_all(text, Loader=yaml.SafeLoader) if n is not None]
        raws = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MergeQAUsageError(f"--merge-config {path}:{where}: invalid YAML ({problem}); "
                                "fix the file (see mergekit's examples/)") from None
    if not raws:
        raws, nodes = [None], [None]
    names = _document_names(path, raws, nodes)
    out = []
    for index, (raw, root) in enumerate(zip(raws, nodes)):
        try:
            config = MergeConfiguration.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise MergeQAUsageError(f"{_where(path, _line(root, first['loc']))}: {loc}: {first['msg']} "
                                    f"({exc.error_count()} error(s)); see mergekit's README for the schema") from None
        except (RuntimeError, ValueError) as exc:  # mergekit's own validators (slices and models together, ...)
            line = _line(root, ()) if len(raws) > 1 else None  # which document
            raise MergeQAUsageError(f"{_where(path, line)}: {str(exc).splitlines()[0]}; see "
                                    "mergekit's README for the schema") from None
        own = text if len(raws) == 1 else text[root.start_mark.index:root.end_mark.index]
        out.append(ParsedConfig(path, own, config, root, index, names[index]))
    _link_documents(path, raws, out)
    if built:
        for doc in out:
            doc.config = _patched(doc.config, {k: built[n] for k, n in doc.references.items() if n in built})
    return out


def _document_names(path: Path, raws: list, nodes: list) -> list[str]:
    """Each document's merge name: `name:` (mergekit-multi), else the last part of `out_path:`
    (mergekit-mega), else the file's stem, for one document at most."""
    if len(raws) == 1:
        return [path.stem]
    names = []
    for raw, root in zip(raws, nodes):
        where = _where(path, _line(root, ()))
        if not isinstance(raw, dict):
            raise MergeQAUsageError(f"{where}: a YAML document that is not a mapping; each document of a "
                                    "multi-document config is one mergekit merge config")
        name = raw.get("name") or (Path(str(raw["out_path"])).name if raw.get("out_path") else None)
        if name is None and None in names:
            raise MergeQAUsageError(f"{where}: a second document without `name:`; give each document of a "
                                    "multi-document config a `name:` (mergekit-multi) so the others can merge it")
        if name is not None and name in names:
            raise MergeQAUsageError(f"{where}: two documents are called {name!r}; give each a name of its own")
        names.append(name)
    return [n if n is not None else path.stem for n in names]


def _link_documents(path: Path, raws: list, docs: list[ParsedConfig]) -> None:
    """Fill each document's `references`: its models that another document builds, named by that
    document's `name:` or `out_path:`, as mergekit-multi and mergekit-mega resolve them. A
    document that merges itself, or a circle of documents, is a usage error."""
    if len(docs) < 2:
        return
    aliases: dict[str, str] = {}
    for raw, doc in zip(raws, docs):
        for alias in (raw.get("name"), raw.get("out_path")):
            if alias:
                aliases[model_key(alias)] = doc.name
    for doc in docs:
        doc.references = {model_key(r.model.path): aliases[model_key(r.model.path)]
                          for r in doc.config.referenced_models() if model_key(r.model.path) in aliases}
    by_name = {d.name: d for d in docs}

    def visit(name: str, chain: tuple) -> None:
        if name in chain:
            cycle = " -> ".join((*chain[chain.index(name):], name))
            raise MergeQAUsageError(f"{by_name[name].where()}: documents merge each other in a circle "
                                    f"({cycle}); a document can merge only documents that do not need it")
        for dep in by_name[name].depends:
            visit(dep, (*chain, name))

    for doc in docs:
        visit(doc.name, ())


def _patched(config, paths: dict[str, str]):
    """`config` with every model whose path is a key of `paths` (model_key) pointing to its value
    instead (as mergekit-multi's patched_config does with its intermediate directory)."""
    from mergekit.common import ModelReference
    from mergekit.config import MergeConfiguration

    def walk(value):
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            if set(value) == {"model", "lora", "override_architecture"}:  # a ModelReference, as a dict
                key = model_key(value["model"]["path"])
                return {**value, "model": {**value["model"], "path": paths[key]}} if key in paths else value
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, str):  # a ModelReference as mergekit dumps it: "path[@revision][+lora]"
            try:
                ref = ModelReference.model_validate(value)
            except ValueError:
                return value
            key = model_key(ref.model.path)
            if key in paths:
                return str(ref.model_copy(update={"model": ref.model.model_copy(update={"path": paths[key]})}))
        return value

    return MergeConfiguration.model_validate(walk(config.model_dump()))


# -- the method, and what it makes of base_model -------------------------------------------------
def merge_method(name: str, where: str = "--merge-config"):
    """mergekit's registered method `name`, or a usage error listing the known ones, closest first."""
    from importlib.metadata import version

    from mergekit import merge_methods

    known = {m.spec.name: m for m in merge_methods.registered_methods()}
    if name in known:
        return known[name]
    closest = sorted(known, key=lambda n: (-_likeness(name, n), n))
    raise MergeQAUsageError(f"{where}: unknown merge_method {name!r} (not in mergekit {version('mergekit')}); "
                            f"known, closest first: {', '.join(closest)}")


def _likeness(typed: str, known: str) -> float:
    """difflib's similarity, plus one when one name contains the other (ranked_ties -> ties)."""
    return difflib.SequenceMatcher(None, typed, known).ratio() + (typed in known or known in typed)


def base_model_role(method) -> str:
    """BASE, ENDPOINT or INPUT: what `method` (a mergekit MergeMethod) makes of base_model.

    From its input contract: a method that requires a base and takes exactly two inputs (slerp,
    nearswap, arcee_fusion) interpolates between base_model and the other model, so both are
    parents; one that ignores the base (linear, karcher, passthrough) merges base_model as one more
    input; every other method (task_arithmetic, ties, dare_*, della*, breadcrumbs*, model_stock,
    sce, ram, and nuslerp or multislerp given a base) takes its inputs relative to base_model.
    """
    from mergekit.merge_methods import BasePolicy

    contract = method.spec.contract
    if contract.base in (BasePolicy.IGNORED, BasePolicy.FORBIDDEN):
        return INPUT
    if contract.base == BasePolicy.REQUIRED and contract.max_inputs == 2:
        return ENDPOINT
    return BASE


@dataclass
class _Group:
    """The inputs mergekit merges together for one output slice (or a whole `models:` list)."""

    loc: tuple  # where in the YAML
    inputs: list  # ModelReferences, in order
    base: Any  # ModelReference or None
    own: list  # each input's own parameters (None for a base_model mergekit appends)
    shared: list  # the parameter blocks above them: the slice's, the module's, the config's


def _groups(config) -> list[_Group]:
    """Each group of inputs, as mergekit's planner forms them (MergePlanner.normalize_config): a
    `models:` list gets base_model appended when it is not among them; a slice has its own
    sources (and maybe its own base_model)."""
    def from_models(loc, models, above):
        refs, own, base = [m.model for m in models], [m.parameters for m in models], config.base_model
        if base is not None and base not in refs:
            refs, own = refs + [base], own + [None]
        return _Group(loc, refs, base, own, above)

    def from_slices(loc, slices, above):
        return [_Group((*loc, i), [s.model for s in sl.sources], sl.base_model or config.base_model,
                       [s.parameters for s in sl.sources], [sl.parameters, *above]) for i, sl in enumerate(slices)]

    top = [config.parameters]
    if config.models:
        return [from_models(("models",), config.models, top)]
    if config.slices:
        return from_slices(("slices",), config.slices, top)
    out = []
    for name, module in (config.modules or {}).items():
        above = [module.parameters, *top]
        if module.models:
            out.append(from_models(("modules", name, "models"), module.models, above))
        else:
            out.extend(from_slices(("modules", name, "slices"), module.slices, above))
    return out


def merge_roles(config) -> tuple[list, list]:
    """(parents, bases) of a MergeConfiguration, as mergekit ModelReferences in order of appearance.

    By `base_model_role`: a base is a base only for a method that takes its inputs relative to
    it; an interpolation endpoint, or base_model under a method without a base, is a parent."""
    role = base_model_role(merge_method(config.merge_method))
    parents, bases = [], []
    for g in _groups(config):
        for ref in g.inputs:
            group = bases if role == BASE and ref == g.base else parents
            if ref not in group:
                group.append(ref)
    return parents, bases


# -- the checks ----------------------------------------------------------------------------------
def check_merge_config(path: Path, substitutions: dict[str, str] | None = None) -> list[str]:
    """Check a mergekit config without loading a model: schema, method, parameters, model
    directories, layer ranges and the method's input contract. Each mistake is a usage error (one
    line: file, line, fix); returns the warnings (mistakes mergekit tolerates, e.g. `pattern:`)."""
    found = []
    for parsed in parse_merge_documents(path, substitutions):
        found += _check_document(parsed)
    return found


def _check_document(parsed: ParsedConfig) -> list[str]:
    config = parsed.config
    method = merge_method(config.merge_method, parsed.where("merge_method"))
    found = _check_top_level(parsed) + _check_parameters(parsed, method)
    _check_models(parsed)
    _check_layer_ranges(parsed)
    for group in _groups(config):
        where = parsed.where(*group.loc)
        try:
            method.validate_inputs(group.inputs, group.base, group_name=".".join(map(str, group.loc)))
        except ValueError as exc:
            raise MergeQAUsageError(f"{where}: merge_method {method.spec.name}: {exc}; "
                                    f"{_contract_text(method)}") from None
        _check_required(where, method, group)
    return found


def _check_required(where: str, method, group: _Group) -> None:
    """A parameter the method requires is set for every input that needs it (mergekit would stop
    with "Missing required parameter" only once the models are loaded)."""
    from mergekit.merge_methods import ParameterScope

    def given(name, blocks):
        return any(b and name in b for b in blocks)

    for p in method.spec.parameters:
        if not p.required or given(p.name, group.shared):
            continue
        if p.scope == ParameterScope.SHARED:
            raise MergeQAUsageError(f"{where}: {method.spec.name} needs parameter {p.name!r} and none is "
                                    f"set; add it under parameters:")
        for ref, own in zip(group.inputs, group.own):
            if p.scope == ParameterScope.NON_BASE and ref == group.base:
                continue
            if not given(p.name, [own]):
                raise MergeQAUsageError(f"{where}: {method.spec.name} needs parameter {p.name!r} for {ref} and "
                                        f"none is set; add it to that model's parameters: (or the top-level "
                                        "parameters:, for all models)")


def _check_top_level(parsed: ParsedConfig) -> list[str]:
    """A top-level key MergeConfiguration does not have is dropped by mergekit: a warning (`name`
    is mergekit-multi's and `out_path` mergekit-mega's, naming a document for the others)."""
    import yaml
    from mergekit.config import MergeConfiguration

    known = [*MergeConfiguration.model_fields, "name", "out_path"]
    if not isinstance(parsed.root, yaml.MappingNode):
        return []
    return [f"{_where(parsed.path, k.start_mark.line + 1)}: top-level key {k.value!r} is not in mergekit's "
            f"schema, so mergekit ignores it.{did_you_mean(str(k.value), known)}"
            for k, _ in parsed.root.value if str(k.value) not in known]


def _contract_text(method) -> str:
    c = method.spec.contract
    count = (f"exactly {c.min_inputs}" if c.max_inputs == c.min_inputs
             else f"at least {c.min_inputs}" + (f" and at most {c.max_inputs}" if c.max_inputs else ""))
    return f"{method.spec.name} merges {count} models, base_model {c.base.value}"


def _parameter_blocks(config):
    """(yaml location, parameters dict, whether shared parameters are read there)."""
    def sources(loc, items):
        return [((*loc, i, "parameters"), it.parameters, False) for i, it in enumerate(items or ())]

    def slices(loc, items):
        out = []
        for i, sl in enumerate(items or ()):
            out.append(((*loc, i, "parameters"), sl.parameters, True))
            out.extend(sources((*loc, i, "sources"), sl.sources))
        return out

    blocks = [(("parameters",), config.parameters, True)]
    blocks += sources(("models",), config.models) + slices(("slices",), config.slices)
    for name, module in (config.modules or {}).items():
        blocks.append((("modules", name, "parameters"), module.parameters, True))
        blocks += sources(("modules", name, "models"), module.models)
        blocks += slices(("modules", name, "slices"), module.slices)
    return [(loc, params, shared) for loc, params, shared in blocks if params]


def _check_parameters(parsed: ParsedConfig, method) -> list[str]:
    """Unknown parameter names and shared parameters set per model are errors (mergekit ignores
    both); `pattern:` in a conditional value, the older spelling of `filter:`, is a warning."""
    from mergekit.merge_methods import ParameterScope

    spec = method.spec
    names = [p.name for p in spec.parameters]
    shared = {p.name for p in spec.parameters if p.scope == ParameterScope.SHARED}
    found = []
    for loc, params, shared_read in _parameter_blocks(parsed.config):
        for key in params:
            where = parsed.where(*loc, key)
            if key not in names:
                raise MergeQAUsageError(f"{where}: parameter {key!r} is not one that {spec.name} reads "
                                        f"(mergekit would ignore it).{did_you_mean(key, names)}")
            if key in shared and not shared_read:
                raise MergeQAUsageError(f"{where}: parameter {key!r} of {spec.name} is one value for all "
                                        "models, so mergekit ignores it here; move it to the top-level "
                                        "parameters: (or a slice's)")
        found += _check_conditions(parsed, loc)
    return found


def _check_conditions(parsed: ParsedConfig, loc) -> list[str]:
    """The entries of conditional values (`- filter: mlp` / `value: ...`) in one parameters block,
    read from the raw YAML: mergekit's schema drops keys it does not know."""
    import yaml

    met = _descend(parsed.root, loc)
    block = met[-1] if len(met) == len(loc) + 1 else None
    if not isinstance(block, yaml.MappingNode):
        return []
    found = []
    for key_node, value in block.value:
        entries = value.value if isinstance(value, yaml.SequenceNode) else [value]
        for entry in entries:
            if not isinstance(entry, yaml.MappingNode):
                continue
            keys = {k.value: v for k, v in entry.value if isinstance(k, yaml.ScalarNode)}
            for k, v in keys.items():
                line = _where(parsed.path, v.start_mark.line + 1)
                if k == "pattern":
                    effect = ("and is ignored; remove it" if "filter" in keys else
                              f"so this entry has no filter and matches every tensor (the entries after it "
                              f"never apply); write `filter: {v.value}`")
                    found.append(f"{line}: parameter {key_node.value!r}: `pattern: {v.value}` is not read "
                                 f"by mergekit (its key is `filter:`), {effect}")
                elif k not in CONDITION_KEYS:
                    raise MergeQAUsageError(f"{line}: parameter {key_node.value!r}: unknown key {k!r} in a "
                                            "conditional value; mergekit reads `filter:` and `value:`."
                                            f"{did_you_mean(k, CONDITION_KEYS)}")
    return found


def _model_locations(config):
    """(yaml location, ModelReference) of every model the config names."""
    out = [(("base_model",), config.base_model)] if config.base_model else []

    def walk(loc, models, slices):
        out.extend(((*loc, "models", i, "model"), m.model) for i, m in enumerate(models or ()))
        for i, sl in enumerate(slices or ()):
            if sl.base_model:
                out.append(((*loc, "slices", i, "base_model"), sl.base_model))
            out.extend(((*loc, "slices", i, "sources", j, "model"), s.model) for j, s in enumerate(sl.sources))

    walk((), config.models, config.slices)
    for name, module in (config.modules or {}).items():
        walk(("modules", name), module.models, module.slices)
    return out


def _check_models(parsed: ParsedConfig) -> None:
    """Each model is a local model directory (mergeqa runs offline); a LoRA is a directory."""
    for loc, ref in _model_locations(parsed.config):
        if parsed.is_reference(ref):  # another document's merge: built before this one
            continue
        validate_model_dir(ref.model.path, f"{parsed.where(*loc)}: model")
        if ref.lora is not None and not Path(ref.lora.path).is_dir():
            raise MergeQAUsageError(f"{parsed.where(*loc)}: LoRA {ref.lora.path}: no such directory; "
                                    "write model+lora with both as local directories")


def num_layers(model_dir: str | Path) -> int | None:
    """num_hidden_layers from a model directory's config.json (or its text_config), if it says."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    for c in (cfg, cfg.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(c.get(key), int):
                return c[key]
    return None


def _check_layer_ranges(parsed: ParsedConfig) -> None:
    """[start, end) with 0 <= start < end <= the model's layers; one length per slice."""
    config = parsed.config
    slice_lists = [(("slices",), config.slices, True)]
    slice_lists += [(("modules", n, "slices"), m.slices, False) for n, m in (config.modules or {}).items()]
    for loc, slices, text_module in slice_lists:
        for i, sl in enumerate(slices or ()):
            for j, src in enumerate(sl.sources):
                start, end = src.layer_range
                where = parsed.where(*loc, i, "sources", j, "layer_range")
                if not 0 <= start < end:
                    raise MergeQAUsageError(f"{where}: layer_range [{start}, {end}] of {src.model} is empty; "
                                            "mergekit reads [start, end) with 0 <= start < end")
                n = num_layers(src.model.model.path) if text_module and not parsed.is_reference(src.model) else None
                if n is not None and end > n:
                    raise MergeQAUsageError(f"{where}: layer_range [{start}, {end}] of {src.model} ends past "
                                            f"its {n} layers (num_hidden_layers in config.json); the end "
                                            f"is exclusive, so at most [{start}, {n}]")
            lengths = [s.layer_range[1] - s.layer_range[0] for s in sl.sources]
            if len(set(lengths)) > 1:
                raise MergeQAUsageError(f"{parsed.where(*loc, i)}: the sources of slice {i} span "
                                        f"{', '.join(map(str, lengths))} layers; mergekit needs the same "
                                        "number from each source")
