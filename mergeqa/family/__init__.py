"""The embedded default: a tiny Llama family (base + arithmetic and lists parents) and its recipe.

`build_family()` trains it deterministically on CPU from the recipe in `mergeqa/data/family/family.toml`
and caches it by a hash of the recipe and of this package's source; see `build.py`. The weights it
gave ship with mergeqa (`mergeqa/data/family/weights/`), so a run never trains: see
`mergeqa.models.shipped_family`.
"""

from .build import Family, build_family, default_recipe_path, load_recipe, write_family_tasks

__all__ = ["Family", "build_family", "default_recipe_path", "load_recipe", "write_family_tasks"]
