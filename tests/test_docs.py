"""The README and the docs site: the site builds with warnings as errors, the README stays a
front page, the thresholds reference is what the schema generates, and every code block of every
page is executed or checked by the rule of its language:

- python: compiled, and every `mergeqa` name it imports exists at that path with no deprecation
  (blocks that are whole examples are also run: tests/test_plugin.py runs the guide's check,
  tests/test_operator_kit.py the operator kit's);
- bash: every `pytest`, `mergeqa` and `pip install` line uses only options and extras that exist,
  and every repository script it runs is there;
- toml: parsed, and validated as a thresholds file; yaml: parsed, and a mergekit config validated
  by mergekit's own MergeConfiguration; json/jsonl: parsed;
- text: a transcript of a command's output, shown as printed (not re-run here: the README's gate
  lines come from a run of about six minutes).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LANGUAGES = ("python", "bash", "toml", "yaml", "json", "jsonl", "text")
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.S | re.M)


def code_blocks():
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            line = text[:m.start()].count("\n") + 1
            yield pytest.param(m.group(1), m.group(2), id=f"{page.relative_to(REPO)}:{line}")


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "thresholds" / "index.html").is_file()


def test_the_readme_is_a_front_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 10 * 1024, f"README.md is {len(readme.encode())} bytes: move reference to docs/"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / link).is_file(), f"README links to {link}, which does not exist"


def test_the_thresholds_reference_is_generated_from_the_schema():
    from mergeqa.decision.thresholds_reference import missing_help, reference_markdown

    assert missing_help() == [], "give these keys a line in mergeqa/decision/thresholds_reference.py HELP"
    page = (REPO / "docs" / "reference" / "thresholds.md").read_text()
    assert page == reference_markdown(), ("docs/reference/thresholds.md is stale: run "
                                          ".venv/bin/python -m mergeqa.decision.thresholds_reference "
                                          "> docs/reference/thresholds.md")


def test_a_stale_reference_would_be_seen(monkeypatch):
    """The comparison above is not vacuous: a new key without help is reported."""
    from mergeqa.decision import thresholds, thresholds_reference

    monkeypatch.setitem(thresholds.DEFAULTS, "lint", {**thresholds.DEFAULTS["lint"], "new_key": 1})
    assert thresholds_reference.missing_help() == ["[lint] new_key"]


@functools.lru_cache(maxsize=None)
def _options(*command: str) -> frozenset[str]:
    """The long options a command's --help lists."""
    proc = subprocess.run([*command, "--help"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", proc.stdout))


def _pytest_options() -> frozenset[str]:
    return _options(sys.executable, "-m", "pytest", "-p", "no:cacheprovider")


def _check_command(words: list[str]) -> list[str]:
    """The problems of one command line: unknown options, missing extras or scripts."""
    while words and re.match(r"^\w+=", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return []
    program = Path(words[0]).name
    problems = []
    if program in ("pytest",) or words[:3] == [words[0], "-m", "pytest"] and program.startswith("python"):
        known = _pytest_options()
        problems += [w for w in words if w.startswith("--") and w.split("=")[0] not in known]
    elif program == "mergeqa" and len(words) > 1:
        known = _options(str(Path(sys.executable).with_name("mergeqa")), words[1])
        if words[1] == "gate":  # the rest goes to pytest
            known |= _pytest_options()
        problems += [w for w in words[2:] if w.startswith("--") and w.split("=")[0] not in known]
    elif program.startswith("python") and len(words) > 1 and words[1].endswith(".py"):
        problems += [] if (REPO / words[1]).is_file() else [f"no script {words[1]}"]
    elif program == "bash" and len(words) > 1:
        problems += [] if (REPO / words[1]).is_file() else [f"no script {words[1]}"]
    elif program == "pip" and "install" in words:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for word in words:
            for extra in re.findall(r"\[([\w,-]+)\]", word):
                problems += [f"no extra [{e}]" for e in extra.split(",") if e not in extras]
    return problems


def _check_bash(code: str) -> list[str]:
    problems = []
    for line in code.splitlines():
        line = line.split(" #")[0].strip()
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part.strip().replace("...", "")) if part.strip() else []
            problems += [f"{part.strip()}: {p}" for p in _check_command(words)]
    return problems


def _check_python(code: str) -> list[str]:
    import ast
    import importlib

    from mergeqa._moved import MOVED

    tree = ast.parse(code)
    problems = [f"{name}: an old path, now {MOVED[name]}" for name in _imported(tree) if name in MOVED]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mergeqa":
                try:
                    module = importlib.import_module(node.module)
                except (ImportError, DeprecationWarning) as exc:
                    problems.append(f"from {node.module}: {exc}")
                    continue
                problems += [f"from {node.module} import {a.name}: no such name" for a in node.names
                             if not hasattr(module, a.name)]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "mergeqa":
                        try:
                            importlib.import_module(a.name)
                        except (ImportError, DeprecationWarning) as exc:
                            problems.append(f"import {a.name}: {exc}")
    return problems


def _imported(tree) -> list[str]:
    import ast

    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _check_toml(code: str, tmp_path: Path) -> list[str]:
    from mergeqa.core.errors import MergeQAUsageError
    from mergeqa.decision.thresholds import load_thresholds

    path = tmp_path / "thresholds.toml"
    path.write_text(code)
    try:
        load_thresholds(path, embedded=False)
    except MergeQAUsageError as exc:
        return [str(exc)]
    return []


def _check_yaml(code: str) -> list[str]:
    import yaml

    problems = []
    for doc in yaml.safe_load_all(code):
        if isinstance(doc, dict) and "merge_method" in doc:
            from mergekit.config import MergeConfiguration

            try:
                MergeConfiguration.model_validate(doc)
            except Exception as exc:  # pydantic's ValidationError: the message is the finding
                problems.append(str(exc).splitlines()[0])
    return problems


@pytest.mark.parametrize("language, code", list(code_blocks()))
def test_every_code_block_is_checked(language, code, tmp_path):
    import json

    assert language in LANGUAGES, f"a code block needs one of {LANGUAGES} after its fence, not {language!r}"
    if language == "python":
        compile(code, "<docs>", "exec")
        problems = _check_python(code)
    elif language == "bash":
        problems = _check_bash(code)
    elif language == "toml":
        problems = _check_toml(code, tmp_path)
    elif language == "yaml":
        problems = _check_yaml(code)
    elif language in ("json", "jsonl"):
        problems = []
        for line in (code.splitlines() if language == "jsonl" else [code]):
            json.loads(line)
    else:
        problems = []
    assert problems == []


def test_the_checkers_see_a_wrong_option_and_an_old_path():
    """The rules above are not vacuous."""
    assert _check_bash("pytest --model ./m --no-such-option") == ["pytest --model ./m --no-such-option: --no-such-option"]
    assert _check_bash("mergeqa init --model m --parents a b --sute code")
    assert _check_bash("pip install -e \".[nosuchextra]\"") == ['pip install -e ".[nosuchextra]": no extra [nosuchextra]']
    assert _check_python("from mergeqa.verdict import Verdict")  # the old path warns
    assert _check_python("from mergeqa import Verdikt")
    assert _check_python("from mergeqa import Verdict, decide") == []
