"""The import graph of mergeqa: modules per package, import circles and upward imports.

    .venv/bin/python bench/import_graph.py              # the working tree
    .venv/bin/python bench/import_graph.py --rev 5b67da3  # a commit (e.g. before the layout move)

Every `import` counts, at module level or inside a function, under `if TYPE_CHECKING:` too. A
circle is a strongly connected set of modules. An arrow is upward when it goes from a layer to a
layer above it, or between two independent siblings, in the layers of pyproject.toml's
[tool.importlinter] contract (the one tests/test_layout.py enforces). A module of a commit from
before the move is placed in the layer its code moved to (mergeqa._moved.MOVED).
"""

from __future__ import annotations

import argparse
import ast
import collections
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
#: modules that kept their name but became packages, and where their code went
RENAMED = {"mergeqa.models": "mergeqa.models.refs", "mergeqa.retention": "mergeqa.retention.assess",
           "mergeqa.conflict": "mergeqa.conflict.consistency", "mergeqa.humaneval": "mergeqa.humaneval.problems",
           "mergeqa.report": "mergeqa.report.markdown", "mergeqa.cli": "mergeqa.cli.main"}


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for p in sorted((root / "mergeqa").rglob("*.py")):
        parts = list(p.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = p
    return found


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    out = collections.defaultdict(set)
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")[: len(mod.split(".")) - (0 if is_pkg else 1)]
                    base = base[: len(base) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                targets = [f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t.startswith("mergeqa") and t != mod:
                    out[mod].add(t)
    return out


def circles(graph: dict[str, set[str]], nodes) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, found = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def layers() -> list[list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [[f"mergeqa.{name.strip()}" for name in line.split("|")] for line in config["layers"]]


def place(mod: str, stack: list[list[str]]) -> tuple[int, str] | None:
    """(height, package) of a module's layer: 0 is the bottom."""
    sys.path.insert(0, str(REPO))
    from mergeqa._moved import MOVED

    new = RENAMED.get(mod) or MOVED.get(mod) or mod
    for height, line in enumerate(reversed(stack)):
        for pkg in line:
            if new == pkg or new.startswith(pkg + "."):
                return height, pkg
    return None


def report(root: Path, label: str) -> int:
    mods = modules(root)
    graph = edges(mods)
    stack = layers()
    per_package = collections.Counter(
        parts[0] if len(parts) > 1 else "(top level)"
        for parts in (path.relative_to(root / "mergeqa").parts for path in mods.values()))
    loops = circles(graph, sorted(mods))
    upward = []
    for src, targets in sorted(graph.items()):
        a = place(src, stack)
        for dst in sorted(targets):
            b = place(dst, stack)
            if a and b and a[1] != b[1] and (b[0] > a[0] or b[0] == a[0]):
                upward.append(f"{src} -> {dst}")
    print(f"{label}: {len(mods)} modules, {sum(map(len, graph.values()))} imports within mergeqa")
    print("modules per package: " + ", ".join(f"{p} {n}" for p, n in sorted(per_package.items())))
    print(f"import circles: {len(loops)}")
    for loop in loops:
        print("  " + " <-> ".join(loop))
    print(f"upward or sideways imports (against the layers of pyproject.toml): {len(upward)}")
    for line in upward:
        print("  " + line)
    return len(loops) + len(upward)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", help="a commit to read instead of the working tree")
    args = parser.parse_args()
    if not args.rev:
        return 1 if report(REPO, "working tree") else 0
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.rev, "mergeqa"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(tmp, filter="data")
        return 1 if report(Path(tmp), args.rev) else 0


if __name__ == "__main__":
    sys.exit(main())
