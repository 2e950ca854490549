"""`mergeqa` command line: the main job on the embedded default, and the family table.

    mergeqa gate [--out DIR] [PYTEST ARGS...]   merge the shipped family, run the gate, write
                                               DIR/junit.xml, DIR/comparison.md, DIR/summary.md,
                                               DIR/report.html
    mergeqa family [--table]                   the tiny family (it ships with mergeqa): where it
                                               is; its table (base, parents, every default merge)
    mergeqa family --rebuild [--ship]          train it from the recipe; compare its table with
                                               the shipped one's (--ship: write it as package data)
    mergeqa init --model M --parents A B ...   write a commented thresholds.toml for your merge
    mergeqa plan [--model M --parents A B ...] what a run would evaluate, its power and its cost

The gate is plain pytest underneath: everything here can also be done with `pytest --gate`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mergeqa", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gate = sub.add_parser("gate", help="run the gate (default: on the embedded tiny family)")
    gate.add_argument("--out", default="mergeqa-report", help="report directory (default: mergeqa-report)")
    family = sub.add_parser("family", help="the tiny family that ships with mergeqa: where it is, its table",
                            description="The tiny family (a base and the parents arithmetic and lists) ships "
                                        "with mergeqa as package data, so no run trains it. --rebuild trains "
                                        "it from its recipe (mergeqa/data/family/family.toml) and compares; "
                                        "--rebuild --ship re-ships it after the recipe or mergeqa/family/ "
                                        "changed.")
    family.add_argument("--table", action="store_true",
                        help="also its table: base, parents and every default merge x task and probing "
                             "(computed once, recorded in the family's cache entry)")
    family.add_argument("--rebuild", action="store_true",
                        help="train the family from its recipe into the cache (about 4 minutes on 2 CPU cores, "
                             "once per recipe) and print its table beside the shipped family's")
    family.add_argument("--ship", action="store_true",
                        help="with --rebuild: write the trained family into the package data "
                             "(mergeqa/data/family/weights/ and its manifest) instead of comparing; in a "
                             "source checkout, after the recipe or mergeqa/family/ changed")
    init = sub.add_parser("init", help="write a commented thresholds.toml for your merge")
    init.add_argument("--model", required=True, metavar="PATH", help="the merged checkpoint directory")
    init.add_argument("--parents", required=True, nargs="+", metavar="PATH", help="the parents' directories")
    init.add_argument("--base", metavar="PATH", default=None, help="the base checkpoint (default: none)")
    choice = init.add_mutually_exclusive_group()
    choice.add_argument("--suite", metavar="NAME", default=None,
                        help="a built-in suite: leaderboard_v1, leaderboard_v2, code (default: the first whose "
                             "datasets are all on this machine)")
    choice.add_argument("--tasks", nargs="+", metavar="TASK", default=None,
                        help="your own lm-eval tasks (or groups) as the suite (default: a built-in suite)")
    init.add_argument("--out", default="thresholds.toml", metavar="PATH", help="default: thresholds.toml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file (default: never)")
    plan = sub.add_parser("plan", help="a dry run: models, tasks, statistical power and work, measuring nothing")
    plan.add_argument("--model", nargs="+", metavar="PATH", default=[], help="merged checkpoints (default: the "
                      "embedded family's merges)")
    plan.add_argument("--parents", nargs="+", metavar="PATH", default=None, help="parent checkpoints")
    plan.add_argument("--base", metavar="PATH", default=None, help="base checkpoint")
    plan.add_argument("--merge-config", nargs="+", metavar="YAML", default=[], help="mergekit configs")
    plan.add_argument("--thresholds", metavar="PATH", default=None,
                      help="default: ./thresholds.toml if present, else the built-in defaults")
    plan.add_argument("--eval-limit", type=int, metavar="N", default=None, help="as pytest's --eval-limit")
    plan.add_argument("--backend", choices=("mergeqa-hf", "hf"), default="mergeqa-hf")
    plan.add_argument("--dtype", default="float32")
    plan.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    pairs = sub.add_parser("pairs", help="consistency pairs for the conflict checks, from a local lm-eval task")
    pairs.add_argument("--task", required=True, metavar="TASK", help="an lm-eval task whose data is on this machine")
    pairs.add_argument("--out", default="pairs.jsonl", metavar="PATH", help="default: pairs.jsonl")
    pairs.add_argument("--limit", type=int, default=200, metavar="N", help="at most N pairs per relation (default 200)")
    pairs.add_argument("--force", action="store_true", help="overwrite an existing file (default: never)")
    for p in (init, plan, pairs):
        p.add_argument("--tasks-path", nargs="+", metavar="DIR", default=[],
                       help="extra directories of lm-eval task YAML (default: none)")
    for p in (gate, family, plan):
        p.add_argument("--cache", default=None, help="cache directory (default: $MERGEQA_CACHE_DIR or ~/.cache/mergeqa)")
    args, rest = parser.parse_known_args(argv)
    if args.command == "gate":
        return run_gate(Path(args.out), args.cache, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command in ("init", "plan", "pairs"):
        return run_usage_checked(args)
    if args.ship and not args.rebuild:
        parser.error("--ship writes a family trained from the recipe: pass --rebuild --ship")
    return run_family(args.cache, args.table, rebuild=args.rebuild, ship=args.ship)


def run_usage_checked(args) -> int:
    """`init` and `plan`: misuse is one line on stderr and exit code 4, as in pytest."""
    import os

    from mergeqa.core.errors import MergeQAUsageError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        if args.command == "init":
            from mergeqa.cli.init import init

            _, summary = init(args.model, args.parents, args.base, suite=args.suite, tasks=args.tasks,
                              task_paths=args.tasks_path, out=Path(args.out), force=args.force)
            print(summary)
        elif args.command == "pairs":
            from mergeqa.conflict.generate import write_pairs

            if args.limit < 1:
                raise MergeQAUsageError(f"--limit {args.limit}: must be at least 1")
            print(write_pairs(args.task, Path(args.out), task_paths=args.tasks_path, limit=args.limit,
                              force=args.force))
        else:
            from mergeqa.cli.plan import plan

            print(plan(args))
    except MergeQAUsageError as exc:
        print(f"mergeqa {args.command}: {exc}", file=sys.stderr)
        return 4
    return 0


def run_gate(out: Path, cache: str | None, pytest_args: list[str]) -> int:
    """pytest --gate with junit and reports in `out`. Exit code: pytest's, so 0 only when every
    check of every merge passed; summary.md ends with one line per merge."""
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
    written = [p for p in (junit, out / "summary.md", out / "report.html") if p.is_file()]
    if written:
        print(f"\nmergeqa: {', '.join(str(p) for p in written)}")
    return code


def stderr_lines(message: str) -> None:
    """Where the command's progress lines go (mergeqa.core.progress): stderr, as they happen."""
    print(f"mergeqa: {message}", file=sys.stderr, flush=True)


def run_family(cache: str | None, table: bool, *, rebuild: bool = False, ship: bool = False) -> int:
    """The shipped family: where it is; with --table, its recorded table (computed and recorded in
    the family's cache entry first if absent). --rebuild: the family trained from the recipe, and
    the two tables side by side; --rebuild --ship: the trained family written into the package
    data. Misuse (a shipped file missing or changed) is one line on stderr and exit code 4."""
    import os

    from mergeqa.core import progress
    from mergeqa.core.errors import MergeQAUsageError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    uninstall = progress.install(stderr_lines)
    try:
        return _rebuild_family(cache, ship) if rebuild else _show_family(cache, table)
    except MergeQAUsageError as exc:
        print(f"mergeqa family: {exc}", file=sys.stderr)
        return 4
    finally:  # main() is also called in-process (tests, a user's script): leave no sink behind
        uninstall()


def _show_family(cache: str | None, table: bool) -> int:
    from mergeqa.core import progress
    from mergeqa.models import shipped_family
    from mergeqa.report.family_table import family_table, recorded_table, render

    fam = shipped_family.shipped_family(cache)
    print(f"family: {fam.root} (shipped with mergeqa: {shipped_family.WEIGHTS_DIR})")
    for name, path in {"base": fam.base, **fam.parents}.items():
        print(f"  {name}: {path}")
    recorded = family_table(cache, log=lambda m: progress.say(f"table: {m}")) if table else recorded_table(fam)
    if recorded is not None:
        print("\n" + render(recorded))
    else:
        print("no table recorded yet (mergeqa family --table computes it)")
    return 0


def _rebuild_family(cache: str | None, ship: bool) -> int:
    from mergeqa.core import progress
    from mergeqa.models.session import build_family_reporting
    from mergeqa.models import shipped_family
    from mergeqa.report.family_table import family_table, render_comparison

    trained = build_family_reporting(cache)
    print(f"family trained from the recipe: {trained.root}")
    if ship:
        weights = shipped_family.WEIGHTS_DIR
        before = shipped_family.read_manifest()["files"] if (weights / shipped_family.MANIFEST).is_file() else {}
        manifest = shipped_family.ship(trained)
        size = sum(f["size"] for f in manifest["files"].values())
        changed = sorted(k for k, f in manifest["files"].items() if before.get(k) != f)
        print(f"shipped into {weights}: {len(manifest['files'])} files, {size / 1e6:.1f} MB, recipe digest "
              f"{manifest['recipe_digest'][:16]}; "
              + (f"changed: {', '.join(changed)}" if changed else "every file as shipped before"))
        return 0
    tables = {}
    for name, family in (("shipped", shipped_family.shipped_family(cache)), ("rebuilt", trained)):
        tables[name] = family_table(cache, family=family, log=lambda m, n=name: progress.say(f"table ({n}): {m}"))
    print("\n" + render_comparison(tables["shipped"], tables["rebuilt"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
