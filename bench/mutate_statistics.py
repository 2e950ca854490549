"""Mutation check of the gate's statistics: apply each deliberate slip (a wrong level, a wrong n, a
wrong share of alpha, rounding before deciding) to a temporary copy of the package, run the tests
that should catch it there, and report killed / survived. Run by hand; the tree is never touched.

Each mutant replaces one exact piece of source text (it must occur exactly once, else the mutant
is reported as stale, not as survived). The copy holds mergeqa/, tests/ and pyproject.toml; its
tests run with PYTHONPATH at the copy, fast tests only (-m "not slow"), stopping at the first
failure. The first four are the mutants issue 26 found surviving the suite.
Run: .venv/bin/python bench/mutate_statistics.py [--only NAME ...] [--list]   (about 1-2 min)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("mergeqa", "tests", "pyproject.toml")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


MUTANTS = [
    Mutant("judge-score-signflip", "mergeqa/judge/evaluation.py",
           'score_test: str = "betting"', 'score_test: str = "permutation"',
           ("tests/test_judge.py",),
           "judge.score back on the shifted sign-flip (false passes for a skill lost on a few questions)"),
    Mutant("betting-half-range", "mergeqa/decision/significance.py",
           "p_noninferiority=float(betting_pvalue(d, margin, low=-width, high=width)),",
           "p_noninferiority=float(betting_pvalue(np.clip(d, -width / 2, width / 2), margin, low=-width / 2, "
           "high=width / 2)),",
           ("tests/test_judge.py",),
           "the betting test told half the differences' range (its size rests on the range)"),
    Mutant("sequential-full-alpha", "mergeqa/retention/early_stop.py",
           "self.alpha, self.comparisons = alpha / comparisons, comparisons",
           "self.alpha, self.comparisons = alpha, comparisons",
           ("tests/test_gate_statistics.py", "tests/test_regression_each.py"),
           "each sequential comparison at full alpha instead of alpha / (2 x tasks)"),
    Mutant("conflict-rate-1-alpha", "mergeqa/conflict/consistency.py",
           "low, high = clopper_pearson_interval(conflicts, n, confidence=1 - 2 * alpha)",
           "low, high = clopper_pearson_interval(conflicts, n, confidence=1 - alpha)",
           ("tests/test_intervals.py", "tests/test_conflict.py"),
           "the conflict.rate interval at 1 - alpha instead of 1 - 2 alpha"),
    Mutant("tango-n-plus-1", "mergeqa/decision/significance.py",
           "p_noninferiority=float(tango_pvalue(wins, losses, n, effect0=-margin)),",
           "p_noninferiority=float(tango_pvalue(wins, losses, n + 1, effect0=-margin)),",
           ("tests/test_gate_statistics.py", "tests/test_significance.py"),
           "Tango's non-inferiority p computed with n + 1 items"),
    Mutant("ab-tango-asymptotic", "mergeqa/judge/evaluation.py",
           "from ..stats.exact_paired import exact_tango_pvalue\n",
           "from ..stats import tango_pvalue\n\n    def exact_tango_pvalue(w, l, n, *, effect0, alternative):\n"
           "        return float(tango_pvalue(w, l, n, effect0=effect0, alternative=alternative))\n",
           ("tests/test_intervals.py",),
           "the A/B rule on Tango's asymptotic p-value (above alpha at small n)"),
    Mutant("conflict-rate-rounded", "mergeqa/conflict/consistency.py",
           'low, high = rate_interval(fig["conflicts"], fig["n"], alpha)',
           'low, high = fig["ci_low"], fig["ci_high"]',
           ("tests/test_intervals.py", "tests/test_conflict.py"),
           "conflict.rate decided on the interval rounded to 4 decimals"),
    Mutant("ab-1-alpha", "mergeqa/judge/evaluation.py",
           'outcome = "pass" if p_above <= setup.alpha else',
           'outcome = "pass" if p_above <= 2 * setup.alpha else',
           ("tests/test_intervals.py", "tests/test_judge.py"),
           "the A/B rule passing at 2 alpha (a two-sided 1 - alpha interval's lower bound)"),
    Mutant("ab-floor-scale", "mergeqa/judge/evaluation.py",
           "effect0 = ab.count(\"win\"), ab.count(\"loss\"), ab.judged, 2 * floor - 1",
           "effect0 = ab.count(\"win\"), ab.count(\"loss\"), ab.judged, floor - 0.5",
           ("tests/test_intervals.py",),
           "the A/B floor mapped to the paired effect without the factor 2"),
    Mutant("betting-looks-ahead", "mergeqa/stats/betting.py",
           "s = np.cumsum(x, axis=-1) - x + prior",
           "s = np.cumsum(x, axis=-1) + prior",
           ("tests/test_betting.py",),
           "the betting test's bet sees the item it bets on (not predictable)"),
    Mutant("owner-wilson", "mergeqa/conflict/consistency.py",
           "low, high = (float(x) for x in clopper_pearson_interval(agree, n, confidence=1 - 2 * alpha))",
           "low, high = (float(x) for x in __import__('mergeqa.stats').stats.wilson_interval(agree, n, "
           "confidence=1 - 2 * alpha))",
           ("tests/test_intervals.py", "tests/test_conflict.py"),
           "conflict.owner back on the Wilson interval"),
    Mutant("regression-no-bonferroni", "mergeqa/decision/significance.py",
           "p_noninferiority = min(1.0, k * min(c.p_noninferiority for c in comparisons.values()))",
           "p_noninferiority = min(1.0, min(c.p_noninferiority for c in comparisons.values()))",
           ("tests/test_regression_each.py",),
           "regression passes on non-inferiority to any parent at full alpha (no alpha / k)"),
    Mutant("regression-fail-on-one", "mergeqa/decision/significance.py",
           "p_regression = max(c.p_regression for c in comparisons.values())",
           "p_regression = min(c.p_regression for c in comparisons.values())",
           ("tests/test_regression_each.py",),
           "regression fails when shown below one parent, not every one"),
    Mutant("regression-weakest-on-data", "mergeqa/retention/assess.py",
           "compared = _compare_each(task, key, merged, parents, margins, stat, merge)",
           "compared = (ref, _compare(task, key, merged, parents, ref, margin, stat, merge))",
           ("tests/test_regression_each.py", "tests/test_retention.py"),
           "regression against the parent weakest on the same items, at full alpha (the old rule)"),
    Mutant("sequential-regression-full-share", "mergeqa/retention/early_stop.py",
           "alpha = self.alpha / len(scores)",
           "alpha = self.alpha",
           ("tests/test_regression_each.py",),
           "sequential regression against each parent at alpha / (2 x tasks), not also / k"),
    Mutant("paired-ci-1-alpha", "mergeqa/decision/significance.py",
           "low, high = tango_interval(wins, losses, n, confidence=1 - 2 * alpha)",
           "low, high = tango_interval(wins, losses, n, confidence=1 - alpha)",
           ("tests/test_gate_statistics.py", "tests/test_significance.py"),
           "the paired comparison's interval at 1 - alpha (it no longer agrees with the verdict)"),
    Mutant("fixed-n-beside-sequential-all-alpha", "mergeqa/retention/assess.py",
           "share=min(1.0, len(pending) / slots)) if usable else []",
           "share=1.0) if usable else []",
           ("tests/test_retention.py",),
           "fixed-n comparisons beside sequential ones spend all of alpha again"),
    Mutant("holm-one-step-too-few", "mergeqa/stats/multiplicity.py",
           "adjusted = np.maximum.accumulate((m - rank + 1) * p[order])",
           "adjusted = np.maximum.accumulate((m - rank) * p[order])",
           ("tests/test_significance.py",),
           "Holm's multiplier m - i instead of m - i + 1"),
    Mutant("mcnemar-tail-off-by-one", "mergeqa/stats/mcnemar.py",
           "less = binom.cdf(wins, m, 0.5) - half_point",
           "less = binom.cdf(wins - 1, m, 0.5) - half_point",
           ("tests/test_significance.py",),
           "exact McNemar's 'less' tail without the observed count"),
]


def _copy(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)


def _pytest(copy: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """(return code, the first failing test or the last line) of the fast tests in the copy."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
                           *tests], cwd=copy, env=env, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    failed = [line for line in lines if line.startswith("FAILED ")]
    return proc.returncode, (failed[0][len("FAILED "):] if failed else (lines[-1] if lines else proc.stderr[-200:]))


def run(mutants: list[Mutant]) -> int:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mergeqa-mutants-") as tmp:
        base = Path(tmp) / "base"
        _copy(base)
        probe = subprocess.run([sys.executable, "-c", "import mergeqa; print(mergeqa.__file__)"], cwd=base,
                               env={**os.environ, "PYTHONPATH": str(base)}, capture_output=True, text=True)
        if not probe.stdout.startswith(str(base)):
            print(f"the copy is not what gets imported ({probe.stdout.strip() or probe.stderr.strip()}); stopping")
            return 2
        tests = tuple(sorted({t for m in mutants for t in m.tests}))
        rc, last = _pytest(base, tests)
        if rc != 0:
            print(f"the unmutated tests fail ({last}); fix them before judging mutants")
            return 2
        print(f"unmutated: {last} ({', '.join(tests)})\n")
        print("| mutant | what it breaks | result | caught by |")
        print("|---|---|---|---|")
        survived = stale = 0
        for m in mutants:
            copy = Path(tmp) / m.name
            shutil.copytree(base, copy)
            target = copy / m.path
            text = target.read_text()
            if text.count(m.old) != 1:
                stale += 1
                print(f"| {m.name} | {m.what} | STALE: the text occurs {text.count(m.old)} times in {m.path} | - |")
                continue
            target.write_text(text.replace(m.old, m.new))
            rc, last = _pytest(copy, m.tests)
            killed = rc != 0
            survived += not killed
            print(f"| {m.name} | {m.what} | {'killed' if killed else 'SURVIVED'} | {last if killed else '-'} |",
                  flush=True)
            shutil.rmtree(copy)
    total = len(mutants)
    print(f"\n{total - survived - stale} of {total} killed, {survived} survived, {stale} stale "
          f"({time.perf_counter() - t0:.0f} s)")
    return 1 if survived or stale else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    names = [m.name for m in MUTANTS]
    if args.list:
        for m in MUTANTS:
            print(f"{m.name}: {m.what} ({m.path}; {', '.join(m.tests)})")
        return 0
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        ap.error(f"unknown mutant {', '.join(unknown)}; available: {', '.join(names)}")
    return run([m for m in MUTANTS if not args.only or m.name in args.only])


if __name__ == "__main__":
    raise SystemExit(main())
