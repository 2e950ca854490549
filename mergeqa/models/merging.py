"""Builds merges with mergekit, the same way `mergekit-yaml` does, and caches them by content.

The cache key is a hash of the parsed merge configuration, of every input model's content and of
the options that change the result (seed, mergekit version), so a merge is built once per cache.
"""

from __future__ import annotations

import time
from pathlib import Path

from mergeqa.core import progress
from mergeqa.core.cache import build_once, digest, log_event
from mergeqa.models.refs import content_hash, validate_model_dir


def read_merge_config(path: Path, substitutions: dict[str, str] | None = None, *, document: int | None = None,
                      built: dict[str, str] | None = None):
    """(MergeConfiguration, text) of one document of a mergekit YAML (`document`, an index, or the
    only one), other documents' merges it uses replaced by `built` ({name: directory}); bad YAML
    or schema is one usage error (merge_config.check_merge_config checks the rest)."""
    parsed = _parse(path, substitutions, document, built)
    return parsed.config, _source(parsed)


def _source(parsed) -> str:
    """The YAML mergekit records in the merge's model card: the document as written, or as
    mergekit-multi would run it once it names another document's merge (that merge's directory)."""
    return parsed.config.to_yaml() if parsed.references else parsed.text


def _parse(path, substitutions, document, built):
    from mergeqa.models.merge_config import parse_merge_config

    return parse_merge_config(path, substitutions, document=document, built=built)


def input_models(config) -> list[Path]:
    """Every model directory a merge configuration reads, validated."""
    refs = {str(m) for m in config.referenced_models()}
    return [validate_model_dir(r, "--merge-config model") for r in sorted(refs)]


def merge_target(config_path: Path, cache_dir: Path, *, substitutions: dict[str, str] | None = None,
                 seed: int = 0, document: int | None = None, built: dict[str, str] | None = None) -> Path:
    """Where the merge of this config (document) lives in the cache, built or not (nothing is
    built). The documents it merges must be built already (`built`)."""
    from importlib.metadata import version

    parsed = _parse(config_path, substitutions, document, built)
    inputs = {str(p): content_hash(p) for p in input_models(parsed.config)}
    key = digest(parsed.config.model_dump(mode="json"), inputs, seed, version("mergekit"))
    return Path(cache_dir) / "merges" / f"{parsed.name}-{key[:16]}"


def build_merge(config_path: Path, cache_dir: Path, *, substitutions: dict[str, str] | None = None,
                cuda: bool = False, seed: int = 0, document: int | None = None,
                built: dict[str, str] | None = None) -> Path:
    """The merged model directory for this config (one document of it, the documents it merges
    already built: `built`), built with mergekit's run_merge if not cached."""
    parsed = _parse(config_path, substitutions, document, built)
    config = parsed.config
    source = _source(parsed)
    target = merge_target(config_path, cache_dir, substitutions=substitutions, seed=seed, document=document,
                          built=built)
    name = parsed.name
    started = time.perf_counter()
    def build(tmp: Path) -> None:
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        progress.say(f"merge {name}: building with mergekit ({config.merge_method}, "
                     f"{len(input_models(config))} models, {'cuda' if cuda else 'cpu'})...")
        options = MergeOptions(cuda=cuda, random_seed=seed, copy_tokenizer=True, lazy_unpickle=False,
                               write_model_card=True, quiet=True)
        options.apply_global_options()
        run_merge(config, str(tmp), options=options, config_source=source)

    def built() -> None:
        seconds = time.perf_counter() - started
        log_event(cache_dir, "merge_built", config=str(config_path), path=str(target), seconds=round(seconds, 2))
        progress.say(f"merge {name} built in {progress.duration(seconds)}")

    return build_once(target, build, on_build=built)
