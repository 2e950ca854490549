"""Exact (Clopper-Pearson) intervals for single rates: mergeqa.stats.binomial against statsmodels
and scipy, the exact size of the decisions built on them (conflict.rate, conflict.owner, the A/B
win rate), and the boundary cases that tell a correct rule from a near miss (the interval's level,
rounding before deciding, the half win of a tie).

Cost: milliseconds; the size checks sum binomial probabilities exactly, no simulation
(bench/simulate_intervals.py is the Monte Carlo counterpart).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mergeqa.conflict.consistency import ConflictRun, ConsistencyPair, PairOutcome, owner_verdict, rate_interval, rate_verdict
from mergeqa.evaluate.agreement import Agreement, Match
from mergeqa.judge import JudgeSetup, ReferenceJudge
from mergeqa.judge.evaluation import Pairwise, ab_pvalues, ab_verdict, win_interval
from mergeqa.stats import clopper_pearson_interval

TIGHT = {"rtol": 1e-9, "atol": 1e-12}


# -- the interval -----------------------------------------------------------------------------------
def test_clopper_pearson_matches_statsmodels_beta_and_scipy_exact():
    from scipy.stats import binomtest
    from statsmodels.stats.proportion import proportion_confint

    successes = np.array([0, 1, 7, 50, 99, 100, 3, 16])
    n = np.array([1, 10, 20, 100, 100, 100, 7, 320])
    for confidence in (0.8, 0.9, 0.95):
        expected = proportion_confint(successes, n, alpha=1 - confidence, method="beta")
        got = clopper_pearson_interval(successes, n, confidence=confidence)
        np.testing.assert_allclose(got, expected, **TIGHT)
        for k, m, low, high in zip(successes, n, *got):
            ci = binomtest(int(k), int(m)).proportion_ci(confidence, method="exact")
            np.testing.assert_allclose((low, high), (ci.low, ci.high), **TIGHT)


@pytest.mark.parametrize("successes, n, message", [
    (0.5, 10, "integer counts"),
    (11, 10, "0 <= successes <= n"),
    (0, 0, "n >= 1"),
])
def test_clopper_pearson_rejects_what_is_not_a_count(successes, n, message):
    with pytest.raises(ValueError, match=message):
        clopper_pearson_interval(successes, n)


def _exact_size(n: int, rate: float, passes) -> float:
    """P(pass) when every item is a success with probability `rate`: the sum over all counts."""
    from scipy.stats import binom

    k = np.arange(n + 1)
    return float(binom.pmf(k, n, rate)[passes(k, np.full(k.shape, n))].sum())


# -- conflict.rate ------------------------------------------------------------------------------------
def test_conflict_rate_size_at_the_ceiling_is_within_alpha_at_every_n():
    """A merge that conflicts on exactly 5 % of pairs passes at most alpha = 0.05 of the time
    (Wilson ran to 0.069 at n = 52): exact, for every n up to 400."""
    high = lambda k, m: clopper_pearson_interval(k, m, confidence=0.9)[1]  # noqa: E731  (rate_interval's, vectorised)
    sizes = [_exact_size(n, 0.05, lambda k, m: high(k, m) < 0.05) for n in range(1, 401)]
    assert max(sizes) <= 0.05
    assert max(sizes) > 0.04  # and not needlessly conservative: it comes close at some n


def test_conflict_rate_is_decided_at_1_minus_2_alpha():
    """Each side of the interval is a one-sided test at alpha: at 0.05, 59 clean pairs show a rate
    under 5 % (0.95^59 = 0.048 <= alpha) and 58 do not; a 95 % interval would need 72."""
    from statsmodels.stats.proportion import proportion_confint

    np.testing.assert_allclose(rate_interval(16, 320, 0.05), proportion_confint(16, 320, alpha=0.1, method="beta"),
                               **TIGHT)
    assert rate_interval(0, 59, 0.05)[1] < 0.05 <= rate_interval(0, 58, 0.05)[1]
    assert _synthetic_rate(0, 59).outcome == "pass"
    assert _synthetic_rate(0, 58).outcome == "inconclusive"


def _synthetic_rate(conflicts: int, n: int):
    outcomes = [PairOutcome(ConsistencyPair(f"{i} + 1 =", f"1 + {i} =", True, "commutative", "arithmetic"),
                            "x", "y", Match(i >= conflicts, "number")) for i in range(n)]
    return rate_verdict(ConflictRun("m", outcomes, {}), 0.05, 0.05)


def test_conflict_rate_decides_on_the_unrounded_interval():
    """1 conflict in 93 pairs: the upper bound is 0.049994, under the 5 % ceiling; rounded to four
    decimals it would read 0.05 and the verdict would be inconclusive."""
    high = rate_interval(1, 93, 0.05)[1]
    assert high < 0.05 and round(high, 4) == 0.05
    v = _synthetic_rate(1, 93)
    assert v.outcome == "pass" and v.figures["ci_high"] == 0.05  # shown rounded, decided unrounded
    assert "90% Clopper-Pearson 0.001..0.050" in v.summary


def test_conflict_owner_agreement_uses_the_exact_interval():
    """conflict.owner passes when the (1 - 2 alpha) Clopper-Pearson lower bound reaches the floor:
    n of n prompts agreeing shows agreement >= 0.85 exactly when 0.85^n <= alpha (19 prompts:
    0.046), not with 18 (0.054)."""
    n_needed = next(n for n in range(1, 100) if 0.85**n <= 0.05)
    assert n_needed == 19
    prompts = [f"{i} + 1 =" for i in range(n_needed)]
    run = ConflictRun("m", [], {p: "1" for p in prompts})
    owner = ConflictRun("o", [], {p: "1" for p in prompts})
    assert owner_verdict(run, owner, "arithmetic", prompts, 0.85, 0.05, Agreement()).outcome == "pass"
    fewer = prompts[:-1]
    assert owner_verdict(run, owner, "arithmetic", fewer, 0.85, 0.05, Agreement()).outcome == "inconclusive"


# -- the A/B win rate --------------------------------------------------------------------------------
def _setup() -> JudgeSetup:
    return JudgeSetup([], ReferenceJudge(), None, Path("."))


def _ab(wins: int, ties: int, losses: int) -> Pairwise:
    return Pairwise("m", "p", ["win"] * wins + ["tie"] * ties + ["loss"] * losses, 0, 0)


def _ab_size(n: int, floor: float = 0.45, alpha: float = 0.05) -> float:
    """The largest pass rate over tie rates of a merge whose win rate (ties as half) is exactly
    `floor`: every (wins, losses) table summed exactly through the gate's own decision."""
    from scipy.special import gammaln

    w, l = (x.ravel() for x in np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij"))
    keep = w + l <= n
    w, l = w[keep], l[keep]
    t = n - w - l
    # ab_verdict passes exactly when p(above the floor) <= alpha (its interval is only shown)
    passed = np.array([ab_pvalues(_ab(a, n - a - b, b), floor)[0] <= alpha for a, b in zip(w, l)])
    worst, effect0 = 0.0, 2 * floor - 1
    for p_loss in np.linspace(-effect0, (1 - effect0) / 2, 41):
        p_win, p_tie = p_loss + effect0, 1 - 2 * p_loss - effect0
        with np.errstate(divide="ignore", invalid="ignore"):
            log_pmf = (gammaln(n + 1) - gammaln(w + 1) - gammaln(l + 1) - gammaln(t + 1)
                       + np.where(w > 0, w * np.log(p_win), 0) + np.where(l > 0, l * np.log(p_loss), 0)
                       + np.where(t > 0, t * np.log(max(p_tie, 1e-300)), 0))
        worst = max(worst, float(np.exp(np.nan_to_num(log_pmf, nan=-np.inf))[passed].sum()))
    return worst


@pytest.mark.parametrize("n", [12, 25, 40])
def test_ab_size_at_the_floor_is_within_alpha_for_any_tie_rate(n):
    """A merge whose win rate with ties as half is exactly 0.45 passes at most alpha of the time,
    whatever share of the questions are ties: exact, over every table (Tango's asymptotic test
    reaches 0.058 at 20 questions and 0.071 at 30; bench/simulate_checks.py for larger n)."""
    assert _ab_size(n) <= 0.05


def test_ab_is_decided_at_alpha_and_its_interval_agrees():
    """44 wins of 80, no ties: p(above 0.45) = 0.046, pass; the 90 % interval (the exact tests
    inverted) is Clopper-Pearson's there, 0.452..0.645. 43 wins: p 0.072, inconclusive."""
    v = ab_verdict(_setup(), _ab(44, 0, 36))
    assert v.outcome == "pass" and "90% exact interval 0.452..0.645" in v.summary
    assert v.figures["p_noninferiority"] == pytest.approx(0.0463, abs=5e-4)
    np.testing.assert_allclose(win_interval(_ab(44, 0, 36), 0.05), clopper_pearson_interval(44, 80, confidence=0.9),
                               atol=2e-3)
    assert ab_verdict(_setup(), _ab(43, 0, 37)).outcome == "inconclusive"
    assert ab_verdict(_setup(), _ab(20, 0, 60)).outcome == "fail"


def test_ab_ties_count_as_half_a_win_with_their_smaller_variance():
    """15 wins, 55 ties, 10 losses (win rate 0.531): shown above 0.45 (p 0.006). Rounded to a
    win count (42 of 80) its Clopper-Pearson lower bound, 0.43, would not pass it: a tie is not a
    coin flip between a win and a loss."""
    v = ab_verdict(_setup(), _ab(15, 55, 10))
    assert v.outcome == "pass" and v.figures["p_noninferiority"] < 0.01
    assert clopper_pearson_interval(42, 80, confidence=0.9)[0] < 0.45
    low, high = win_interval(_ab(15, 55, 10), 0.05)
    assert 0.45 < low < 0.531 < high


def test_the_ab_pass_rate_and_the_questions_a_pass_needs():
    """The plan's figures (normal approximation) against a simulation through the gate's own
    decision (p(above the floor) <= alpha): a merge tied with its parent at 80 questions, half of
    them ties."""
    from mergeqa.stats.exact_paired import items_to_pass, pass_rate

    rng = np.random.default_rng(0)
    counts = rng.multinomial(80, [0.25, 0.5, 0.25], size=300)
    simulated = np.mean([ab_pvalues(_ab(w, t, l), 0.45)[0] <= 0.05 for w, t, l in counts])
    assert abs(simulated - float(pass_rate(80, 0.0, 0.5, -0.1))) < 0.1
    needed = items_to_pass(0.0, 0.5, -0.1)
    assert 250 < needed < 350 and pass_rate(needed, 0.0, 0.5, -0.1) >= 0.8
    assert items_to_pass(-0.1, 0.5, -0.1) is None
