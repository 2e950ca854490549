"""Simulate the regression check (merge within `tolerance` of its weakest parent) with two parents
of similar score: how often a merge exactly at the tolerance below both passes (a false pass) and
how often a merge as good as its parents passes (power), for the old rule (against the parent
weakest on the same items, at full alpha) and the new (`significance.against_each`: against each
parent at alpha / 2). Prints a markdown table; false passes should be <= alpha + 2 SE.

Items are 0/1. A shared vector of correct items (accuracy `--accuracy`) is copied to each model
with a share `--discordance` of items redrawn, at the rate that gives the model its true accuracy
(so models disagree on some items, as seeds and layers make them). Margins are computed as the
gate computes them (`assess._rule`: tolerance x the parent's score on these items), the tests are
the gate's (`compare_paired`, `against_each`).
Run: .venv/bin/python bench/simulate_regression.py [--runs 2000] [--n 100 300 1000 3000 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeqa.decision.significance import against_each, compare_paired  # noqa: E402
from mergeqa.retention.assess import _rule  # noqa: E402


def model(rng, shared: np.ndarray, discordance: float, accuracy: float, target: float) -> np.ndarray:
    """`shared` with a share `discordance` of items redrawn so the expected accuracy is `target`."""
    redraw_rate = (target - (1 - discordance) * accuracy) / discordance
    if not 0 <= redraw_rate <= 1:
        raise ValueError(f"accuracy {target} is out of reach at discordance {discordance}")
    out = shared.copy()
    redraw = rng.random(out.size) < discordance
    out[redraw] = rng.random(int(redraw.sum())) < redraw_rate
    return out


def verdicts(merged: np.ndarray, parents: dict[str, np.ndarray], tolerance: float, alpha: float) -> tuple[str, str]:
    """(old verdict, new verdict) of the regression check in significance mode."""
    margins = {n: _rule("regression", float(p.mean()), tolerance, True, False)[1] for n, p in parents.items()}
    weakest = min(parents, key=lambda n: parents[n].mean())
    old = compare_paired(merged, parents[weakest], margin=margins[weakest], alpha=alpha).verdict
    each = {n: compare_paired(merged, p, margin=margins[n], alpha=alpha / len(parents)) for n, p in parents.items()}
    return old, against_each(each, alpha)[1].verdict


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    ap.add_argument("--accuracy", type=float, default=0.7)
    ap.add_argument("--discordance", type=float, default=0.3)
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args(argv)
    acc, tol = args.accuracy, args.tolerance
    scenarios = [("at the tolerance below both (false pass)", acc, acc, acc * (1 - tol)),
                 ("as good as both (power)", acc, acc, acc),
                 ("at the tolerance below the weaker, other 2 pts up (false pass)", acc, acc + 0.02, acc * (1 - tol))]
    t0 = time.perf_counter()
    print(f"two parents, accuracy {acc} (discordance {args.discordance} with the shared items), tolerance {tol}, "
          f"alpha {args.alpha}; {args.runs} runs per cell; pass rate ± 1 Monte Carlo SE\n")
    print("| scenario | n | old: weakest on these items, alpha | new: each parent, alpha / 2 |")
    print("|---|---:|---:|---:|")
    for i, (label, a_acc, b_acc, m_acc) in enumerate(scenarios):
        for n in args.n:
            rng = np.random.default_rng(1000 * i + n)
            passed = np.zeros((args.runs, 2), dtype=bool)
            for r in range(args.runs):
                shared = rng.random(n) < acc
                parents = {"a": model(rng, shared, args.discordance, acc, a_acc).astype(float),
                           "b": model(rng, shared, args.discordance, acc, b_acc).astype(float)}
                merged = model(rng, shared, args.discordance, acc, m_acc).astype(float)
                passed[r] = [v == "pass" for v in verdicts(merged, parents, tol, args.alpha)]
            cells = [f"{p:.4f} ± {np.sqrt(p * (1 - p) / args.runs):.4f}" for p in passed.mean(axis=0)]
            print(f"| {label} | {n} | {cells[0]} | {cells[1]} |")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
