"""The package layout's rule: each layer imports only the layers below it (pyproject.toml's
[tool.importlinter] contract), no import circles, and the old flat import paths still answer for
one release, with a DeprecationWarning that names the new path."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_import_contract_is_kept():
    """import-linter's own check of the layers (every import, function-level ones included)."""
    from importlinter import api  # noqa: F401  (import-linter is a dev dependency)

    proc = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config", str(REPO / "pyproject.toml")],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_the_graph_script_finds_no_circle_and_no_upward_import():
    """bench/import_graph.py, the command behind the layout's figures, on the working tree."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "import_graph.py")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "import circles: 0" in proc.stdout and "upward or sideways imports" in proc.stdout
    assert "(top level) 2," in proc.stdout  # mergeqa/__init__.py and mergeqa/_moved.py only


def test_the_graph_script_sees_a_planted_upward_import(tmp_path):
    """The same script is not blind: an upward import (core -> the plugin) and a circle are found."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(REPO / "mergeqa", copy / "mergeqa", ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    (copy / "bench").mkdir()
    shutil.copy(REPO / "bench" / "import_graph.py", copy / "bench" / "import_graph.py")
    state = copy / "mergeqa" / "core" / "state.py"
    state.write_text(state.read_text() + "\n\ndef _up():\n    from mergeqa.pytest_plugin import hooks  # noqa\n")
    proc = subprocess.run([sys.executable, str(copy / "bench" / "import_graph.py")], cwd=copy,
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "mergeqa.core.state -> mergeqa.pytest_plugin.hooks" in proc.stdout
    assert "import circles: 1" in proc.stdout


@pytest.mark.parametrize("old, new, name", [("mergeqa.verdict", "mergeqa.decision.verdict", "Verdict"),
                                            ("mergeqa.engine", "mergeqa.evaluate.engine", "evaluate"),
                                            ("mergeqa.plugin", "mergeqa.pytest_plugin", "pytest_addoption")])
def test_an_old_path_still_imports_with_a_deprecation_warning(old, new, name):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_every_old_path_answers():
    import importlib

    from mergeqa._moved import MOVED

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for old, new in MOVED.items():
            sys.modules.pop(old, None)
            assert importlib.import_module(old).__doc__ == importlib.import_module(new).__doc__, old


def test_the_public_api_is_listed_in_one_place():
    import mergeqa
    from mergeqa.decision.verdict import Verdict, decide
    from mergeqa.models import ModelRef

    assert mergeqa.Verdict is Verdict and mergeqa.decide is decide and mergeqa.ModelRef is ModelRef
    assert set(mergeqa.__all__) >= {"Verdict", "decide", "ModelRef", "MergeQAUsageError", "operators"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mergeqa.nope  # noqa: B018
