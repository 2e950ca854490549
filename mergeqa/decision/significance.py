"""Verdicts for the retention and regression gates: on the same items, is the merged model
non-inferior to a parent (pass), significantly worse (fail), or can this sample not tell?

Each verdict carries its figures (effect, interval, p-values, the smallest detectable drop) for
junit and a message; the tests themselves live in `mergeqa.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import NamedTuple

import numpy as np

from mergeqa.stats import (
    SignFlipNull,
    adjust_pvalues,
    discordant_counts,
    mcnemar_pvalue,
    minimum_detectable_effect,
    minimum_detectable_shift,
    paired_ttest,
    tango_interval,
    tango_pvalue,
    ttest_interval,
)
from mergeqa.stats._base import (
    check_alpha,
    check_choice,
    check_count,
    check_margin,
    check_open_interval,
    is_binary,
    paired_arrays,
)

METHODS = ("auto", "mcnemar", "mcnemar-midp", "permutation", "ttest", "betting")
VERDICTS = ("pass", "fail", "inconclusive")
_TEST_NAMES = {
    "mcnemar": "exact McNemar",
    "mcnemar-midp": "mid-p McNemar",
    "permutation": "sign-flip",
    "ttest": "paired t",
    "betting": "betting (bounded)",
}
_HEADLINES = {
    "pass": "non-inferior (drop within the margin shown)",
    "fail": "significant regression (and not shown to be within the margin)",
    "inconclusive": "inconclusive (neither a regression nor non-inferiority shown)",
}


@dataclass(frozen=True)
class PairedComparison:
    """One merged-vs-reference comparison on the same items, and its verdict.

    `effect` is mean(merged - reference) in metric units (accuracy difference for 0/1), `ci` its
    two-sided (1 - 2 alpha) interval (90 % at alpha = 0.05: each side is a one-sided alpha test,
    so pass <=> ci[0] > -margin). `p_regression` is one-sided for H1: effect < 0, and
    `p_noninferiority` for H1: effect > -margin. `mde` is the smallest drop the regression test
    detects with probability `power` at this n and spread.
    """

    verdict: str
    effect: float
    ci: tuple[float, float]
    p_regression: float
    p_noninferiority: float
    mde: float
    n: int
    method: str
    margin: float
    alpha: float
    power: float = 0.8
    correction: str = "none"
    spread: float = math.nan  # standard deviation of the per-item differences
    alpha_share: float = 1.0  # the part of alpha the correction ran at (sequential runs: what is left)
    references: int = 1  # > 1: against each of this many parents (`against_each`); ci, mde at alpha / references
    bounds: tuple[float, float] | None = None  # the scores' range the betting test rested on

    def __post_init__(self):
        check_choice("verdict", self.verdict, VERDICTS)

    def figures(self) -> dict[str, float | str]:
        """Flat figures for junit properties (`record_property(name, value)` for each)."""
        return {
            "verdict": self.verdict,
            "effect": self.effect,
            "ci_low": self.ci[0],
            "ci_high": self.ci[1],
            "p_regression": self.p_regression,
            "p_noninferiority": self.p_noninferiority,
            "mde": self.mde,
            "n": self.n,
            "method": self.method,
            "margin": self.margin,
            "alpha": self.alpha,
            "power": self.power,
            "correction": self.correction if self.alpha_share == 1 else f"{self.correction} at {self.alpha_share:.3g} of alpha",
            "items_to_decide": self.items_to_decide(),
            **({"references": self.references} if self.references > 1 else {}),
        }

    def items_to_decide(self) -> float:
        """About how many items would decide this comparison (pass or fail) if the observed
        effect and per-item spread held: the normal approximation of the one-sided tests,
        n = (z_(1-alpha) * sd / distance)^2, for the nearer of the two decisions. inf when the
        effect sits exactly on the margin; the current n when already decided."""
        from scipy.special import ndtri

        if self.verdict != "inconclusive":
            return float(self.n)
        if self.spread == 0 and self.effect == 0 and self.method.startswith("mcnemar"):
            return concordant_n(self.margin, self.alpha)  # identical on every item so far
        if self.spread == 0 and self.effect == 0 and self.method == "betting" and self.bounds is not None:
            from mergeqa.stats.betting import items_to_show

            width = self.bounds[1] - self.bounds[0]
            return float(items_to_show(self.margin, self.alpha / self.references, low=-width))
        if not (math.isfinite(self.effect) and math.isfinite(self.spread)) or self.spread == 0:
            return math.inf
        z = float(ndtri(1 - self.alpha))
        needs = [(z * self.spread / d) ** 2 for d in (self.effect + self.margin, -self.effect) if d > 0]
        return float(max(self.n + 1, math.ceil(min(needs)))) if needs else math.inf

    def describe(self, reference: str = "reference") -> str:
        """Two lines for a failure message or report: verdict and effect, then tests and power."""
        if self.n == 0:
            return (f"inconclusive: no items were compared with {reference} (n=0); "
                    "check that the task produced per-item results for both models")
        points = self.method.startswith("mcnemar")

        def show(x: float) -> str:
            return f"{100 * x:.1f}" if points else f"{x:.4g}"

        unit = " pts" if points else ""
        level = f"{100 * (1 - 2 * self.alpha / self.references):g}%"
        share = f", at {self.alpha_share:.3g} of alpha" if self.alpha_share < 1 else ""
        adjusted = "" if self.correction == "none" else f" ({self.correction}-adjusted{share})"
        if math.isfinite(self.mde):
            detects = f"detects only drops of {show(self.mde)}{' points' if points else ''} or more"
        else:
            detects = "is too few items to detect any drop"
        needed = ""
        if self.verdict == "inconclusive":
            k = self.items_to_decide()
            needed = ("\nat the observed effect and discordance about "
                      f"{k:,.0f} items would decide it" if math.isfinite(k) and k < 1e9 else
                      "\nthe observed effect sits on the margin: no realistic number of items decides it")
            needed += ("; with --eval-limit or a small task, evaluate more items (the whole task), "
                       "or accept the risk explicitly with [statistics] inconclusive = \"warn\"")
        if self.method == "permutation":
            needed += ("\nsign-flip test: these scores have no known range, so it assumes the per-item differences "
                       "symmetric; a loss concentrated on a few items passes more often than alpha "
                       "(bench/simulate_checks.py, perplexity rows; docs/statistics.md)")
        elif self.method == "betting" and self.verdict == "inconclusive" and self.bounds is not None:
            from mergeqa.stats.betting import items_to_show

            width = self.bounds[1] - self.bounds[0]
            fewest = items_to_show(self.margin, self.alpha / self.references, low=-width)
            needed += (f"\nbetting test on the scores' range {self.bounds[0]:g}..{self.bounds[1]:g} (valid for any "
                       f"pattern of losses): even a copy of {reference} needs {fewest} items to pass at this margin")
        if self.references > 1:
            needed = (f"\nagainst each of {self.references} parents: non-inferiority shown against one at "
                      f"alpha / {self.references} holds for the weakest (Bonferroni), a regression must be "
                      f"shown against every one; the figures are against {reference}") + needed
        return (
            f"{_HEADLINES[self.verdict]}: merged - {reference} = {show(self.effect)}{unit} "
            f"({level} CI {show(self.ci[0])}..{show(self.ci[1])}), "
            f"margin {show(self.margin)}{unit}\n"
            f"{_TEST_NAMES[self.method]} p(regression)={self.p_regression:.2g}{adjusted}, "
            f"p(non-inferiority)={self.p_noninferiority:.2g}; n={self.n} {detects} "
            f"(alpha={self.alpha:g}, power={self.power:g})" + needed
        )


def decide(p_regression, p_noninferiority, alpha: float):
    """'pass' if non-inferiority is shown (p_noninferiority <= alpha), else 'fail' if a
    regression is (p_regression <= alpha), else 'inconclusive'. Vectorised over p-values.

    Pass comes first: a significant drop smaller than the margin is what the margin tolerates.
    With identical models a fail needs the regression test to reject, so false fails <= alpha.
    """
    verdict = np.where(
        np.asarray(p_noninferiority) <= alpha,
        "pass",
        np.where(np.asarray(p_regression) <= alpha, "fail", "inconclusive"),
    )
    return str(verdict) if verdict.ndim == 0 else verdict


class _Evidence(NamedTuple):
    effect: float
    ci: tuple[float, float]
    p_regression: float
    p_noninferiority: float
    mde: float


def _mcnemar_evidence(merged, reference, *, margin, alpha, power, mid_p, **_) -> _Evidence:
    """Exact McNemar for the regression; Tango's score test and interval for non-inferiority."""
    wins, losses, n = discordant_counts(merged, reference)
    low, high = tango_interval(wins, losses, n, confidence=1 - 2 * alpha)
    return _Evidence(
        effect=(wins - losses) / n,
        ci=(float(low), float(high)),
        p_regression=float(mcnemar_pvalue(wins, losses, alternative="less", mid_p=mid_p)),
        p_noninferiority=float(tango_pvalue(wins, losses, n, effect0=-margin)),
        mde=minimum_detectable_effect(n, (wins + losses) / n, alpha=alpha, power=power),
    )


def _shift_mde(d: np.ndarray, alpha: float, power: float) -> float:
    if d.size < 2:
        return math.inf
    return minimum_detectable_shift(d.size, float(d.std(ddof=1)), alpha=alpha, power=power)


def _signflip_evidence(merged, reference, *, margin, alpha, power, n_resamples, seed, **_) -> _Evidence:
    """One set of sign flips for both tests and the interval, so they always agree."""
    d = merged - reference
    null = SignFlipNull(d, n_resamples=n_resamples, seed=seed)
    return _Evidence(
        effect=float(d.mean()),
        ci=null.interval(1 - 2 * alpha),
        p_regression=null.pvalue(0.0, "less"),
        p_noninferiority=null.pvalue(-margin, "greater"),
        mde=_shift_mde(d, alpha, power),
    )


def _ttest_evidence(merged, reference, *, margin, alpha, power, **_) -> _Evidence:
    """The guide's paired t-test, shifted by the margin for non-inferiority."""
    d = merged - reference
    return _Evidence(
        effect=float(d.mean()),
        ci=ttest_interval(merged, reference, confidence=1 - 2 * alpha),
        p_regression=paired_ttest(merged, reference, alternative="less").pvalue,
        p_noninferiority=paired_ttest(
            merged, reference, alternative="greater", null=-margin
        ).pvalue,
        mde=_shift_mde(d, alpha, power),
    )


def _betting_evidence(merged, reference, *, margin, alpha, power, bounds, **_) -> _Evidence:
    """Non-inferiority by betting (Waudby-Smith & Ramdas; mergeqa.stats.betting): valid for any
    distribution of the per-item differences on their known range, skewed ones included (a skill
    lost on a few items), where the shifted sign-flip assumes symmetry. The interval is the
    betting test inverted, so pass <=> ci[0] > -margin and fail <=> ci[1] < 0 (a regression
    shown by the same betting, on the reversed differences)."""
    from mergeqa.stats.betting import betting_bounds, betting_pvalue, pvalue_at

    if bounds is None:
        raise ValueError("method='betting' needs bounds=(lowest, highest) of a per-item score")
    width = float(bounds[1]) - float(bounds[0])
    d = merged - reference
    if not margin < width:
        raise ValueError(f"margin={margin:g} must be below the scores' range {width:g}")
    return _Evidence(
        effect=float(d.mean()),
        ci=betting_bounds(d, low=-width, high=width, confidence=1 - 2 * alpha),
        p_regression=pvalue_at(-d, 0.0, -width, width),  # H0: mean(d) >= 0
        p_noninferiority=float(betting_pvalue(d, margin, low=-width, high=width)),
        mde=_shift_mde(d, alpha, power),
    )


_EVIDENCE = {
    "betting": _betting_evidence,
    "mcnemar": partial(_mcnemar_evidence, mid_p=False),
    "mcnemar-midp": partial(_mcnemar_evidence, mid_p=True),
    "permutation": _signflip_evidence,
    "ttest": _ttest_evidence,
}


def compare_paired(
    merged,
    reference,
    *,
    margin: float,
    alpha: float = 0.05,
    power: float = 0.8,
    method: str = "auto",
    n_resamples: int = 10_000,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
) -> PairedComparison:
    """Compare per-item scores of the merged model and a reference on the same items.

    `margin` is the tolerated drop in metric units (0.01 = one accuracy point for 0/1 outcomes).
    method 'auto' is 'mcnemar' when both arrays are 0/1 (exact McNemar; Tango's score test and
    interval for non-inferiority; deterministic), else 'betting' when `bounds` (the lowest and
    highest score an item can get) are known: it holds its size for any distribution of the
    differences on that range, skewed ones included (a skill lost on a few items), and else
    'permutation' (sign-flip test and its inverted interval; `n_resamples` seeded flips, exact
    enumeration when that is smaller), which assumes the differences symmetric about the margin:
    for scores with no known range (log-likelihoods), where no test can hold its size for every
    distribution. 'mcnemar-midp' and 'ttest' are the alternatives. No items gives an inconclusive
    verdict.
    """
    margin, alpha = check_margin(margin), check_alpha(alpha)
    power = check_open_interval("power", power, 0.0, 1.0, ", e.g. 0.8")
    check_choice("method", method, METHODS)
    check_count("n_resamples", n_resamples)
    check_count("seed", seed, minimum=0)
    merged, reference = paired_arrays(merged, reference)
    binary = is_binary(merged, reference)
    resolved = ("mcnemar" if binary else "betting" if bounds is not None else "permutation") if method == "auto" else method
    if resolved.startswith("mcnemar"):
        if not binary:
            raise ValueError(f"method={method!r} needs 0/1 outcomes in both arrays; "
                             "use method='permutation' (or 'auto') for graded scores")
        if margin >= 1:
            raise ValueError(f"margin={margin:g} is an accuracy difference for 0/1 outcomes "
                             f"(0.01 = one point): did you mean {margin / 100:g}?")
    if merged.size == 0:
        return PairedComparison("inconclusive", math.nan, (-math.inf, math.inf), 1.0, 1.0,
                                math.inf, 0, resolved, margin, alpha, power)
    evidence = _EVIDENCE[resolved](merged, reference, margin=margin, alpha=alpha, power=power,
                                   n_resamples=n_resamples, seed=seed, bounds=bounds)
    verdict = decide(evidence.p_regression, evidence.p_noninferiority, alpha)
    spread = float((merged - reference).std(ddof=1)) if merged.size > 1 else math.nan
    return PairedComparison(verdict, *evidence, merged.size, resolved, margin, alpha, power, spread=spread,
                            bounds=tuple(map(float, bounds)) if resolved == "betting" else None)


def against_each(comparisons: dict[str, PairedComparison], alpha: float) -> tuple[str, PairedComparison]:
    """Regression against the weakest of k parents, without choosing it from the data: one
    comparison per parent, each made by `compare_paired` at alpha / k, combined into one.

    The regression check asks "is the merge within the margin of the *weakest* parent?". Which
    parent is weakest is unknown; picking the one that looks weakest on the same items and testing
    at full alpha passes a merge exactly at the margin about twice as often as alpha with two
    similar parents. Here:

    - pass (H1: within the margin of some parent, hence of the weakest): non-inferiority shown
      against at least one parent at alpha / k, i.e. p_noninferiority = min(1, k x the smallest);
      Bonferroni over the k ways to pass, so a merge at the margin of every parent passes at most
      alpha of the time. The burden of proof stays on the merge.
    - fail (H1: below every parent, hence below the weakest): a regression shown against each
      parent, i.e. p_regression = the largest (an intersection-union test, each at alpha).

    Returns (the parent the figures are against: the one closest to showing non-inferiority, the
    combined comparison). The interval and `mde` are that parent's, at 1 - 2 alpha / k.
    """
    if not comparisons:
        raise ValueError("against_each needs at least one comparison")
    k = len(comparisons)
    unequal = [n for n, c in comparisons.items() if not math.isclose(c.alpha, alpha / k)]
    if unequal:
        raise ValueError(f"the comparisons against {', '.join(unequal)} were made at alpha "
                         f"{comparisons[unequal[0]].alpha:g}; make each at alpha / k = {alpha / k:g}")
    name = min(comparisons, key=lambda n: (comparisons[n].p_noninferiority, comparisons[n].effect))
    p_noninferiority = min(1.0, k * min(c.p_noninferiority for c in comparisons.values()))
    p_regression = max(c.p_regression for c in comparisons.values())
    return name, replace(comparisons[name], alpha=alpha, references=k, p_noninferiority=p_noninferiority,
                         p_regression=p_regression, verdict=decide(p_regression, p_noninferiority, alpha))


def adjust_comparisons(comparisons, method: str = "holm", keys=None, *, share: float = 1.0) -> list[PairedComparison]:
    """Adjust `p_regression` across a family (tasks x parents) and decide again.

    `keys`, one per comparison, name the hypothesis each tests: comparisons with the same key
    (the retention and the regression check of a task against the same parent share one
    regression hypothesis, merged < parent) count once in the family, so Holm does not count one
    hypothesis twice. `p_noninferiority` is left as is: the gate passes only when every
    comparison passes, an intersection-union test, which keeps its level without adjustment
    (Berger 1982). Intervals and `mde` stay per-comparison.

    `share` (in (0, 1]) is the part of alpha this family may spend when the rest goes to
    comparisons decided elsewhere (the sequential ones spend alpha / m each, Bonferroni): the
    family is adjusted at level share x alpha, i.e. its adjusted p-values are divided by `share`,
    so the run's chance of any false fail stays within alpha by the union bound.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share = {share!r}: expected a number in (0, 1]")
    comparisons = list(comparisons)
    keys = list(range(len(comparisons))) if keys is None else list(keys)
    if len(keys) != len(comparisons):
        raise ValueError(f"{len(keys)} keys for {len(comparisons)} comparisons")
    unique: dict = {}
    for key, c in zip(keys, comparisons):
        if key in unique and unique[key] != c.p_regression:
            raise ValueError(f"comparisons keyed {key!r} test one hypothesis but have different p-values")
        unique.setdefault(key, c.p_regression)
    adjusted = dict(zip(unique, np.minimum(1.0, adjust_pvalues(list(unique.values()), method) / share))) if unique else {}
    return [
        replace(c, p_regression=float(adjusted[k]), correction=method, alpha_share=share,
                verdict=decide(adjusted[k], c.p_noninferiority, c.alpha))
        for k, c in zip(keys, comparisons)
    ]


def decide_significant_drop(c: PairedComparison) -> str:
    """The opt-in rule `[statistics] decision = "significant_drop"`: fail only when the drop
    beyond the margin is itself significant (the (1 - 2 alpha) interval lies wholly below
    -margin, a one-sided test at alpha of H0: effect >= -margin), else pass. The burden of proof
    is then on the gate, not the merge: an underpowered comparison passes."""
    return "fail" if c.ci[1] < -c.margin else "pass"


def smallest_decidable_n(margin: float, alpha: float, *, binary: bool, width: float | None = None) -> int:
    """The fewest items on which *any* outcome decides the comparison: below it no data, not
    even a merge right on every item the reference got wrong (or wrong on every item it got
    right), gives pass or fail, so the check is an error rather than inconclusive. 0/1 items:
    exact McNemar (smallest p 2^-n) or Tango with every item a win; graded items on a range of
    `width`: the betting test with every item the largest loss; graded items with no known
    range: the exact sign-flip test (smallest p 2^-n)."""
    check_alpha(alpha)
    flips = max(1, math.ceil(math.log2(1 / alpha)))
    if not binary and width is not None:
        from mergeqa.stats.betting import pvalue_at

        n = 1
        while pvalue_at(np.ones(n) * width, 0.0, -width, width) > alpha:  # -d: every item a loss of `width`
            n += 1
        return n
    if not binary:
        return flips
    n = np.arange(1, flips + 1)
    ok = np.asarray(tango_pvalue(n, 0, n, effect0=-margin)) <= alpha
    return int(n[np.argmax(ok)]) if ok.any() else flips


def concordant_n(margin: float, alpha: float) -> float:
    """How many 0/1 items, all scored alike by both models, show non-inferiority at `margin`
    (Tango's test): what a perfect copy of the reference needs. inf for a zero margin."""
    check_alpha(alpha)
    if margin <= 0:
        return math.inf
    n = np.arange(1, 1_000_001)
    ok = np.asarray(tango_pvalue(0, 0, n, effect0=-margin)) <= alpha
    return float(n[np.argmax(ok)]) if ok.any() else math.inf
