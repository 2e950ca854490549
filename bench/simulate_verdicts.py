"""Verdict rates of the retention gate under its default policy, by simulation.

    .venv/bin/python bench/simulate_verdicts.py [--runs 2000] [--seed 0]

Each run draws n paired 0/1 items (parent accuracy 0.80, 10 % of items scored differently by
the two models, a true effect merged - parent) and decides exactly as the gate does: exact
McNemar for a regression, Tango's score test for non-inferiority at the margin the point rule
tolerates ((1 - min_retention) x parent score = 4 points), `[statistics] inconclusive = "fail"`.
"Green" is what leaves CI green: pass only under the default policy (pass or inconclusive under
the opt-out "warn"). The table is scenario x n -> rates, with the Monte Carlo standard error.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeqa.decision.significance import compare_paired  # noqa: E402

PARENT_ACC, DISCORDANCE, MIN_RETENTION, ALPHA = 0.80, 0.10, 0.95, 0.05
MARGIN = (1 - MIN_RETENTION) * PARENT_ACC  # 0.04


def draw(n: int, effect: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n paired outcomes: wins (merged right, parent wrong) and losses at rates (d +- effect)/2."""
    p_win, p_loss = (DISCORDANCE + effect) / 2, (DISCORDANCE - effect) / 2
    p_both = PARENT_ACC - p_loss  # parent right and merged right
    wins, losses, both, _ = rng.multinomial(n, [p_win, p_loss, p_both, 1 - p_win - p_loss - p_both])
    merged = np.r_[np.ones(wins), np.zeros(losses), np.ones(both), np.zeros(n - wins - losses - both)]
    parent = np.r_[np.zeros(wins), np.ones(losses), np.ones(both), np.zeros(n - wins - losses - both)]
    return merged, parent


def rates(n: int, effect: float, runs: int, rng) -> dict[str, float]:
    counts = {"pass": 0, "fail": 0, "inconclusive": 0}
    for _ in range(runs):
        merged, parent = draw(n, effect, rng)
        counts[compare_paired(merged, parent, margin=MARGIN, alpha=ALPHA).verdict] += 1
    return {k: v / runs for k, v in counts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    se = lambda p: math.sqrt(max(p * (1 - p), 1e-12) / args.runs)  # noqa: E731
    scenarios = [("identical (effect 0)", 0.0, (100, 1000, 10000)),
                 ("drop 0 at n=50", 0.0, (50,)),
                 (f"drop = margin ({100 * MARGIN:g} pts)", -MARGIN, (100, 1000, 10000)),
                 (f"drop = 2 x margin ({200 * MARGIN:g} pts)", -2 * MARGIN, (100, 1000, 10000)),
                 ("true 5-point drop", -0.05, (100, 1000, 10000))]
    print(f"parent accuracy {PARENT_ACC}, discordance {DISCORDANCE}, margin {MARGIN:.3f}, alpha {ALPHA}, "
          f"{args.runs} runs per cell, seed {args.seed}\n")
    print("| scenario | n | pass | fail | inconclusive | green (default: fail) | green (opt-out: warn) | bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    ok = True
    for name, effect, ns in scenarios:
        for n in ns:
            r = rates(n, effect, args.runs, rng)
            green, green_warn = r["pass"], r["pass"] + r["inconclusive"]
            bound = ""
            if effect <= -MARGIN:  # a drop of at least the margin must end green at most alpha of the time
                limit = ALPHA + 2 * se(ALPHA)
                bound = f"green <= {limit:.3f}: {'ok' if green <= limit else 'VIOLATED'}"
                ok &= green <= limit
            print(f"| {name} | {n} | {r['pass']:.3f} | {r['fail']:.3f} | {r['inconclusive']:.3f} | "
                  f"{green:.3f} | {green_warn:.3f} | {bound} |")
    print(f"\nMonte Carlo SE at rate 0.05: {se(0.05):.4f}. Every drop >= margin green <= alpha + 2 SE: "
          f"{'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
