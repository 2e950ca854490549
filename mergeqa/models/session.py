"""Per-run state of the gate: which models are under test, where the references are, and where
everything is cached. Built from the command line once per process and kept in `config.stash`.

Merges and the embedded family are built lazily, on first use, so `pytest --collect-only` and
`pytest --help` never train or merge anything; test ids are known up front from names alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.core.state import PACKAGE_DIR
from mergeqa.models.refs import ModelRef, validate_model_dir

FIXTURES_DIR = PACKAGE_DIR.parent / "fixtures"  # the repository's own (tests)
DEFAULT_MERGES_DIR = PACKAGE_DIR / "data" / "family" / "merges"  # package data


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
    _merged: dict[str, ModelRef] = field(default_factory=dict)
    _refs: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_options(cls, *, models, parents, base, merge_configs, cache_dir, device, dtype, seed):
        models = [validate_model_dir(p, "--model") for p in models or ()]
        parent_paths = [validate_model_dir(p, "--parents") for p in parents] if parents else None
        base_path = validate_model_dir(base, "--base") if base else None
        configs = [Path(c) for c in merge_configs or ()]
        for c in configs:
            if not c.is_file():
                raise MergeQAUsageError(f"--merge-config {c}: no such file; pass a mergekit YAML file")
        from mergeqa.models.merge_config import check_merge_config

        # every config checked before any model is loaded: a bad one stops the run here
        warnings = [w for c in configs for w in check_merge_config(c)]
        embedded = not models and not configs
        if embedded:
            configs = sorted(DEFAULT_MERGES_DIR.glob("*.yaml"))
        return cls(cache_dir=Path(cache_dir), device=device, dtype=dtype, merge_seed=seed,
                   model_paths=models, merge_configs=configs, parent_paths=parent_paths,
                   base_path=base_path, embedded=embedded, merge_config_warnings=warnings)

    # -- names (no building) -------------------------------------------------------------------
    @property
    def merged_names(self) -> list[str]:
        names = [p.name for p in self.model_paths] + [c.stem for c in self.merge_configs]
        seen: dict[str, int] = {}
        unique = []
        for n in names:  # two dirs called "merged" become merged and merged-2
            seen[n] = seen.get(n, 0) + 1
            unique.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
        return unique

    # -- references ----------------------------------------------------------------------------
    def parent_names(self) -> list[str]:
        """The parents' names (directory names), without building anything."""
        if self.parent_paths is not None:
            return [p.name for p in self.parent_paths]
        if self.merge_configs and not self.embedded:
            return [p.name for p in self._parents_from_configs()]
        from mergeqa.family import load_recipe

        return list(load_recipe()["parents"])

    def family(self):
        if "family" not in self._refs:
            self._refs["family"] = build_family_reporting(self.cache_dir)
        return self._refs["family"]

    def built_family(self):
        """The family if the cache already holds it, else None: never builds (for dry runs)."""
        return cached_family(self.cache_dir)

    def _substitutions(self) -> dict[str, str]:
        if not self.embedded:
            return {}
        fam = self.family()
        return {"base": str(fam.base), **{k: str(v) for k, v in fam.parents.items()}}

    def parents(self) -> list[ModelRef]:
        """--parents; else the models the --merge-configs merge, less their bases (see
        merge_config.merge_roles: a slerp's base_model is a parent); else
        the embedded family's parents (also when only --model is given: documented default)."""
        if "parents" not in self._refs:
            if self.parent_paths is not None:
                paths = self.parent_paths
            elif self.merge_configs and not self.embedded:
                paths = self._parents_from_configs()
            else:
                paths = list(self.family().parents.values())
            self._refs["parents"] = [ModelRef(p.name, p, "parent") for p in paths]
        return self._refs["parents"]

    def base(self) -> ModelRef | None:
        """--base; else the configs' one base (a task-vector method's base_model, see
        merge_config.merge_roles; none for slerp); else the family's base, unless the user
        named their own parents (then there is no base to compare with)."""
        if "base" not in self._refs:
            path = self.base_path
            if path is None and self.merge_configs and not self.embedded:
                path = self._config_base()
            elif path is None and self.parent_paths is None:
                path = self.family().base
            self._refs["base"] = ModelRef(path.name, path, "base") if path else None
        return self._refs["base"]

    def _read_configs(self):
        from mergeqa.models.merging import read_merge_config

        return [read_merge_config(c, self._substitutions())[0] for c in self.merge_configs]

    def _parents_from_configs(self) -> list[Path]:
        from mergeqa.models.merge_config import merge_roles

        out: list[Path] = []
        for cfg in self._read_configs():
            for ref in merge_roles(cfg)[0]:
                p = validate_model_dir(ref.model.path, "--merge-config model")
                if p not in out:
                    out.append(p)
        return out

    def _config_base(self) -> Path | None:
        from mergeqa.models.merge_config import merge_roles

        bases = {str(b.model.path) for c in self._read_configs() for b in merge_roles(c)[1]}
        return validate_model_dir(sorted(bases)[0], "--merge-config base_model") if len(bases) == 1 else None

    # -- models under test ---------------------------------------------------------------------
    def merged(self, name: str) -> ModelRef:
        """The merged model `name`, built with mergekit first if it comes from a config."""
        if name not in self._merged:
            index = self.merged_names.index(name)
            if index < len(self.model_paths):
                self._merged[name] = ModelRef(name, self.model_paths[index], "merged")
            else:
                from mergeqa.models.merging import build_merge
                from mergeqa.models.refs import resolve_device

                config = self.merge_configs[index - len(self.model_paths)]
                path = build_merge(config, self.cache_dir, substitutions=self._substitutions(),
                                   cuda=resolve_device(self.device) == "cuda", seed=self.merge_seed)
                self._merged[name] = ModelRef(name, path, "merged", merge_config=config)
        return self._merged[name]

    def all_merged(self) -> list[ModelRef]:
        return [self.merged(n) for n in self.merged_names]

    def resolved_refs(self) -> list[ModelRef]:
        """The models this process has already resolved (built or named); builds nothing."""
        refs = list(self._merged.values()) + list(self._refs.get("parents", []))
        return refs + [r for r in [self._refs.get("base")] if r is not None]


def cached_family(cache_dir: Path, recipe_path: Path | None = None):
    """The family of this recipe if `cache_dir` already holds it, else None: never builds."""
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
    """build_family, its progress told as it goes (mergeqa.core.progress): a line when the build
    begins, one per training stage with its count and the time so far, one when it is done.
    A family the cache holds already is returned without a line."""
    from mergeqa.core import progress
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.family import build_family, load_recipe

    cache_dir = Path(cache_dir or default_cache_dir())
    if cached_family(cache_dir, recipe_path) is not None:
        return build_family(cache_dir, recipe_path)
    parents = list(load_recipe(recipe_path)["parents"])
    cost = "; about 4 minutes on 2 CPU cores" if recipe_path is None else ""
    progress.say(f"family: not in {cache_dir} yet: building it once (training the base, then "
                 f"{' and '.join(parents)}{cost})")
    stages = progress.Stages("family", 1 + len(parents))
    family = build_family(cache_dir, recipe_path, log=stages)
    if stages.stage:  # trained here, not by another process this one waited for
        stages.done(f"built {family.root}")
    return family
