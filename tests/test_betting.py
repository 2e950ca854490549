"""The betting test for bounded differences (mergeqa.stats.betting): its level on the most skewed
null there is (every loss as large as the range allows), what a perfect copy can show, misuse.

Cost: about a second (10 000 simulated runs of 400 items and 10 000 of 80, vectorised).
"""

from __future__ import annotations

import numpy as np
import pytest

from mergeqa.stats.betting import betting_pvalue, fewest_items_any_test, items_to_show, largest_evalue


def test_level_holds_for_a_loss_concentrated_on_few_items():
    """Mean drop exactly the margin, all of it on 1/18 of the items (the sign-flip test's worst
    case): the betting test passes at most alpha of the time."""
    rng = np.random.default_rng(0)
    margin, share, n = 0.05, 1 / 18, 400  # 400 items: past the 59 a perfect copy needs to pass at all
    d = -(rng.random((5000, n)) < share).astype(float) * margin / share
    assert d.mean() == pytest.approx(-margin, abs=0.002)
    passed = (betting_pvalue(d, margin, low=-1.0, high=1.0) <= 0.05).mean()
    assert passed <= 0.05
    good = np.where(rng.random((5000, n)) < 0.3, rng.choice([-0.1, 0.1], (5000, n)), 0.0)  # as good, noisy
    assert (betting_pvalue(good, margin, low=-1.0, high=1.0) <= 0.05).mean() > 0.9  # and it has power there


def test_power_near_the_fewest_items_any_valid_test_needs():
    """A merge as good as its reference, noisy (30 % of items +-0.1): passes at 80 items, not far
    past the 59 below which no test valid on [-1, 1] can pass anything (the fixed grid of bets it
    replaced passed none of these: it needed 114 items for a perfect copy; this one needs 64)."""
    rng = np.random.default_rng(1)
    good = np.where(rng.random((5000, 80)) < 0.3, rng.choice([-0.1, 0.1], (5000, 80)), 0.0)
    assert (betting_pvalue(good, 0.05, low=-1.0, high=1.0) <= 0.05).mean() > 0.8
    lost = -(rng.random((5000, 80)) < 1 / 18).astype(float) * 0.05 * 18  # at the margin, on 1/18 of the items
    assert (betting_pvalue(lost, 0.05, low=-1.0, high=1.0) <= 0.05).mean() <= 0.05


def test_a_perfect_copy_passes_from_items_to_show_on():
    # within 10 % of the fewest any valid test needs (the cautious strategy's share costs the rest)
    assert fewest_items_any_test(0.05, 0.05, low=-1.0) <= items_to_show(0.05, 0.05, low=-1.0) <= \
        1.1 * fewest_items_any_test(0.05, 0.05, low=-1.0)
    assert fewest_items_any_test(0.05, 0.05, low=-1.0) == 59  # log(0.05) / log(0.95) = 58.4
    n = items_to_show(0.05, 0.05, low=-1.0)
    assert largest_evalue(n, 0.05, low=-1.0) >= 20 > largest_evalue(n - 1, 0.05, low=-1.0)
    assert betting_pvalue(np.zeros(n), 0.05, low=-1.0, high=1.0) <= 0.05 < betting_pvalue(np.zeros(n - 1), 0.05,
                                                                                           low=-1.0, high=1.0)


@pytest.mark.parametrize("d, low, high, message", [
    ([0.0, 2.0], -1.0, 1.0, "outside their stated range"),
    ([0.0], -0.01, 1.0, "need low < -margin < high"),
])
def test_misuse_names_the_range(d, low, high, message):
    with pytest.raises(ValueError, match=message):
        betting_pvalue(d, 0.05, low=low, high=high)


def test_level_holds_for_wide_two_point_differences():
    """d = -margin +- 0.9, half and half (mean exactly at the margin): the bets are predictable, so
    the level holds (0.0003); a bet that saw the item it bets on passes 0.08 of these."""
    rng = np.random.default_rng(3)
    d = -0.05 + np.where(rng.random((4000, 200)) < 0.5, -0.9, 0.9)
    assert (betting_pvalue(d, 0.05, low=-1.0, high=1.0) <= 0.05).mean() <= 0.05
