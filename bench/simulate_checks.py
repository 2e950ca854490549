"""Every check that decides non-inferiority, simulated with the true drop exactly at its margin
(a false pass) and with the merge as good as its reference (power), through the gate's own tests:
how often each passes, for a loss concentrated on 1/18 or 1/5 of the items or spread over all.
A false pass should stay <= alpha + 2 Monte Carlo SE in every cell (issue 26).

    .venv/bin/python bench/simulate_checks.py                 # 2000 runs per cell, n 20..1000
    .venv/bin/python bench/simulate_checks.py --runs 500 --n 20 80 --checks retention judge.score

Checks and the test each uses (what `compare_paired` resolves to, or the check's own rule):

- retention: 0/1 items against the owner, margin 5 % of its observed score (exact McNemar for a
  regression, Tango's score test for non-inferiority);
- regression: 0/1 items against each of two parents at alpha / 2 (`against_each`), margin 2 % of
  each parent's observed score; the merge at the margin below both;
- no-owner: 0/1 items against the per-item mean of two parents (betting on [0, 1]);
- graded: per-item scores in [0, 1] (f1-like) against the owner (betting on [0, 1]);
- perplexity: per-document log-likelihoods, no known range (the sign-flip test, 2000 flips);
- judge.score: ratings 1-10 against the parents' mean, margin 0.5 (betting on [1, 10]);
- probing: item scores averaged over 3 probe seeds, against each of two parents at alpha / 2,
  margin 0.03 (betting on [0, 1]);
- conflict.rate: a rate at its 0.05 ceiling (Clopper-Pearson at 1 - 2 alpha);
- ab: win rate with ties as half at its 0.45 floor (the exact unconditional test), n <= 160
  (each table's exact p-value takes ~0.3 s at n = 1000).

"1/18 of the items" means the whole drop sits on a random share 1/18 of the items (a skill lost
on a subset) with symmetric noise elsewhere; "spread" is the same drop on every item. For a rate
(conflict.rate, ab) items are independent draws, so a concentrated loss is the same Bernoulli /
trinomial law at the item level: its rows show the tie structure instead (ab: 1/18 = no wins,
the loss on 10 % of questions, the rest ties; 1/5 = 10 % wins, 20 % losses; spread = 30 / 40 / 30).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeqa.decision.significance import decide  # noqa: E402
from mergeqa.stats import SignFlipNull, clopper_pearson_interval, mcnemar_pvalue, tango_pvalue  # noqa: E402
from mergeqa.stats.betting import betting_pvalue, pvalue_at  # noqa: E402
from mergeqa.stats.exact_paired import exact_tango_pvalue  # noqa: E402

SCENARIOS = ("1/18", "1/5", "spread", "none")
CHECKS = ("retention", "regression", "no-owner", "graded", "perplexity", "judge.score", "probing",
          "conflict.rate", "ab")
MIN_RETENTION, TOLERANCE = 0.95, 0.02


def _share(scenario: str) -> float:
    return 1.0 if scenario in ("spread", "none") else 1 / int(scenario[2:])


def _binary_models(rng, runs, n, scenario, drop_of, parents: int):
    """(merged, [parents]) 0/1 arrays (runs, n): a shared correctness (0.8) with 5 % of items
    flipped per model; the merge loses on a share of items (only where it would be right) so its
    expected accuracy is `drop_of(0.77)` below each parent's (0.77 = 0.8 x 0.95 + 0.2 x 0.05)."""
    base = rng.random((runs, n)) < 0.8

    def noisy():
        return base ^ (rng.random((runs, n)) < 0.05)

    merged = noisy()
    if scenario != "none":
        s = _share(scenario)
        q = drop_of(0.77) / (s * 0.77)
        affected = rng.random((runs, n)) < s
        merged = merged & ~(affected & (rng.random((runs, n)) < q))
    return merged.astype(float), [noisy().astype(float) for _ in range(parents)]


def _mcnemar_pvalues(merged, ref, margin, alpha):
    """compare_paired's 'mcnemar' p-values (regression, non-inferiority), vectorised over runs."""
    wins = ((merged == 1) & (ref == 0)).sum(-1)
    losses = ((merged == 0) & (ref == 1)).sum(-1)
    n = merged.shape[-1]
    return (np.asarray(mcnemar_pvalue(wins, losses, alternative="less")),
            np.asarray(tango_pvalue(wins, losses, n, effect0=-margin)))


def _betting(merged, ref, margin, low, high):
    """compare_paired's 'betting' p-values (regression, non-inferiority), vectorised over runs."""
    d = merged - ref
    width = high - low
    p_ni = np.concatenate([betting_pvalue(chunk, m, low=-width, high=width) if np.ndim(m) == 0 else
                           np.array([float(betting_pvalue(row, float(mm), low=-width, high=width))
                                     for row, mm in zip(chunk, m)])
                           for chunk, m in _chunks(d, margin)])
    p_reg = np.array([pvalue_at(-row, 0.0, -width, width) for row in d])
    return p_reg, p_ni


def _chunks(d, margin, size=250):
    for i in range(0, len(d), size):
        yield d[i:i + size], (margin if np.ndim(margin) == 0 else margin[i:i + size])


def _each(pairs, alpha):
    """against_each over two parents, vectorised: pass when min p_ni x 2 <= alpha, fail when
    every p_reg <= alpha / 2 (each comparison at alpha / 2)."""
    p_ni = np.minimum(1.0, len(pairs) * np.min([p for _, p in pairs], axis=0))
    p_reg = np.max([p for p, _ in pairs], axis=0)
    return decide(p_reg, p_ni, alpha)


def simulate(check: str, scenario: str, n: int, runs: int, alpha: float, rng) -> np.ndarray:
    """Verdicts ('pass' / 'fail' / 'inconclusive') of `runs` simulated runs."""
    s = _share(scenario)
    at_margin = scenario != "none"
    if check == "retention":
        merged, (owner,) = _binary_models(rng, runs, n, scenario, lambda acc: (1 - MIN_RETENTION) * acc, 1)
        margin = (1 - MIN_RETENTION) * owner.mean(-1)  # the gate's plug-in: 5 % of the owner's score here
        return decide(*_mcnemar_pvalues(merged, owner, margin, alpha), alpha)
    if check == "regression":
        merged, parents = _binary_models(rng, runs, n, scenario, lambda acc: TOLERANCE * acc, 2)
        pairs = [_mcnemar_pvalues(merged, p, TOLERANCE * p.mean(-1), alpha / 2) for p in parents]
        return _each([(pr, pn) for pr, pn in pairs], alpha)
    if check == "no-owner":
        merged, parents = _binary_models(rng, runs, n, scenario, lambda acc: (1 - MIN_RETENTION) * acc, 2)
        mean = np.mean(parents, axis=0)
        margin = (1 - MIN_RETENTION) * mean.mean(-1)
        return decide(*_betting(merged, mean, margin, 0.0, 1.0), alpha)
    if check == "graded":
        ref = rng.uniform(0.75, 0.85, (runs, n))
        u = rng.random((runs, n))
        merged = ref + np.where(u < 0.15, -0.1, np.where(u < 0.3, 0.1, 0.0))
        margin = (1 - MIN_RETENTION) * 0.8
        if at_margin:
            affected = rng.random((runs, n)) < s
            merged = np.where(affected, merged - margin / s, merged)
        merged = np.clip(merged, 0.0, 1.0)
        return decide(*_betting(merged, ref, (1 - MIN_RETENTION) * ref.mean(-1), 0.0, 1.0), alpha)
    if check == "perplexity":
        ref = rng.normal(-3.0, 0.5, (runs, n))
        margin = -np.log(MIN_RETENTION)
        merged = ref + rng.normal(0.0, 0.1, (runs, n))
        if at_margin:
            merged -= (rng.random((runs, n)) < s) * margin / s
        out = []
        for row in merged - ref:
            null = SignFlipNull(row, n_resamples=2000, seed=0)
            out.append(decide(null.pvalue(0.0, "less"), null.pvalue(-margin, "greater"), alpha))
        return np.array(out)
    if check == "judge.score":
        u = rng.random((runs, n))
        d = np.where(u < 0.2, -1.0, np.where(u < 0.4, 1.0, 0.0))
        if at_margin:
            affected = rng.random((runs, n)) < s
            d = np.where(affected, -0.5 / s, d)
        return decide(*_betting(d, np.zeros_like(d), 0.5, 1.0, 10.0), alpha)
    if check == "probing":
        c = rng.uniform(0.7, 1.0, (runs, n))  # each item's chance a probe gets it right

        def scores(chance):
            return (rng.random((3, runs, n)) < chance).mean(0)  # three probe seeds

        loss = np.zeros((runs, n))
        if at_margin:
            loss = (rng.random((runs, n)) < s) * 0.03 / s
        merged = scores(c - loss)
        pairs = [_betting(merged, scores(c), 0.03, 0.0, 1.0) for _ in range(2)]
        # each against one parent at alpha / 2: _betting gives its p-values, _each combines them
        return _each(pairs, alpha)
    if check == "conflict.rate":
        rate = 0.05 if at_margin else 0.0
        if at_margin and s < 1:  # conflicts on a share s of prompts, 0.05 / s there: Bernoulli(0.05) per pair
            conflicts = ((rng.random((runs, n)) < s) & (rng.random((runs, n)) < 0.05 / s)).sum(-1)
        else:
            conflicts = rng.binomial(n, rate if at_margin else 0.01, runs)
        low, high = clopper_pearson_interval(conflicts, np.full(runs, n), confidence=1 - 2 * alpha)
        return np.where(high < 0.05, "pass", np.where(low >= 0.05, "fail", "inconclusive"))
    if check == "ab":
        probs = {"1/18": (0.0, 0.1), "1/5": (0.1, 0.2), "spread": (0.3, 0.4), "none": (0.25, 0.25)}[scenario]
        counts = rng.multinomial(n, [probs[0], probs[1], 1 - sum(probs)], size=runs)
        memo: dict = {}
        out = []
        for w, l, _ in counts:
            key = (int(w), int(l))
            if key not in memo:
                above = exact_tango_pvalue(w, l, n, effect0=-0.1)
                below = exact_tango_pvalue(w, l, n, effect0=-0.1, alternative="less") if above > alpha else 1.0
                memo[key] = decide(below, above, alpha)
            out.append(memo[key])
        return np.array(out)
    raise ValueError(check)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--n", type=int, nargs="+", default=[20, 40, 80, 160, 1000])
    ap.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    print(f"pass rate (± 1 Monte Carlo SE) of {args.runs} runs per cell, alpha {args.alpha}; the first three "
          "columns are false passes (true drop exactly at the margin), the last is power (as good as the reference)."
          " A cell marked ! is above alpha + 2 SE.\n")
    print("| check | n | margin, on 1/18 of the items | on 1/5 | spread over all | as good (power) |")
    print("|---|---:|---:|---:|---:|---:|")
    worst = 0.0
    for check in args.checks:
        for n in args.n:
            if check == "ab" and n > 160:
                continue
            rng = np.random.default_rng([CHECKS.index(check), n])
            cells = []
            for scenario in SCENARIOS:
                rate = float((simulate(check, scenario, n, args.runs, args.alpha, rng) == "pass").mean())
                se = np.sqrt(rate * (1 - rate) / args.runs)
                flag = " !" if scenario != "none" and rate > args.alpha + 2 * max(se, 1e-12) else ""
                if scenario != "none":
                    worst = max(worst, rate - args.alpha - 2 * se)
                cells.append(f"{rate:.4f} ± {se:.4f}{flag}")
            print(f"| {check} | {n} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s; largest excess over alpha + 2 SE: {max(worst, 0):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
