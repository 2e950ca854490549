"""Simulate non-inferiority on graded per-item differences (scores in [0, 1], so d in [-1, 1]) with
the true drop exactly at the margin, the loss concentrated on 1/18 or 1/5 of the items or spread
over all of them, and a merge as good as its reference: pass rates of the shifted sign-flip test
(what the gate used for graded items, judge.score, probing and no-owner tasks, and keeps for scores
with no known range such as perplexity) beside the betting test on the known range
(`mergeqa.stats.betting`, what the gate uses wherever the scores have one).

Every item has symmetric noise (+-0.1 with probability 0.15 each); a concentrated loss takes
margin x 18 (or x 5) from each affected item, drawn independently with probability 1/18 (1/5).
A false pass should stay <= alpha + 2 SE; the "as good" rows are power.
The sign-flip runs as the gate's `SignFlipNull` with 2000 seeded flips (the gate: 10000) to keep
the run short. Run: .venv/bin/python bench/simulate_skewed.py [--runs 2000] [--n 20 40 80 160 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeqa.stats import SignFlipNull  # noqa: E402
from mergeqa.stats.betting import betting_pvalue, items_to_show  # noqa: E402

NOISE, NOISE_P = 0.1, 0.15


def draw(rng, runs: int, n: int, margin: float, scenario: str) -> np.ndarray:
    """(runs, n) per-item differences merged - reference."""
    u = rng.random((runs, n))
    d = np.where(u < NOISE_P, -NOISE, np.where(u < 2 * NOISE_P, NOISE, 0.0))
    if scenario == "spread":
        d -= margin
    elif scenario.startswith("1/"):
        share = 1 / int(scenario[2:])
        d -= (rng.random((runs, n)) < share) * margin / share
    return np.clip(d, -1.0, 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--n", type=int, nargs="+", default=[20, 40, 80, 160, 1000])
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--flips", type=int, default=2000)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    print(f"graded items, d in [-1, 1], margin {args.margin}, alpha {args.alpha}, {args.runs} runs per cell, "
          f"pass rate ± 1 Monte Carlo SE; a copy of the reference needs "
          f"{items_to_show(args.margin, args.alpha, low=-1.0)} items to pass the betting test at all\n")
    print("| true drop | n | sign-flip (shifted) | betting on [-1, 1] |")
    print("|---|---:|---:|---:|")
    for scenario in ("1/18", "1/5", "spread", "none"):
        label = {"none": "none (as good: power)", "spread": "margin, spread over all items"}.get(
            scenario, f"margin, on {scenario} of the items")
        for n in args.n:
            d = draw(rng, args.runs, n, args.margin, scenario)
            flip = np.array([SignFlipNull(row, n_resamples=args.flips, seed=0).pvalue(-args.margin, "greater")
                             for row in d]) <= args.alpha
            bet = betting_pvalue(d, args.margin, low=-1.0, high=1.0) <= args.alpha
            cells = [f"{p:.4f} ± {np.sqrt(p * (1 - p) / args.runs):.4f}" for p in (flip.mean(), bet.mean())]
            print(f"| {label} | {n} | {cells[0]} | {cells[1]} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
