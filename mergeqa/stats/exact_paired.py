"""Exact unconditional test for a paired difference of proportions with a non-zero margin
(Chan 1998, "Exact tests of equivalence and efficacy with a non-zero lower bound for comparative
studies"; Tango's score statistic orders the tables): per item a win, a loss or a tie, effect =
P(win) - P(loss), H0: effect <= effect0. The p-value is the largest probability, over the
nuisance (the tie rate) on the boundary effect = effect0, of a table at least as extreme as the
one observed, summed exactly over every (wins, losses) table within 9 standard deviations.

The gate's A/B rule uses it: a win rate with ties as half a win is 0.5 + effect / 2, so "win rate
above 0.45" is "effect above -0.1". Tango's asymptotic test runs above alpha there (0.058 at 20
questions, 0.071 at 30, 0.060 at 120); Clopper-Pearson on the win count rounded ignores that ties
carry less variance than a win or a loss. `bench/simulate_checks.py` has its size and power.
"""

from __future__ import annotations

import math

import numpy as np

from mergeqa.stats._base import check_alternative
from mergeqa.stats.mcnemar import tango_statistic

GRID = 64  # nuisance values on the boundary, then a finer look around the largest


def _tail(wins: int, losses: int, n: int, effect0: float, p_loss: float, upper: bool, t_obs: float) -> float:
    """P(T >= t_obs) (upper) or P(T <= t_obs) under P(win) = p_loss + effect0, P(loss) = p_loss."""
    from scipy.special import gammaln

    p_win = p_loss + effect0
    spans = []
    for p in (p_win, p_loss):
        sd = math.sqrt(n * p * (1 - p))
        spans.append(np.arange(max(0, int(n * p - 9 * sd - 5)), min(n, int(n * p + 9 * sd + 5)) + 1))
    w, l = (x.ravel() for x in np.meshgrid(*spans, indexing="ij"))
    keep = w + l <= n
    w, l = w[keep], l[keep]
    rest = n - w - l
    p_tie = max(0.0, 1.0 - p_win - p_loss)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = (gammaln(n + 1) - gammaln(w + 1) - gammaln(l + 1) - gammaln(rest + 1)
                   + np.where(w > 0, w * np.log(p_win), 0.0) + np.where(l > 0, l * np.log(p_loss), 0.0)
                   + np.where(rest > 0, rest * np.log(p_tie), 0.0))
    log_pmf = np.where(np.isnan(log_pmf), -np.inf, log_pmf)
    t = tango_statistic(w, l, n, effect0)
    extreme = t >= t_obs - 1e-9 if upper else t <= t_obs + 1e-9
    return float(np.exp(log_pmf[extreme]).sum())


def _tails_all(n: int, effect0: float, p_loss: np.ndarray, upper: bool, t_obs: float) -> np.ndarray:
    """`_tail` at every nuisance value of `p_loss` at once, over every table (small n)."""
    from scipy.special import gammaln

    w, l = (x.ravel() for x in np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij"))
    keep = w + l <= n
    w, l = w[keep], l[keep]
    t = tango_statistic(w, l, n, effect0)
    extreme = t >= t_obs - 1e-9 if upper else t <= t_obs + 1e-9
    w, l = w[extreme], l[extreme]
    rest = n - w - l
    p_win, p_tie = p_loss + effect0, np.maximum(0.0, 1.0 - 2 * p_loss - effect0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = ((gammaln(n + 1) - gammaln(w + 1) - gammaln(l + 1) - gammaln(rest + 1))[:, None]
                   + np.where(w[:, None] > 0, w[:, None] * np.log(p_win), 0.0)
                   + np.where(l[:, None] > 0, l[:, None] * np.log(p_loss), 0.0)
                   + np.where(rest[:, None] > 0, rest[:, None] * np.log(p_tie), 0.0))
    return np.exp(np.where(np.isnan(log_pmf), -np.inf, log_pmf)).sum(axis=0)


def exact_tango_pvalue(wins: int, losses: int, n: int, *, effect0: float, alternative: str = "greater") -> float:
    """Exact unconditional p-value of H0: effect <= effect0 ('greater') or >= effect0 ('less'),
    effect = P(win) - P(loss), from `wins` and `losses` of `n` paired items (the rest ties)."""
    check_alternative(alternative)
    if alternative == "two-sided":
        raise ValueError("exact_tango_pvalue is one-sided: alternative='greater' or 'less'")
    if not -1 < effect0 < 1:
        raise ValueError(f"effect0={effect0!r}: a difference of two proportions, in (-1, 1)")
    wins, losses, n = int(wins), int(losses), int(n)
    if n == 0:
        return 1.0
    upper = alternative == "greater"
    t_obs = float(tango_statistic(wins, losses, n, effect0))
    lo, hi = max(0.0, -effect0), (1.0 - effect0) / 2  # P(loss) on the boundary: P(win) >= 0, no more than all items
    grid = np.linspace(lo, hi, GRID)
    step = (hi - lo) / (GRID - 1)
    if n <= 200:  # every table at once
        tails = _tails_all(n, effect0, grid, upper, t_obs)
        best = grid[int(np.argmax(tails))]
        fine = _tails_all(n, effect0, np.linspace(max(lo, best - step), min(hi, best + step), 17), upper, t_obs)
        return float(min(1.0, max(tails.max(), fine.max())))
    tails = [_tail(wins, losses, n, effect0, p, upper, t_obs) for p in grid]
    best = grid[int(np.argmax(tails))]
    fine = np.linspace(max(lo, best - step), min(hi, best + step), 17)
    return float(min(1.0, max(max(tails), *(_tail(wins, losses, n, effect0, p, upper, t_obs) for p in fine))))


def exact_tango_interval(wins: int, losses: int, n: int, *, confidence: float, tol: float = 1e-3) -> tuple[float, float]:
    """The effects neither one-sided exact test rejects at (1 - confidence) / 2 each: (L, U) with
    L the largest effect0 that 'greater' rejects, U the smallest that 'less' rejects (bisection)."""
    side = (1 - confidence) / 2

    def edge(alternative: str) -> float:
        rejects = (lambda e: exact_tango_pvalue(wins, losses, n, effect0=e, alternative=alternative) <= side)
        observed = (wins - losses) / n if n else 0.0
        a, b = (-1 + tol, observed) if alternative == "greater" else (observed, 1 - tol)
        if alternative == "greater" and not rejects(a):
            return -1.0
        if alternative == "less" and not rejects(b):
            return 1.0
        while b - a > tol:  # 'greater' rejects below the edge, 'less' above it
            mid = (a + b) / 2
            if rejects(mid) == (alternative == "greater"):
                a = mid
            else:
                b = mid
        return a if alternative == "greater" else b

    return edge("greater"), edge("less")


def pass_rate(n, effect: float, discordance: float, effect0: float, *, alpha: float = 0.05):
    """About how often the exact test shows effect > effect0 at n items when the truth is `effect`
    with `discordance` the share of items not tied (normal approximation of the score test; the
    exact test is a little more conservative). Vectorised over n."""
    from scipy.special import ndtr, ndtri

    spread = math.sqrt(max(discordance - effect**2, 1e-12))
    return ndtr((effect - effect0) * np.sqrt(np.asarray(n, dtype=float)) / spread - ndtri(1 - alpha))


def items_to_pass(effect: float, discordance: float, effect0: float, *, alpha: float = 0.05,
                  power: float = 0.8) -> int | None:
    """About the fewest items at which a true `effect` passes with probability `power`; None when
    effect <= effect0 (never, beyond alpha)."""
    from scipy.special import ndtri

    if effect <= effect0:
        return None
    spread2 = max(discordance - effect**2, 1e-12)
    return int(math.ceil((ndtri(1 - alpha) + ndtri(power)) ** 2 * spread2 / (effect - effect0) ** 2))
