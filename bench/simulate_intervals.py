"""Simulate the single-rate decisions at their boundary: how often conflict.rate passes a merge
whose true conflict rate is exactly the 5 % ceiling, and how often the A/B rule passes a merge
whose true win rate (ties as half) is exactly the 0.45 floor; the old rule (Wilson, and for
conflict.rate the interval rounded to 4 decimals before deciding) beside the new (Clopper-Pearson,
unrounded), on the same draws. Prints markdown tables; every cell should be <= alpha + 2 SE.

Pass rates come from the gate's own functions (`rate_interval`, `win_interval`), evaluated once
per distinct count and looked up for each simulated run. "exact" sums the binomial probabilities
of the passing counts (for A/B: without ties), so it carries no Monte Carlo error.
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
from mergeqa.judge.evaluation import Pairwise, win_interval  # noqa: E402
from mergeqa.stats import wilson_interval  # noqa: E402

CONFLICT_N = (20, 30, 40, 52, 59, 80, 100, 160, 200, 320, 500, 1000, 2000, 3000)
AB_N = (20, 30, 40, 80, 160, 270, 500, 1000)


def _old_rate_high(conflicts: int, n: int, alpha: float) -> float:
    """The rule before: Wilson at 1 - 2 alpha, upper bound rounded to 4 decimals, then decided."""
    return round(float(wilson_interval(conflicts, n, confidence=1 - 2 * alpha)[1]), 4)


def _old_ab_low(wins: int, ties: int, n: int, alpha: float) -> float:
    return float(wilson_interval((2 * wins + ties) // 2, n, confidence=1 - 2 * alpha)[0])


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


def ab_table(runs: int, alpha: float, floor: float, tie_share: float, rng) -> None:
    from scipy.stats import binom

    win = floor - tie_share / 2
    probs = (win, tie_share, 1 - win - tie_share)
    print(f"\nA/B: true win rate {floor:g} (ties as half; P(win, tie, loss) = "
          f"{', '.join(f'{p:.3g}' for p in probs)}), pass = lower bound of the {100 * (1 - 2 * alpha):g}% "
          f"interval >= {floor:g}; {runs} runs per row, ± 1 Monte Carlo SE\n")
    print("| n questions | old: Wilson | old, exact | new: Clopper-Pearson | new, exact | power at 0.6 (new) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in AB_N:
        counts = rng.multinomial(n, probs, runs)
        better = rng.multinomial(n, (0.6 - tie_share / 2, tie_share, 0.4 - tie_share / 2), runs)
        memo: dict = {}

        def passes(wins: int, ties: int) -> tuple[bool, bool]:
            if (wins, ties) not in memo:
                ab = Pairwise("m", "p", ["win"] * wins + ["tie"] * ties + ["loss"] * (n - wins - ties), 0, 0)
                memo[(wins, ties)] = (_old_ab_low(wins, ties, n, alpha) >= floor, win_interval(ab, alpha)[0] >= floor)
            return memo[(wins, ties)]

        old, new = (np.array(x) for x in zip(*(passes(int(w), int(t)) for w, t, _ in counts)))
        power = np.array([passes(int(w), int(t))[1] for w, t, _ in better])
        exact = ["-", "-"]
        if tie_share == 0:  # no ties: the count of wins is binomial, so the size is a finite sum
            k = np.arange(n + 1)
            table = np.array([passes(int(c), 0) for c in k])
            exact = [f"{float(binom.pmf(k, n, floor)[table[:, i]].sum()):.4f}" for i in (0, 1)]
        print(f"| {n} | {_rate(old)} | {exact[0]} | {_rate(new)} | {exact[1]} | {_rate(power)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--max-rate", type=float, default=0.05)
    ap.add_argument("--min-win-rate", type=float, default=0.45)
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
    ab_table(args.runs, args.alpha, args.min_win_rate, 0.0, rng)
    print(f"\nlargest exact size over n = 1..{args.n_max} (no ties): "
          f"{max_exact_size(args.alpha, args.min_win_rate, False, args.n_max)}")
    ab_table(args.runs, args.alpha, args.min_win_rate, 0.2, rng)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
