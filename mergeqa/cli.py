"""`mergeqa` command line: the main job on the embedded default, and the family table.

    mergeqa gate [--out DIR] [PYTEST ARGS...]   build the family, merge it, run the gate, write
                                               DIR/junit.xml, DIR/comparison.md, DIR/summary.md,
                                               DIR/report.html
    mergeqa family [--table]                   build (or find) the tiny family; print its table

The gate is plain pytest underneath: everything here can also be done with `pytest --gate`.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mergeqa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gate = sub.add_parser("gate", help="run the gate (default: on the embedded tiny family)")
    gate.add_argument("--out", default="mergeqa-report", help="report directory (default: mergeqa-report)")
    family = sub.add_parser("family", help="build the tiny family and print where it is")
    family.add_argument("--table", action="store_true", help="also evaluate it: model x task -> acc")
    for p in (gate, family):
        p.add_argument("--cache", default=None, help="cache directory (default: $MERGEQA_CACHE_DIR or ~/.cache/mergeqa)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "gate":
        return run_gate(Path(args.out), args.cache, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run_family(args.cache, args.table)


def run_gate(out: Path, cache: str | None, pytest_args: list[str]) -> int:
    import pytest

    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    args = ["--gate", f"--junitxml={junit}", "-o", "junit_family=xunit1", "--report-dir", str(out),
            "-p", "no:cacheprovider"]
    if cache:
        args += ["--mergeqa-cache", cache]
    if not any(a.startswith("--thresholds") for a in pytest_args) and Path("thresholds.toml").is_file():
        args += ["--thresholds", "thresholds.toml"]
    code = int(pytest.main(args + pytest_args))
    if junit.is_file():
        summary = junit_summary(junit)
        (out / "summary.md").write_text(summary + "\n")
        print(f"\nmergeqa: junit {junit}, summary {out / 'summary.md'}, report {out / 'report.html'}")
    return code


def junit_summary(path: Path) -> str:
    """A markdown summary of a junit file: counts, then each failure's first line."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    lines = ["# mergeqa gate", "", "| tests | failures | errors | skipped |", "|---:|---:|---:|---:|",
             "| {tests} | {failures} | {errors} | {skipped} |".format(**counts), ""]
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            node = case.find(kind)
            if node is not None:
                first = (node.get("message") or node.text or "").strip().splitlines()[:1]
                lines.append(f"- {kind}: `{case.get('name')}`: {first[0] if first else ''}")
    comparison = path.parent / "comparison.md"
    if comparison.is_file():
        lines += ["", "## Comparison", "", comparison.read_text()]
    return "\n".join(lines)


def run_family(cache: str | None, table: bool) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from .engine import EvalSettings, evaluate
    from .family import build_family
    from .family.tasks import ALL_TASKS
    from .models import ModelRef

    fam = build_family(cache, log=lambda m: print(f"  {m}", file=sys.stderr))
    print(f"family: {fam.root}")
    refs = [ModelRef("base", fam.base, "base")] + [ModelRef(n, p, "parent") for n, p in fam.parents.items()]
    for ref in refs:
        print(f"  {ref.name}: {ref.path}")
    if table:
        settings = EvalSettings(cache_dir=fam.root.parent, device="cpu", task_paths=(str(fam.tasks_dir),))
        tasks = [t for t in ALL_TASKS if t != "family_grammar_ppl"]
        print("\n| model | " + " | ".join(tasks) + " |\n|---|" + "---:|" * len(tasks))
        for ref in refs:
            res = evaluate(ref, tasks, settings)
            print(f"| {ref.name} | " + " | ".join(f"{res.score(t):.3f}" for t in tasks) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
