"""Per-run state of the gate: which models are under test, where the references are, and where
everything is cached. Built from the command line once per process and kept in `config.stash`.

Merges are built and the embedded family's cache entry is written lazily, on first use, so
`pytest --collect-only` and `pytest --help` never merge anything; test ids are known up front from
names alone. The family is the one that ships with mergeqa (mergeqa.models.shipped_family): no run
trains it, and a gate run checks its files against their manifest at configure time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.core.state import PACKAGE_DIR
from mergeqa.models.refs import ModelRef, validate_model_dir

FIXTURES_DIR = PACKAGE_DIR.parent / "fixtures"  # the repository's own (tests)
DEFAULT_MERGES_DIR = PACKAGE_DIR / "data" / "family" / "merges"  # package data


@dataclass(frozen=True)
class MergeDoc:
    """One merge a config file describes: the file, its document (index), the merge's name there
    and the names of the file's other documents it merges (mergekit-multi / mergekit-mega)."""

    path: Path
    index: int
    name: str
    depends: tuple[str, ...] = ()
    references: tuple[tuple[str, str], ...] = ()  # (model_key, document name) of the models it takes from them


@dataclass
class GateSession:
    """What to test and against what. `merged_names` is fixed at configure time (test ids)."""

    cache_dir: Path
    device: str = "auto"
    dtype: str = "float32"
    merge_seed: int = 0
    model_paths: list[Path] = field(default_factory=list)
    merge_configs: list[Path] = field(default_factory=list)
    parent_paths: list[Path] | None = None
    base_path: Path | None = None
    embedded: bool = False
    merge_config_warnings: list[str] = field(default_factory=list)  # for the plugin to issue
    merge_docs: list[MergeDoc] = field(default_factory=list)  # every merge of merge_configs, in order
    _merged: dict[str, ModelRef] = field(default_factory=dict)
    _refs: dict[object, object] = field(default_factory=dict)

    def __post_init__(self):
        if not self.merge_docs:  # one merge per file (the embedded default's; a session built by hand)
            self.merge_docs = [MergeDoc(Path(c), 0, Path(c).stem) for c in self.merge_configs]

    @classmethod
    def from_options(cls, *, models, parents, base, merge_configs, cache_dir, device, dtype, seed):
        models = [validate_model_dir(p, "--model") for p in models or ()]
        parent_paths = [validate_model_dir(p, "--parents") for p in parents] if parents else None
        base_path = validate_model_dir(base, "--base") if base else None
        configs = [Path(c) for c in merge_configs or ()]
        for c in configs:
            if not c.is_file():
                raise MergeQAUsageError(f"--merge-config {c}: no such file; pass a mergekit YAML file")
        from mergeqa.models.merge_config import check_merge_config, parse_merge_documents

        # every config checked before any model is loaded: a bad one stops the run here
        warnings = [w for c in configs for w in check_merge_config(c)]
        docs = [MergeDoc(c, d.index, d.name, tuple(d.depends), tuple(sorted(d.references.items())))
                for c in configs for d in parse_merge_documents(c)]
        embedded = not models and not configs
        if embedded:
            configs, docs = sorted(DEFAULT_MERGES_DIR.glob("*.yaml")), []
        return cls(cache_dir=Path(cache_dir), device=device, dtype=dtype, merge_seed=seed,
                   model_paths=models, merge_configs=configs, parent_paths=parent_paths,
                   base_path=base_path, embedded=embedded, merge_config_warnings=warnings, merge_docs=docs)

    # -- names (no building) -------------------------------------------------------------------
    @property
    def merged_names(self) -> list[str]:
        return list(self._units())

    def _units(self) -> dict[str, Path | MergeDoc]:
        """{name under test: a --model directory or a MergeDoc}, in order; two of one name become
        name and name-2 (two dirs called "merged", two files with a document of one name)."""
        if "units" not in self._refs:
            seen: dict[str, int] = {}
            units: dict[str, Path | MergeDoc] = {}
            for name, unit in [(p.name, p) for p in self.model_paths] + [(d.name, d) for d in self.merge_docs]:
                seen[name] = seen.get(name, 0) + 1
                units[name if seen[name] == 1 else f"{name}-{seen[name]}"] = unit
            self._refs["units"] = units
        return self._refs["units"]

    def _doc_unit(self, doc: MergeDoc, other: str) -> str:
        """The name under test of the document called `other` in `doc`'s file."""
        return next(n for n, u in self._units().items()
                    if isinstance(u, MergeDoc) and u.path == doc.path and u.name == other)

    # -- references ----------------------------------------------------------------------------
    def _from_configs(self) -> bool:
        """Parents and base come from the merge configs (not --parents, not the family)."""
        return bool(self.merge_docs) and not self.embedded

    def _docs_for(self, name: str | None) -> list[MergeDoc]:
        """The config documents whose roles give merge `name` its parents and base: its own, or,
        for a --model merge (or the run as a whole, name None), every document of the run."""
        unit = self._units().get(name) if name is not None else None
        return [unit] if isinstance(unit, MergeDoc) else list(self.merge_docs)

    def parent_names(self, name: str | None = None) -> list[str]:
        """The parents' names (directory names; another document's merge by its name) of merge
        `name`, or of the whole run, without building anything."""
        if self.parent_paths is not None:
            return [p.name for p in self.parent_paths]
        if self._from_configs():
            out: list[str] = []
            for doc, ref in self._roles(name, 0):
                other = dict(doc.references).get(_key(ref.model.path))
                n = self._doc_unit(doc, other) if other else Path(ref.model.path).name
                out += [n] if n not in out else []
            return out
        from mergeqa.family import load_recipe

        return list(load_recipe()["parents"])

    def family(self):
        """The shipped family (verified against its manifest; its cache entry written on first use)."""
        if "family" not in self._refs:
            from mergeqa.models.shipped_family import shipped_family

            self._refs["family"] = shipped_family(self.cache_dir)
        return self._refs["family"]

    def use_family(self, family) -> None:
        """The embedded default on `family` instead of the shipped one (`mergeqa family --rebuild`
        tables a family trained from the recipe this way)."""
        self._refs["family"] = family

    def built_family(self):
        """The shipped family if the cache already holds its entry, else None: writes nothing (for
        dry runs)."""
        from mergeqa.models.shipped_family import cached_shipped_family

        return cached_shipped_family(self.cache_dir)

    def _substitutions(self) -> dict[str, str]:
        if not self.embedded:
            return {}
        fam = self.family()
        return {"base": str(fam.base), **{k: str(v) for k, v in fam.parents.items()}}

    def parents(self, name: str | None = None, *, build: bool = True) -> list[ModelRef]:
        """The parents of merge `name` (of every merge of the run, for None): --parents; else the
        models its --merge-config document merges, less its base (see merge_config.merge_roles: a
        slerp's base_model is a parent; another document's merge is a parent, built first); for a
        --model merge beside configs, those of every config; else the embedded family's parents
        (also when only --model is given: documented default). With build=False another
        document's merge that is a parent is left out instead of built (dry runs)."""
        key = ("parents", name if self._from_configs() and self.parent_paths is None else None, build)
        if key not in self._refs:
            if self.parent_paths is not None:
                refs = [self._ref(p, "parent") for p in self.parent_paths]
            elif self._from_configs():
                refs = []
                for doc, ref in self._roles(name, 0):
                    if not build and _key(ref.model.path) in dict(doc.references):
                        continue
                    r = self._resolve(doc, ref, "parent")
                    refs += [r] if r not in refs else []
            else:
                refs = [self._ref(p, "parent") for p in self.family().parents.values()]
            self._refs[key] = refs
        return self._refs[key]

    def base(self, name: str | None = None) -> ModelRef | None:
        """--base; else the base of merge `name`'s config document (a task-vector method's
        base_model, see merge_config.merge_roles; none for slerp), or for None or a --model merge
        the one base all configs share (none if they differ); else the family's base, unless the
        user named their own parents (then there is no base to compare with)."""
        key = ("base", name if self._from_configs() and self.base_path is None else None)
        if key not in self._refs:
            ref = None
            if self.base_path is not None:
                ref = self._ref(self.base_path, "base")
            elif self._from_configs():
                bases = {self._identity(doc, b): (doc, b) for doc, b in self._roles(name, 1)}
                ref = self._resolve(*next(iter(bases.values())), "base") if len(bases) == 1 else None
            elif self.parent_paths is None:
                ref = self._ref(self.family().base, "base")
            self._refs[key] = ref
        return self._refs[key]

    def _roles(self, name: str | None, which: int) -> list[tuple]:
        """(document, mergekit ModelReference) of the parents (which=0) or bases (1) of `name`'s
        config documents (merge_config.merge_roles), documents' names of each other unresolved."""
        from mergeqa.models.merge_config import merge_roles, parse_merge_config

        out = []
        for doc in self._docs_for(name):
            config = parse_merge_config(doc.path, self._substitutions(), document=doc.index).config
            out += [(doc, ref) for ref in merge_roles(config)[which]]
        return out

    def _identity(self, doc: MergeDoc, ref) -> object:
        """What a document's model is, across documents: a directory, or a document's merge."""
        other = dict(doc.references).get(_key(ref.model.path))
        return (doc.path, other) if other else str(Path(ref.model.path).resolve())

    def _resolve(self, doc: MergeDoc, ref, role: str) -> ModelRef:
        """The ModelRef of a model a document merges: another document's merge (built now), or a
        directory (one ModelRef per directory, shared by every merge that names it)."""
        other = dict(doc.references).get(_key(ref.model.path))
        if other is not None:
            return self.merged(self._doc_unit(doc, other))
        return self._ref(validate_model_dir(ref.model.path, "--merge-config model"), role)

    def _ref(self, path: Path, role: str) -> ModelRef:
        key = ("ref", Path(path).resolve(), role)
        if key not in self._refs:
            self._refs[key] = ModelRef(Path(path).name, Path(path), role)
        return self._refs[key]

    # -- models under test ---------------------------------------------------------------------
    def merged(self, name: str) -> ModelRef:
        """The merged model `name`, built with mergekit first if it comes from a config (and the
        documents of its file that it merges before it)."""
        if name not in self._merged:
            unit = self._units()[name]
            if isinstance(unit, Path):
                self._merged[name] = ModelRef(name, unit, "merged")
            else:
                from mergeqa.models.merging import build_merge
                from mergeqa.models.refs import resolve_device

                path = build_merge(unit.path, self.cache_dir, substitutions=self._substitutions(),
                                   cuda=resolve_device(self.device) == "cuda", seed=self.merge_seed,
                                   document=unit.index, built=self.built_documents(unit))
                self._merged[name] = ModelRef(name, path, "merged", merge_config=unit.path)
        return self._merged[name]

    def built_documents(self, doc: MergeDoc) -> dict[str, str]:
        """{document name: merged directory} of the documents `doc` merges, built now if needed."""
        return {dep: str(self.merged(self._doc_unit(doc, dep)).path) for dep in doc.depends}

    def all_merged(self) -> list[ModelRef]:
        return [self.merged(n) for n in self.merged_names]

    def resolved_refs(self) -> list[ModelRef]:
        """The models this process has already resolved (built or named); builds nothing."""
        refs = list(self._merged.values())
        for key, value in self._refs.items():
            if isinstance(key, tuple) and key[0] == "ref" and value not in refs:
                refs.append(value)
        return refs


def _key(path) -> str:
    from mergeqa.models.merge_config import model_key

    return model_key(path)


def cached_family(cache_dir: Path, recipe_path: Path | None = None):
    """The family trained from this recipe if `cache_dir` already holds it, else None: never builds."""
    import torch
    import transformers

    from mergeqa.core.cache import digest
    from mergeqa.family.build import Family, _source_digest, load_recipe

    # build_family's key, read without building (kept here: an edit under mergeqa/family/
    # changes the family's own cache key and costs every cache a rebuild)
    key = digest(load_recipe(recipe_path), _source_digest(), torch.__version__.split("+")[0], transformers.__version__)
    root = Path(cache_dir) / f"family-{key[:16]}"
    return Family(root) if (root / "recipe.json").is_file() else None


def build_family_reporting(cache_dir: Path | None = None, recipe_path: Path | None = None):
    """build_family (training from the recipe: `mergeqa family --rebuild`, never a run), its
    progress told as it goes (mergeqa.core.progress): a line when the build begins, one per
    training stage with its count and the time so far, one when it is done. A family the cache
    holds already is returned without a line."""
    from mergeqa.core import progress
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.family import build_family, load_recipe

    cache_dir = Path(cache_dir or default_cache_dir())
    if cached_family(cache_dir, recipe_path) is not None:
        return build_family(cache_dir, recipe_path)
    parents = list(load_recipe(recipe_path)["parents"])
    cost = "; about 4 minutes on 2 CPU cores" if recipe_path is None else ""
    progress.say(f"family: not in {cache_dir} yet: training it from the recipe (the base, then "
                 f"{' and '.join(parents)}{cost})")
    stages = progress.Stages("family", 1 + len(parents))
    family = build_family(cache_dir, recipe_path, log=stages)
    if stages.stage:  # trained here, not by another process this one waited for
        stages.done(f"built {family.root}")
    return family
