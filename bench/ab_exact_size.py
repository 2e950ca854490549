"""The A/B rule's exact size: the largest pass rate, over every tie rate, of a merge whose win rate
(ties as half) is exactly the floor, summed over every (wins, losses) table through the gate's
decision (`judge.evaluation.ab_pvalues`: pass when p(above the floor) <= alpha), beside Tango's
asymptotic score test on the same tables (what a normal approximation would give). No Monte
Carlo error. Also the pass rate of a merge tied with its parent (win rate 0.5) with no ties and
with half the questions tied: the power users have at MT-Bench's 80 questions.

    .venv/bin/python bench/ab_exact_size.py [--n 10 20 30 40 60 80 120 160] [--floor 0.45]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mergeqa.stats import tango_pvalue  # noqa: E402
from mergeqa.stats.exact_paired import exact_tango_pvalue  # noqa: E402


def tables(n: int):
    w, l = (x.ravel() for x in np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij"))
    keep = w + l <= n
    return w[keep], l[keep]


def log_pmf(n, w, l, p_win, p_loss):
    from scipy.special import gammaln

    t = n - w - l
    p_tie = max(0.0, 1 - p_win - p_loss)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (gammaln(n + 1) - gammaln(w + 1) - gammaln(l + 1) - gammaln(t + 1)
               + np.where(w > 0, w * np.log(p_win), 0) + np.where(l > 0, l * np.log(p_loss), 0)
               + np.where(t > 0, t * np.log(max(p_tie, 1e-300)), 0))
    return np.nan_to_num(out, nan=-np.inf)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10, 20, 30, 40, 60, 80, 120, 160])
    ap.add_argument("--floor", type=float, default=0.45)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args(argv)
    effect0 = 2 * args.floor - 1
    t0 = time.perf_counter()
    print(f"A/B at the floor {args.floor} (effect P(win) - P(loss) = {effect0:g}), alpha {args.alpha}: the largest "
          "pass rate over 41 tie rates, exact\n")
    print("| n questions | exact test (the gate) | Tango asymptotic | tied merge passes, no ties | half tied |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.n:
        w, l = tables(n)
        exact = np.array([exact_tango_pvalue(a, b, n, effect0=effect0) <= args.alpha for a, b in zip(w, l)])
        asymptotic = np.asarray(tango_pvalue(w, l, n, effect0=effect0)) <= args.alpha
        worst = {"exact": 0.0, "asymptotic": 0.0}
        for p_loss in np.linspace(-effect0, (1 - effect0) / 2, 41):
            pmf = np.exp(log_pmf(n, w, l, p_loss + effect0, p_loss))
            worst["exact"] = max(worst["exact"], float(pmf[exact].sum()))
            worst["asymptotic"] = max(worst["asymptotic"], float(pmf[asymptotic].sum()))
        tied = [float(np.exp(log_pmf(n, w, l, p, p))[exact].sum()) for p in (0.5, 0.25)]
        print(f"| {n} | {worst['exact']:.4f} | {worst['asymptotic']:.4f} | {tied[0]:.3f} | {tied[1]:.3f} |",
              flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
