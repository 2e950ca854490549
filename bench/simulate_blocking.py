"""The blocking rate: how often one fixed-n paired comparison turns CI red for a merge exactly as
good as its reference (each item a win or a loss with probability discordance / 2), by n,
discordance, margin and policy. Exact sums from `mergeqa.decision.blocking.blocking_rate`, and a
Monte Carlo check of the default policy through `compare_paired` itself (± 1 SE).

Policies: inconclusive = "fail" (the default: not shown non-inferior blocks), inconclusive =
"warn" (only a significant regression blocks), decision = "significant_drop" (only a drop beyond
the margin shown significant blocks). Per comparison: a merge has two per task (retention and
regression), Holm-adjusted on the fail side, and every one must pass.
Run: .venv/bin/python bench/simulate_blocking.py [--runs 2000] [--alpha 0.05]   (about 2 min)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeqa.decision.blocking import POLICIES, blocking_rate  # noqa: E402
from mergeqa.decision.significance import compare_paired  # noqa: E402

SIZES = (100, 1000, 10000)
DISCORDANCES = (0.05, 0.2, 0.4)
MARGINS = (("retention: owner at 0.9, min_retention 0.95", 0.045),
           ("regression: parent at 0.7, tolerance 0.02", 0.014))


def simulated(n: int, margin: float, discordance: float, alpha: float, runs: int, rng) -> str:
    """Share of runs the default policy blocks, through compare_paired on drawn items."""
    blocked = 0
    for _ in range(runs):
        kind = rng.random(n)
        reference = (rng.random(n) < 0.7).astype(float)
        merged = reference.copy()
        win, loss = kind < discordance / 2, (kind >= discordance / 2) & (kind < discordance)
        merged[win], reference[win] = 1.0, 0.0
        merged[loss], reference[loss] = 0.0, 1.0
        blocked += compare_paired(merged, reference, margin=margin, alpha=alpha).verdict != "pass"
    p = blocked / runs
    return f"{p:.4f} ± {np.sqrt(p * (1 - p) / runs):.4f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000, help="Monte Carlo runs per checked cell (discordance 0.2)")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    print(f"a merge exactly as good as its reference, one 0/1 comparison, alpha {args.alpha}; exact blocking rate "
          f"per policy; Monte Carlo ({args.runs} runs, ± 1 SE) for the default at discordance 0.2\n")
    print("| margin | n | discordance | inconclusive = fail (default) | simulated | inconclusive = warn "
          "| significant_drop |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, margin in MARGINS:
        for n in SIZES:
            for d in DISCORDANCES:
                rates = [blocking_rate(n, margin, discordance=d, alpha=args.alpha, policy=p) for p in POLICIES]
                check = simulated(n, margin, d, args.alpha, args.runs, rng) if d == 0.2 else "-"
                print(f"| {label} ({100 * margin:g} pts) | {n} | {d:g} | {rates[0]:.4f} | {check} | {rates[1]:.4f} "
                      f"| {rates[2]:.4f} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
