"""The embedded default: a tiny Llama family (base + arithmetic and lists parents) built offline.

`build_family()` trains it deterministically on CPU from the recipe in `mergeqa/data/family/family.toml`
and caches it by a hash of the recipe and of this package's source; see `build.py`.
"""

from .build import Family, build_family, default_recipe_path, load_recipe

__all__ = ["Family", "build_family", "default_recipe_path", "load_recipe"]
