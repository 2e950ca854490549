"""What a user installs: the wheel built from this tree, as `pip install /path/to/mergeqa` builds it.

Its metadata leaves the torch build to the user (README "Install": torch first, CPU or the CUDA
build they want): no CUDA-specific torch version, no nvidia-* wheels, no direct URL. It registers
the pytest plugin and the `mergeqa` command, and it carries every module and the package data
(the family's weights and manifest, its recipe and merges, task YAML, probing and judge sets, the
built-in checks), which an install from it then finds, and uses without writing into itself.

Cost: one offline wheel build (no build isolation, no index; a copy of the tree, so nothing is
written here) and a --no-deps install into a temporary directory: about 10 s.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                 "mergeqa-report", "site", ".pytest_cache", ".hypothesis", ".mergeqa-cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, tmp / "src", ignore=IGNORED)  # setuptools writes build/ and *.egg-info beside the source
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "-q", "-w", str(tmp / "dist"), str(tmp / "src")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = (tmp / "dist").glob("mergeqa-*.whl")
    return built


def _read(wheel: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(suffix) and ".dist-info/" in n]
        return z.read(name).decode()


def test_torch_is_required_without_a_cuda_build(wheel):
    meta = email.message_from_string(_read(wheel, ".dist-info/METADATA"))
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    torch = [r for r in requires if r.name == "torch"]
    assert len(torch) == 1 and torch[0].marker is None, torch
    assert torch[0].url is None, f"torch pinned to a direct URL: {torch[0]}"
    assert all("+" not in spec.version for spec in torch[0].specifier), f"a local (+cu...) torch version: {torch[0]}"
    assert not [str(r) for r in requires if r.name.startswith("nvidia")], "the wheel pulls CUDA runtime wheels"
    assert not [str(r) for r in requires if r.url], "a requirement by direct URL cannot be resolved from an index"


def test_the_plugin_and_the_command_are_registered(wheel):
    entry_points = _read(wheel, ".dist-info/entry_points.txt")
    sections: dict[str, dict[str, str]] = {}
    section = ""
    for line in entry_points.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            name, _, target = line.partition("=")
            sections.setdefault(section, {})[name.strip()] = target.strip()
    assert sections["pytest11"] == {"mergeqa": "mergeqa.pytest_plugin"}
    assert sections["console_scripts"] == {"mergeqa": "mergeqa.cli:main"}


def test_every_module_data_file_and_check_is_in_the_wheel(wheel):
    with zipfile.ZipFile(wheel) as z:
        inside = set(z.namelist())
    tree = {p.relative_to(REPO).as_posix() for p in (REPO / "mergeqa").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    weights = {f"mergeqa/data/family/weights/{m}/{f}" for m in ("base", "arithmetic", "lists")
               for f in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja")}
    assert {"mergeqa/data/family/family.toml", "mergeqa/data/family/merges/ties.yaml",
            "mergeqa/data/family/weights/manifest.json", "mergeqa/data/judge/question.jsonl",
            "mergeqa/checks/test_retention.py", *weights} <= tree
    assert sorted(tree - inside) == []
    with zipfile.ZipFile(wheel) as z:  # the weights as shipped, not an LFS pointer or a stale copy
        for name in weights:
            assert z.read(name) == (REPO / name).read_bytes(), name


def test_an_install_from_the_wheel_finds_its_data_and_checks(wheel, tmp_path):
    """Installed (--no-deps, into a directory of its own, imported from a directory that is not
    the clone), mergeqa reads its bundled recipe, merges, tasks and checks from the install, and
    its family's weights, verified against the manifest, with nothing written into the install."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           "--disable-pip-version-check", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = ("import mergeqa, mergeqa.core.state as s; from mergeqa.family import default_recipe_path, load_recipe; "
             "from mergeqa.models.session import DEFAULT_MERGES_DIR; print(mergeqa.__file__); "
             "assert sorted(load_recipe()['parents']) == ['arithmetic', 'lists'], default_recipe_path(); "
             "assert len(list(DEFAULT_MERGES_DIR.glob('*.yaml'))) == 5; "
             "assert (s.BUNDLED_TASKS / 'humaneval' / 'mergeqa_humaneval.yaml').is_file(); "
             "assert (s.CHECKS_DIR / 'test_retention.py').is_file(); "
             "from mergeqa.models.shipped_family import WEIGHTS_DIR, shipped_family; "
             "f = shipped_family(sys.argv[1]); "
             "assert f.base.resolve() == WEIGHTS_DIR / 'base' and WEIGHTS_DIR.is_relative_to(s.PACKAGE_DIR); "
             "assert (f.tasks_dir / 'family_lists.yaml').is_file()")
    probe = "import sys; " + probe
    before = sorted(p for p in target.rglob("*") if "__pycache__" not in p.parts)
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "cache")], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert Path(run.stdout.strip()).is_relative_to(target)
    assert sorted(p for p in target.rglob("*") if "__pycache__" not in p.parts) == before
