"""Fixtures for mergeqa's own test suite: the embedded family (the shipped one), and caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """This suite calls mergeqa's library directly, thousands of small steps: the plugin's progress
    lines (mergeqa.pytest_plugin.progress) are for gate runs and would bury the dots here. The
    tests of those lines run pytest in a subprocess, where the plugin installs them as usual."""
    lines = config.pluginmanager.get_plugin("mergeqa-progress")
    if lines is not None:
        lines.uninstall()
        config.pluginmanager.unregister(lines)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The shared mergeqa cache (family, merges, results): $MERGEQA_CACHE_DIR or ~/.cache/mergeqa."""
    from mergeqa.core.cache import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def family(cache_dir):
    """The tiny family that ships with mergeqa (verified; its tasks written into the cache on first
    use, about a second). Nothing trains it: tests of the trainer build a reduced recipe."""
    from mergeqa.models.shipped_family import shipped_family

    return shipped_family(cache_dir)


@pytest.fixture
def private_cache(tmp_path, family) -> Path:
    """A fresh cache that shares only the family's entry with the session cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(family.root, cache / family.root.name)
    return cache
