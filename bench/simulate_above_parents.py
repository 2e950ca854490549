"""Simulate the "above both parents on probing" claim (`mergeqa.probing.divergence.above_parents`):
how often one merge is claimed above both parents, by true effect, at the pooled size of the
built-in probing sets. Prints a markdown table.

Items are 0/1 probe outcomes. A shared vector of correct items (accuracy `--accuracy`) is copied
to each model with a share `--discordance` of items redrawn at random (so two equal models still
disagree on some items, as seeds and layers make them); the merge then gets `effect` of the items
it had wrong right. "one parent" moves one parent up with the merge: above the other, not both.
Run: .venv/bin/python bench/simulate_above_parents.py [--runs 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeqa.probing.divergence import above_parents  # noqa: E402

N_ITEMS = 1050  # 7 built-in phenomena x 150 test items (30 % of 504), pooled


def model(rng, shared: np.ndarray, discordance: float, accuracy: float, effect: float) -> np.ndarray:
    out = shared.copy()
    redraw = rng.random(out.size) < discordance
    out[redraw] = rng.random(redraw.sum()) < accuracy
    wrong = np.flatnonzero(out == 0)
    out[rng.choice(wrong, min(wrong.size, round(effect * out.size)), replace=False)] = 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--n", type=int, default=N_ITEMS)
    ap.add_argument("--accuracy", type=float, default=0.95)
    ap.add_argument("--discordance", type=float, default=0.05)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args(argv)
    scenarios = [("identical", 0.0, 0.0), ("one parent as good", 0.02, 0.02),
                 ("above both by 0.5 pt", 0.005, 0.0), ("above both by 1 pt", 0.01, 0.0),
                 ("above both by 2 pts", 0.02, 0.0), ("above both by 3 pts", 0.03, 0.0)]
    t0 = time.perf_counter()
    print(f"n = {args.n} pooled test items, accuracy {args.accuracy}, discordance {args.discordance}, "
          f"alpha {args.alpha}, {args.runs} runs per row (one merge; Holm over several merges is stricter)\n")
    print("| scenario | merge effect | parent b effect | claimed above both | 95% MC half-width |")
    print("|---|---:|---:|---:|---:|")
    for i, (label, effect, b_effect) in enumerate(scenarios):
        rng = np.random.default_rng(1000 + i)
        claims = 0
        for _ in range(args.runs):
            shared = (rng.random(args.n) < args.accuracy).astype(float)
            a = model(rng, shared, args.discordance, args.accuracy, 0.0)
            b = model(rng, shared, args.discordance, args.accuracy, b_effect)
            m = model(rng, shared, args.discordance, args.accuracy, effect)
            claims += above_parents("m", m, {"a": a, "b": b}).p <= args.alpha
        rate = claims / args.runs
        half = 1.96 * np.sqrt(max(rate * (1 - rate), 1e-9) / args.runs)
        print(f"| {label} | {100 * effect:+.1f} pts | {100 * b_effect:+.1f} pts | {rate:.3f} | {half:.3f} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
