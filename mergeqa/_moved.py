"""Old import paths of the modules that moved to the layered layout, kept for one release.

`import mergeqa.engine` still works and gives the module now at `mergeqa.evaluate.engine`, with a
DeprecationWarning that names the new path, until the next minor release. Not for new code: import the new
paths (or the public API of `mergeqa`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: old module path -> where it lives now
MOVED = {
    "mergeqa.agreement": "mergeqa.evaluate.agreement",
    "mergeqa.availability": "mergeqa.evaluate.availability",
    "mergeqa.badmerges": "mergeqa.models.badmerges",
    "mergeqa.cache": "mergeqa.core.cache",
    "mergeqa.cost": "mergeqa.inspect.cost",
    "mergeqa.devices": "mergeqa.models.devices",
    "mergeqa.early_stop": "mergeqa.retention.early_stop",
    "mergeqa.engine": "mergeqa.evaluate.engine",
    "mergeqa.errors": "mergeqa.core.errors",
    "mergeqa.executor": "mergeqa.evaluate.executor",
    "mergeqa.family.table": "mergeqa.report.family_table",
    "mergeqa.generation": "mergeqa.evaluate.generation",
    "mergeqa.html_report": "mergeqa.report.html",
    "mergeqa.init": "mergeqa.cli.init",
    "mergeqa.lint": "mergeqa.inspect.lint",
    "mergeqa.merging": "mergeqa.models.merging",
    "mergeqa.messages": "mergeqa.core.messages",
    "mergeqa.plan": "mergeqa.cli.plan",
    "mergeqa.plugin": "mergeqa.pytest_plugin",
    "mergeqa.provenance": "mergeqa.models.provenance",
    "mergeqa.sandbox": "mergeqa.humaneval.sandbox",
    "mergeqa.sanity": "mergeqa.inspect.sanity",
    "mergeqa.scorer": "mergeqa.evaluate.scorer",
    "mergeqa.session": "mergeqa.models.session",
    "mergeqa.significance": "mergeqa.decision.significance",
    "mergeqa.synthetic_mc": "mergeqa.evaluate.synthetic_mc",
    "mergeqa.threads": "mergeqa.core.threads",
    "mergeqa.thresholds": "mergeqa.decision.thresholds",
    "mergeqa.verdict": "mergeqa.decision.verdict",
}


class _Alias(importlib.abc.Loader):
    """Loads an old path as a thin module that forwards every attribute to the new one."""

    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return None  # the default: an empty module

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(f"{module.__name__} moved to {self.new}; the old path goes in the next minor release",
                      DeprecationWarning, stacklevel=2)
        target = importlib.import_module(self.new)
        module.__doc__ = target.__doc__
        module.__getattr__ = lambda name: getattr(target, name)  # PEP 562
        module.__dir__ = lambda: dir(target)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Answer the old paths (idempotent; called by `import mergeqa`)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())  # before any finder that could see a stale old file
