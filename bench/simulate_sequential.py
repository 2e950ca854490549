"""Simulate the sequential early stop against the fixed-n gate and print a markdown table: items
evaluated (mean, 90th percentile), verdict rates, false fails with identical models and false
passes when the true drop exceeds the margin, at n_max = 1000 and 10000.

Every trial draws a task of n_max paired 0/1 items and hands it to
`mergeqa.stats.sequential.compare_sequential`, the function the gate calls; the fixed-n verdict
on all n_max items is the gate's own (exact McNemar + Tango, `significance.decide`). Checks
printed under the table: the regression e-value against scipy's binomial likelihood ratio, the
fixed-n McNemar p-value against scipy.stats.binomtest, `run_sequential` (batch-by-batch scoring)
against `compare_sequential` on whole tasks, and the exact false-fail bound for identical models.
Run: .venv/bin/python bench/simulate_sequential.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from mergeqa.decision.significance import decide
from mergeqa.stats import mcnemar_pvalue, tango_pvalue
from mergeqa.stats.sequential import (
    DEFAULT_BATCH,
    compare_sequential,
    log_evalue_regression,
    run_sequential,
)

ALPHA, MARGIN = 0.05, 0.01
DISCORDANCE = 0.15  # share of items the two models score differently
ACCURACY = 0.7  # the reference's accuracy (only shapes the items; the tests read differences)
SCENARIOS = (("identical models", 0.0), ("1-point drop (= margin)", -0.01), ("2-point drop", -0.02),
             ("5-point drop", -0.05))


def draw_task(rng, n: int, effect: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-item 0/1 outcomes (merged, reference) of a task with this true accuracy effect."""
    win, loss = (DISCORDANCE + effect) / 2, (DISCORDANCE - effect) / 2
    kind = rng.choice(3, size=n, p=[loss, 1 - DISCORDANCE, win])  # 0 loss, 1 tie, 2 win
    tie_right = rng.random(n) < (ACCURACY - loss) / (1 - DISCORDANCE)
    reference = np.where(kind == 0, 1, np.where(kind == 2, 0, tie_right)).astype(int)
    merged = np.where(kind == 0, 0, np.where(kind == 2, 1, tie_right)).astype(int)
    return merged, reference


def fixed_n_verdicts(wins: np.ndarray, losses: np.ndarray, n: int) -> np.ndarray:
    """The gate's fixed-n verdicts on every item: exact McNemar and Tango at the margin."""
    p_regression = mcnemar_pvalue(wins, losses, alternative="less")
    p_noninferiority = tango_pvalue(wins, losses, n, effect0=-MARGIN)
    return decide(p_regression, p_noninferiority, ALPHA)


def exact_false_fail_bound(n: int, discordance: float = DISCORDANCE) -> float:
    """P(the regression e-value ever reaches 1/alpha) for identical models, looking after every
    discordant pair (more looks than the gate takes, so an upper bound on its false-fail rate).

    Given m discordant pairs, losses ~ Binomial(m, 1/2) step by step: a dynamic programme over
    the loss count, absorbing at the boundary, weighted by m ~ Binomial(n, discordance)."""
    from scipy.stats import binom

    top = int(binom.ppf(1 - 1e-12, n, discordance))
    threshold = math.log(1 / ALPHA)
    alive = np.array([1.0])  # P(loss count = k, not crossed yet) after m discordant pairs
    crossed_by = np.zeros(top + 1)
    for m in range(1, top + 1):
        step = np.zeros(m + 1)
        step[:-1] += 0.5 * alive
        step[1:] += 0.5 * alive
        losses = np.arange(m + 1)
        hit = log_evalue_regression(m - losses, losses) >= threshold
        crossed_by[m] = crossed_by[m - 1] + step[hit].sum()
        alive = np.where(hit, 0.0, step)
    weights = binom.pmf(np.arange(top + 1), n, discordance)
    return float(weights @ crossed_by)


def simulate(rng, n_max: int, effect: float, runs: int, batch: int) -> dict:
    used, verdict, fixed = np.empty(runs, int), np.empty(runs, object), np.empty(runs, object)
    wins, losses = np.empty(runs, int), np.empty(runs, int)
    for run in range(runs):
        merged, reference = draw_task(rng, n_max, effect)
        result = compare_sequential(merged, reference, margin=MARGIN, alpha=ALPHA, n_max=n_max,
                                    batch=batch)
        used[run], verdict[run] = result.n, result.verdict
        wins[run] = int(np.sum(merged > reference))
        losses[run] = int(np.sum(merged < reference))
    fixed[:] = fixed_n_verdicts(wins, losses, n_max)
    return {"used": used, "verdict": verdict, "fixed": fixed}


def rate(flags: np.ndarray) -> str:
    p = flags.mean()
    return f"{p:.3f} ± {math.sqrt(p * (1 - p) / flags.size):.3f}"


def table_row(name: str, effect: float, n_max: int, sim: dict) -> str:
    used, seq, fixed = sim["used"], sim["verdict"], sim["fixed"]
    wrong = "fail" if effect == 0 else "pass"  # a fail with identical models; a pass beyond the margin
    right = "pass" if effect == 0 else "fail"
    return (f"| {name} | {n_max} | {used.mean():.0f} | {np.percentile(used, 90):.0f} "
            f"| {100 * (1 - used.mean() / n_max):.0f} % | {rate(seq == right)} | {rate(fixed == right)} "
            f"| false {wrong}: {rate(seq == wrong)} | false {wrong}: {rate(fixed == wrong)} "
            f"| {rate(seq == 'inconclusive')} | {rate(fixed == 'inconclusive')} |")


def scipy_checks(rng) -> list[str]:
    """The statistics against scipy and the batch-by-batch driver against the one-call form."""
    from scipy.special import logsumexp
    from scipy.stats import binom, binomtest

    from mergeqa.stats.sequential import BETS

    lines = []
    counts = rng.integers(0, 200, size=(200, 2))
    ours = log_evalue_regression(counts[:, 0], counts[:, 1])
    m = counts.sum(1)[:, None]
    ratio = binom.logpmf(counts[:, 1:2], m, (1 + BETS) / 2) - binom.logpmf(counts[:, 1:2], m, 0.5)
    theirs = logsumexp(ratio, axis=1) - math.log(BETS.size)
    lines.append(f"regression log e-value vs scipy binomial likelihood ratio mixture: max |diff| "
                 f"= {np.abs(ours - theirs).max():.2e} over 200 count pairs")
    p_ours = mcnemar_pvalue(counts[:, 0], counts[:, 1], alternative="less")
    p_scipy = [binomtest(int(w), int(w + l), 0.5, alternative="less").pvalue if w + l else 1.0
               for w, l in counts]
    lines.append(f"fixed-n exact McNemar p vs scipy.stats.binomtest: max |diff| = "
                 f"{np.abs(p_ours - p_scipy).max():.2e}")
    agree = 0
    for run in range(50):
        merged, reference = draw_task(rng, 1000, -0.05 if run % 2 else 0.0)
        order = np.random.default_rng(run).permutation(1000)
        inverse = np.argsort(order)  # items stored so that the seeded order reads them in draw order
        one = compare_sequential(merged, reference, margin=MARGIN, n_max=1000)
        stepped = run_sequential(lambda ids: (merged[inverse[ids]], reference[inverse[ids]]), 1000,
                                 margin=MARGIN, seed=run)
        agree += (one.verdict, one.n) == (stepped.verdict, stepped.n)
    lines.append(f"run_sequential (scored batch by batch) = compare_sequential: {agree}/50 trials")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, metavar="N", help="trials per row (2000)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, metavar="B",
                        help=f"items per look ({DEFAULT_BATCH})")
    parser.add_argument("--seed", type=int, default=20240501, metavar="S", help="seed")
    args = parser.parse_args()
    rng, started = np.random.default_rng(args.seed), time.perf_counter()
    rows = [table_row(name, effect, n_max, simulate(rng, n_max, effect, args.runs, args.batch))
            for n_max in (1000, 10_000) for name, effect in SCENARIOS]
    print(f"alpha={ALPHA} (one-sided), margin={100 * MARGIN:g} pt, discordance={DISCORDANCE}, "
          f"batch={args.batch}, runs={args.runs}, seed={args.seed}\n")
    print("| true effect | n_max | items mean | items p90 | saved | right verdict, sequential "
          "| right verdict, fixed-n | wrong verdict, sequential | wrong verdict, fixed-n "
          "| inconclusive, sequential | inconclusive, fixed-n |")
    print("|---|---:|---:|---:|---:|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    for n_max in (1000, 10_000):
        print(f"exact bound on the sequential false-fail rate, identical models, n_max={n_max}: "
              f"{exact_false_fail_bound(n_max):.4f} (<= alpha = {ALPHA})")
    print("\n".join(scipy_checks(rng)))
    print(f"\nwall time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
