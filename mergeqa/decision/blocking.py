"""The blocking rate: the chance that CI goes red for a merge exactly as good as its reference, on
one fixed-n paired comparison of 0/1 items, under the configured policy. With the default
(inconclusive = "fail") it is the chance the merge is not *shown* non-inferior, far above alpha
at small n; alpha bounds only the chance of a false "fail".

Exact: a sum over every (wins, losses) table within eight standard deviations, through the gate's
own decision (`significance.decide` on exact McNemar and Tango's test). Not for the sequential
mode, graded items or the judge's A/B rule.
"""

from __future__ import annotations

import math

import numpy as np

from mergeqa.stats import mcnemar_pvalue, tango_pvalue
from mergeqa.stats._base import check_alpha, check_choice, check_count, check_margin

POLICIES = ("fail", "warn", "significant_drop")


def blocking_line(c, reference: str = "reference") -> str | None:
    """One line for an inconclusive 0/1 comparison (a `significance.PairedComparison`): its blocking
    rate at the observed n and discordance; None for graded items or a decided comparison."""
    if c.verdict != "inconclusive" or not c.method.startswith("mcnemar") or c.n < 2 or not math.isfinite(c.spread):
        return None
    discordance = min(1.0, c.spread**2 * (c.n - 1) / c.n + c.effect**2)  # (wins + losses) / n
    rate = blocking_rate(c.n, c.margin, discordance=discordance, alpha=c.alpha / c.references)
    return (f"blocking rate {rate:.2f}: a merge exactly as good as {reference} is not shown non-inferior that "
            f"often at n={c.n} with {discordance:.0%} of items discordant (with inconclusive = \"fail\" CI goes "
            "red; alpha bounds only a false fail)")


def blocking_rate(n: int, margin: float, *, discordance: float, alpha: float = 0.05, policy: str = "fail") -> float:
    """P(the comparison does not leave the test green) for a merge exactly as good as the
    reference: each item a win or a loss with probability discordance / 2, else a tie.

    `policy`: "fail" (`[statistics] inconclusive = "fail"`, the default: inconclusive blocks too),
    "warn" (only a fail blocks: at most alpha), "significant_drop" (`decision =
    "significant_drop"`: blocks only when the drop beyond the margin is significant).
    """
    check_count("n", n)
    margin, alpha = check_margin(margin), check_alpha(alpha)
    check_choice("policy", policy, POLICIES)
    if not 0 <= discordance <= 1:
        raise ValueError(f"discordance={discordance!r}: the share of items the two models score "
                         "differently, in [0, 1] (e.g. 0.2)")
    from scipy.special import gammaln

    from mergeqa.decision.significance import decide

    p = discordance / 2
    if p == 0:
        wins = losses = np.zeros(1, dtype=int)
        log_pmf = np.zeros(1)
    else:
        spread = 8 * math.sqrt(n * p) + 5
        span = np.arange(max(0, int(n * p - spread)), min(n, int(n * p + spread)) + 1)
        wins, losses = (x.ravel() for x in np.meshgrid(span, span, indexing="ij"))
        keep = wins + losses <= n
        wins, losses = wins[keep], losses[keep]
        rest = n - wins - losses
        with np.errstate(divide="ignore", invalid="ignore"):  # discordance 1: no ties possible
            ties = np.where(rest > 0, rest * np.log1p(-2 * p), 0.0)
        log_pmf = (gammaln(n + 1) - gammaln(wins + 1) - gammaln(losses + 1) - gammaln(rest + 1)
                   + (wins + losses) * math.log(p) + ties)
    pmf = np.exp(log_pmf)
    if policy == "significant_drop":
        blocked = np.asarray(tango_pvalue(wins, losses, n, effect0=-margin, alternative="less")) <= alpha
    else:
        verdict = np.asarray(decide(mcnemar_pvalue(wins, losses, alternative="less"),
                                    tango_pvalue(wins, losses, n, effect0=-margin), alpha))
        blocked = verdict != "pass" if policy == "fail" else verdict == "fail"
    return float(min(1.0, pmf[blocked].sum()))
