"""The anytime-valid sequential test: its e-values against their definition and scipy, exact
martingale means at the nulls' boundaries, its level, and its use as a drop-in decision."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from mergeqa.stats import sequential
from mergeqa.stats.sequential import (
    BETS,
    compare_sequential,
    item_order,
    log_evalue_noninferiority,
    log_evalue_regression,
    run_sequential,
)


def paired(rng, n: int, effect: float, discordance: float = 0.15):
    """n paired 0/1 outcomes with a true accuracy effect (merged - reference)."""
    kind = rng.choice(3, size=n, p=[(discordance - effect) / 2, 1 - discordance,
                                    (discordance + effect) / 2])
    tie = rng.random(n) < 0.6
    reference = np.where(kind == 0, 1, np.where(kind == 2, 0, tie)).astype(int)
    merged = np.where(kind == 0, 0, np.where(kind == 2, 1, tie)).astype(int)
    return merged, reference


def test_docstring_examples_hold():
    assert doctest.testmod(sequential).failed == 0


@pytest.mark.parametrize("margin", [0.0, 0.01, 0.05])
def test_evalues_are_the_mixture_of_item_by_item_bets(margin):
    d = np.random.default_rng(1).choice([-1, 0, 1], p=[0.2, 0.6, 0.2], size=80)
    wins, losses, n = int((d > 0).sum()), int((d < 0).sum()), d.size
    regression = np.mean([np.prod(1 - u * d) for u in BETS])
    noninferiority = np.mean([np.prod(1 + u / (1 - margin) * (d + margin)) for u in BETS])
    assert math.exp(log_evalue_regression(wins, losses)) == pytest.approx(regression, rel=1e-9)
    assert math.exp(log_evalue_noninferiority(wins, losses, n, margin)) == pytest.approx(
        noninferiority, rel=1e-9)


def test_regression_evalue_is_scipys_binomial_likelihood_ratio_on_discordant_pairs():
    from scipy.special import logsumexp
    from scipy.stats import binom

    wins, losses = np.array([0, 3, 40, 17]), np.array([0, 9, 25, 60])
    m = (wins + losses)[:, None]
    ratio = binom.logpmf(losses[:, None], m, (1 + BETS) / 2) - binom.logpmf(losses[:, None], m, 0.5)
    expected = logsumexp(ratio, axis=1) - math.log(BETS.size)
    np.testing.assert_allclose(log_evalue_regression(wins, losses), expected, rtol=1e-10, atol=1e-12)


def _expected_evalue(n: int, p_loss: float, p_win: float, evalue) -> float:
    """E[e-value after n items], summed exactly over every (losses, wins) table."""
    from scipy.stats import multinomial

    total = 0.0
    for losses in range(n + 1):
        for wins in range(n + 1 - losses):
            pmf = multinomial.pmf([losses, n - losses - wins, wins], n, [p_loss, 1 - p_loss - p_win, p_win])
            total += pmf * evalue(wins, losses, n)
    return total


@pytest.mark.parametrize("discordance", [0.1, 0.5])
def test_evalues_have_mean_one_at_their_nulls_boundary(discordance):
    """Each e-process is a martingale with mean 1 where its null is tightest (Ville's bound)."""
    margin = 0.02
    same = _expected_evalue(25, discordance / 2, discordance / 2,
                            lambda w, l, n: math.exp(log_evalue_regression(w, l)))
    assert same == pytest.approx(1.0, abs=1e-9)
    drop = _expected_evalue(25, (discordance + margin) / 2, (discordance - margin) / 2,
                            lambda w, l, n: math.exp(log_evalue_noninferiority(w, l, n, margin)))
    assert drop == pytest.approx(1.0, abs=1e-9)
    worse = _expected_evalue(25, (discordance + 2 * margin) / 2, (discordance - 2 * margin) / 2,
                             lambda w, l, n: math.exp(log_evalue_noninferiority(w, l, n, margin)))
    assert worse < 1.0, "deeper inside its null the non-inferiority e-value must shrink"


def test_false_fails_and_false_passes_stay_below_alpha():
    rng = np.random.default_rng(7)
    fails = passes = 0
    runs = 400
    for _ in range(runs):
        merged, reference = paired(rng, 600, 0.0)
        fails += compare_sequential(merged, reference, margin=0.01).verdict == "fail"
        merged, reference = paired(rng, 600, -0.01)  # the true drop is the margin: no pass allowed
        passes += compare_sequential(merged, reference, margin=0.01).verdict == "pass"
    bound = 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs)
    assert fails / runs <= bound and passes / runs <= bound, (fails, passes)


def test_a_large_drop_fails_early_and_identical_models_pass_a_wide_margin_early():
    rng = np.random.default_rng(3)
    merged, reference = paired(rng, 2000, -0.10, discordance=0.2)
    bad = compare_sequential(merged, reference, margin=0.01)
    assert bad.verdict == "fail" and bad.n <= 600 and bad.effect < 0
    merged, reference = paired(rng, 2000, 0.0)
    good = compare_sequential(merged, reference, margin=0.05)
    assert good.verdict == "pass" and good.n <= 600 and good.items_saved >= 0.7


def test_a_decided_verdict_never_changes_with_more_items():
    merged, reference = paired(np.random.default_rng(11), 3000, -0.08)
    full = compare_sequential(merged, reference, margin=0.01, n_max=3000)
    assert full.decided and full.verdict == "fail"
    for extra in (0, 50, 130, 1000):
        prefix = full.n + extra
        again = compare_sequential(merged[:prefix], reference[:prefix], margin=0.01, n_max=3000)
        assert (again.verdict, again.n) == (full.verdict, full.n)
    before = compare_sequential(merged[: full.n - 1], reference[: full.n - 1], margin=0.01, n_max=3000)
    assert before.verdict == "continue" and before.n == full.n - sequential.DEFAULT_BATCH


def test_undecided_is_continue_until_every_item_is_scored():
    merged, reference = paired(np.random.default_rng(5), 230, 0.0)
    partial = compare_sequential(merged[:120], reference[:120], margin=0.01, n_max=230)
    assert partial.verdict == "continue" and partial.n == 100  # looks at 50, 100 (150 not yet)
    done = compare_sequential(merged, reference, margin=0.01)
    assert done.verdict == "inconclusive" and done.n == 230  # the last look is n_max itself
    assert "inconclusive" in done.describe() and "230 of 230 items" in done.describe()
    assert done.figures()["n"] == 230 and 0 <= done.p_regression <= 1


def test_run_sequential_scores_only_what_it_needs_and_reuses_a_scored_prefix():
    merged, reference = paired(np.random.default_rng(2), 1000, -0.10, discordance=0.3)
    asked: list[int] = []

    def score(ids):
        asked.extend(int(i) for i in ids)
        return merged[ids], reference[ids]

    result = run_sequential(score, 1000, margin=0.01, seed=4)
    order = item_order(1000, seed=4)
    assert asked == list(order[: result.n]) and result.verdict == "fail"
    one_call = compare_sequential(merged[order], reference[order], margin=0.01)
    assert (one_call.verdict, one_call.n) == (result.verdict, result.n)
    asked.clear()
    cached = (merged[order[:70]], reference[order[:70]])
    again = run_sequential(score, 1000, margin=0.01, seed=4, scored=cached)
    assert (again.verdict, again.n) == (result.verdict, result.n)
    assert asked == list(order[70: result.n]), "the cached prefix must not be scored again"


def test_item_order_is_a_seeded_permutation():
    assert sorted(item_order(50, seed=1)) == list(range(50))
    assert list(item_order(50, seed=1)) == list(item_order(50, seed=1))
    assert list(item_order(50, seed=1)) != list(item_order(50, seed=2))


@pytest.mark.parametrize("call, message", [
    (lambda: compare_sequential([0, 0.5], [1, 0], margin=0.01), "0/1 outcomes"),
    (lambda: compare_sequential([0, 1, 1], [1, 0, 1], margin=0.01, n_max=2), "n_max=2"),
    (lambda: compare_sequential([0, 1], [1, 0], margin=1.5), "did you mean 0.015"),
    (lambda: compare_sequential([0, 1], [1, 0], margin=0.01, alpha=0.7), "alpha=0.7"),
    (lambda: compare_sequential([0, 1], [1, 0], margin=0.01, batch=0), "batch must be"),
])
def test_misuse_names_the_argument_and_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()
