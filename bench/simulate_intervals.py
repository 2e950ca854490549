"""Simulate conflict.rate at its boundary: how often it passes a merge whose true conflict rate is
exactly the 5 % ceiling; the old rule (Wilson, the interval rounded to 4 decimals before
deciding) beside the new (Clopper-Pearson, unrounded), on the same draws. Prints a markdown table;
every cell should be <= alpha + 2 SE. (The A/B rule, now an exact unconditional test with ties,
is in bench/simulate_checks.py, with its exact size at small n in bench/ab_exact_size.py.)

Pass rates come from the gate's own function (`rate_interval`), evaluated once per distinct count
and looked up for each simulated run. "exact" sums the binomial probabilities of the passing
counts, so it carries no Monte Carlo error.
Run: .venv/bin/python bench/simulate_intervals.py [--runs 10000] [--alpha 0.05] [--n-max 3000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeqa.conflict.consistency import rate_interval  # noqa: E402
from mergeqa.stats import wilson_interval  # noqa: E402

CONFLICT_N = (20, 30, 40, 52, 59, 80, 100, 160, 200, 320, 500, 1000, 2000, 3000)


def _old_rate_high(conflicts: int, n: int, alpha: float) -> float:
    """The rule before: Wilson at 1 - 2 alpha, upper bound rounded to 4 decimals, then decided."""
    return round(float(wilson_interval(conflicts, n, confidence=1 - 2 * alpha)[1]), 4)


def _rate(passed: np.ndarray) -> str:
    p = float(passed.mean())
    return f"{p:.4f} ± {np.sqrt(max(p * (1 - p), 1e-12) / passed.size):.4f}"


def conflict_table(runs: int, alpha: float, ceiling: float, rng) -> None:
    from scipy.stats import binom

    print(f"conflict.rate: true rate {ceiling:g} (the ceiling), pass = upper bound of the "
          f"{100 * (1 - 2 * alpha):g}% interval < {ceiling:g}; {runs} runs per row, ± 1 Monte Carlo SE\n")
    print("| n pairs | old: Wilson, rounded | old, exact | new: Clopper-Pearson | new, exact | power at 2 % (new) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in CONFLICT_N:
        k = np.arange(n + 1)
        new = np.array([rate_interval(int(c), n, alpha)[1] < ceiling for c in k])
        old = np.array([_old_rate_high(int(c), n, alpha) < ceiling for c in k])
        draws, good = rng.binomial(n, ceiling, runs), rng.binomial(n, 0.02, runs)
        pmf = binom.pmf(k, n, ceiling)
        print(f"| {n} | {_rate(old[draws])} | {pmf[old].sum():.4f} | {_rate(new[draws])} | {pmf[new].sum():.4f} "
              f"| {_rate(new[good])} |")


def max_exact_size(alpha: float, boundary: float, upper: bool, n_max: int) -> str:
    """The largest exact size over every n up to `n_max` (no ties), old rule and new, vectorised
    (the same formulas as `rate_interval` / `win_interval`, on all counts at once)."""
    from scipy.stats import binom

    from mergeqa.stats import clopper_pearson_interval

    worst = {"old": (0.0, 0), "new": (0.0, 0)}
    for n in range(1, n_max + 1):
        k = np.arange(n + 1)
        side = 1 if upper else 0
        bounds = {"old": np.asarray(wilson_interval(k, np.full(k.shape, n), confidence=1 - 2 * alpha)[side]),
                  "new": np.asarray(clopper_pearson_interval(k, np.full(k.shape, n), confidence=1 - 2 * alpha)[side])}
        if upper:
            bounds["old"] = np.round(bounds["old"], 4)
        pmf = binom.pmf(k, n, boundary)
        for rule, bound in bounds.items():
            size = float(pmf[bound < boundary].sum() if upper else pmf[bound >= boundary].sum())
            worst[rule] = max(worst[rule], (size, n))
    return ", ".join(f"{rule} {size:.5f} (n = {n})" for rule, (size, n) in worst.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--max-rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-max", type=int, default=3000, help="the exact scan's largest n")
    args = ap.parse_args(argv)
    if args.runs < 2000:
        ap.error(f"--runs {args.runs}: at least 2000 runs per cell, so 2 SE stays under about 0.01")
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    conflict_table(args.runs, args.alpha, args.max_rate, rng)
    print(f"\nlargest exact size over n = 1..{args.n_max}: "
          f"{max_exact_size(args.alpha, args.max_rate, True, args.n_max)}")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
