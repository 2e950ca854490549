"""The tiny family as mergeqa ships it: trained once from the recipe, its weights are package data.

`mergeqa/data/family/weights/{base,arithmetic,lists}/` are model directories, and `manifest.json`
says what made them (the recipe, its digest over the recipe and mergeqa/family's code, torch and
transformers, the build's time) and each file's size and sha256. `shipped_family(cache)` checks the
files against the manifest (once per process and file) and returns a `Family` whose cache entry,
`family-shipped-<key>/`, links to them and holds what a family needs written: its lm-eval tasks
(written from the recipe in about a second), recipe.json, build.json and later its table. Nothing
is written into the package directory, which may be read-only (site-packages).

    family = shipped_family()          # verified; no training, ever
    family.base, family.parents        # symlinks into the package data

`ship(family)` writes the package data from a family trained from the recipe: that is
`mergeqa family --rebuild --ship`. Training itself is mergeqa.family's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from mergeqa.core.cache import build_once, default_cache_dir, digest, log_event
from mergeqa.core.errors import MergeQAUsageError
from mergeqa.core.state import PACKAGE_DIR

WEIGHTS_DIR = PACKAGE_DIR / "data" / "family" / "weights"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
#: The command that trains the family from the recipe and writes it into the package data.
RESHIP = "mergeqa family --rebuild --ship"
FIX = f"reinstall mergeqa, or re-ship the family from its recipe in a source checkout: {RESHIP}"

_verified: dict[str, tuple[int, int, str]] = {}  # file -> (size, mtime_ns, sha256) checked in this process


def recipe_digest(recipe_path: Path | None = None) -> str:
    """What shipped weights must have been trained from: the recipe and mergeqa/family's source (the
    trained family's cache key, less the torch and transformers versions)."""
    from mergeqa.family.build import _source_digest, load_recipe

    return digest(load_recipe(recipe_path), _source_digest())


def read_manifest(weights_dir: Path | None = None) -> dict:
    """The manifest of the shipped family (`weights_dir`: the package's, unless given)."""
    path = Path(weights_dir or WEIGHTS_DIR) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise MergeQAUsageError(f"{path}: the shipped family's manifest is missing; {FIX}") from None
    except ValueError as exc:
        raise MergeQAUsageError(f"{path}: not a readable manifest ({exc}); {FIX}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise MergeQAUsageError(f"{path}: not a version {MANIFEST_VERSION} manifest of the shipped family; {FIX}")
    return manifest


def stale_reason(weights_dir: Path | None = None, recipe_path: Path | None = None) -> str | None:
    """None when the shipped weights were trained from this recipe and this mergeqa/family code;
    else why not, and the command that re-ships them."""
    from mergeqa.family import default_recipe_path

    manifest = Path(weights_dir or WEIGHTS_DIR) / MANIFEST
    shipped, current = read_manifest(weights_dir)["recipe_digest"], recipe_digest(recipe_path)
    if shipped == current:
        return None
    return (f"the shipped family (recipe digest {shipped[:16]}, {manifest}) was not trained "
            f"from the current recipe and code (digest {current[:16]}: {recipe_path or default_recipe_path()} "
            f"or mergeqa/family/*.py changed since). Re-ship it: `{RESHIP}` (trains it, about 4 minutes on "
            "2 CPU cores, and writes the weights and manifest), then commit mergeqa/data/family/weights/")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify(weights_dir: Path | None = None) -> dict:
    """The manifest, once every file it lists is there with its size and sha256. A file is hashed
    once per process (again only if its size or mtime changes); a missing or changed file is one
    usage error naming it and the fix."""
    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    manifest = read_manifest(weights_dir)
    for rel, expected in sorted(manifest["files"].items()):
        path = weights_dir / rel
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise MergeQAUsageError(f"{path}: missing from the shipped family (listed in its {MANIFEST}); "
                                    f"{FIX}") from None
        stamp = (stat.st_size, stat.st_mtime_ns, expected["sha256"])
        if _verified.get(str(path)) == stamp:
            continue
        actual = _sha256(path) if stat.st_size == expected["size"] else None
        if actual != expected["sha256"]:
            found = f"sha256 {actual[:12]}" if actual else f"{stat.st_size} bytes"
            wanted = f"sha256 {expected['sha256'][:12]}" if actual else f"{expected['size']}"
            raise MergeQAUsageError(f"{path}: does not match the shipped family's {MANIFEST} ({found}, expected "
                                    f"{wanted}); {FIX}")
        _verified[str(path)] = stamp
    return manifest


def _entry(cache_dir: Path, manifest: dict, weights_dir: Path) -> Path:
    """The cache entry of these weights, at this place, with the tasks this mergeqa writes."""
    from mergeqa.family.build import _source_digest

    key = digest(manifest["files"], manifest["recipe_digest"], str(Path(weights_dir).resolve()), _source_digest())
    return Path(cache_dir) / f"family-shipped-{key[:16]}"


def shipped_family(cache_dir: Path | str | None = None, weights_dir: Path | None = None):
    """The shipped family, verified; its cache entry is written first if absent (about a second:
    the links and the tasks)."""
    from mergeqa.family import Family

    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    manifest = verify(weights_dir)
    cache_dir = Path(cache_dir or default_cache_dir())
    target = _entry(cache_dir, manifest, weights_dir)
    build_once(target, lambda tmp: _write_entry(tmp, manifest, weights_dir),
               on_build=lambda: log_event(cache_dir, "family_shipped_entry", path=str(target)))
    return Family(target)


def cached_shipped_family(cache_dir: Path | str | None = None, weights_dir: Path | None = None):
    """The shipped family if the cache holds its entry already, else None: writes nothing (dry runs)."""
    from mergeqa.family import Family

    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    target = _entry(Path(cache_dir or default_cache_dir()), read_manifest(weights_dir), weights_dir)
    return Family(target) if (target / "recipe.json").is_file() else None


def _write_entry(out: Path, manifest: dict, weights_dir: Path) -> None:
    from mergeqa.family import write_family_tasks

    for name in manifest["models"]:
        (out / name).symlink_to(weights_dir.resolve() / name, target_is_directory=True)
    write_family_tasks(out / "tasks", manifest["recipe"])
    (out / "recipe.json").write_text(json.dumps(manifest["recipe"], indent=2))
    build = {**manifest["build"], "shipped": str(weights_dir.resolve()), "trained_as": manifest["family_key"]}
    (out / "build.json").write_text(json.dumps(build, indent=2))


def ship(family, weights_dir: Path | None = None) -> dict:
    """Write `family` (trained from the current recipe by mergeqa.family.build_family) into
    `weights_dir` as package data: its model directories and a manifest. The new directory
    replaces the old one with a rename, so a failed ship leaves the old weights. Returns the manifest."""
    import torch
    import transformers

    from mergeqa.family import load_recipe

    if family.recipe != load_recipe():
        raise MergeQAUsageError(f"{family.root}: not trained from the current recipe; ship a family that "
                                f"`mergeqa family --rebuild` built")
    weights_dir = Path(weights_dir or WEIGHTS_DIR)
    weights_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{weights_dir.name}.", dir=weights_dir.parent))
    try:
        files = {}
        models = ["base", *family.parents]
        for name in models:
            (tmp / name).mkdir()
            for src in sorted(p for p in (family.root / name).iterdir() if p.is_file()):
                shutil.copyfile(src, tmp / name / src.name)
                os.chmod(tmp / name / src.name, 0o644)
                files[f"{name}/{src.name}"] = {"size": src.stat().st_size, "sha256": _sha256(src)}
        manifest = {"version": MANIFEST_VERSION, "recipe_digest": recipe_digest(), "family_key": family.root.name,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "build": family.build_info, "models": models, "recipe": family.recipe, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o755)
        old = weights_dir.with_name(f".{weights_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if weights_dir.exists():
            os.replace(weights_dir, old)
        os.replace(tmp, weights_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _verified.clear()
    return manifest
