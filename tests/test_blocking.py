"""The blocking rate (mergeqa.decision.blocking): the exact sum against a full enumeration through
compare_paired itself, the policies' order, and what alpha does and does not bound.

Cost: about a second (one enumeration of every table at n = 24).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multinomial

from mergeqa.decision.blocking import blocking_rate
from mergeqa.decision.significance import compare_paired


def test_the_exact_sum_is_the_gate_run_on_every_possible_table():
    """n = 24: every (wins, losses) table, each decided by compare_paired on items built from it,
    weighted by its probability for a merge as good as its reference (discordance 0.3)."""
    n, margin, d = 24, 0.1, 0.3
    blocked = warned = 0.0
    for wins in range(n + 1):
        for losses in range(n + 1 - wins):
            same = n - wins - losses
            merged = np.r_[np.ones(wins), np.zeros(losses), np.ones(same)]
            reference = np.r_[np.zeros(wins), np.ones(losses), np.ones(same)]
            p = multinomial.pmf([wins, losses, same], n, [d / 2, d / 2, 1 - d])
            verdict = compare_paired(merged, reference, margin=margin).verdict
            blocked += p * (verdict != "pass")
            warned += p * (verdict == "fail")
    assert blocking_rate(n, margin, discordance=d) == pytest.approx(blocked, abs=1e-12)
    assert blocking_rate(n, margin, discordance=d, policy="warn") == pytest.approx(warned, abs=1e-12)


def test_alpha_bounds_only_the_false_fail_not_the_blocking_rate():
    fail = blocking_rate(100, 0.045, discordance=0.4)
    warn = blocking_rate(100, 0.045, discordance=0.4, policy="warn")
    drop = blocking_rate(100, 0.045, discordance=0.4, policy="significant_drop")
    assert fail > 0.8 and warn <= 0.05 and drop <= warn
    assert blocking_rate(10_000, 0.045, discordance=0.4) < 1e-6  # enough items: a good merge passes
    assert blocking_rate(1000, 0.045, discordance=0.4) > blocking_rate(1000, 0.045, discordance=0.05)


def test_a_merge_identical_on_every_item_is_blocked_only_below_the_concordant_n():
    from mergeqa.decision.significance import concordant_n

    needed = int(concordant_n(0.05, 0.05))
    assert blocking_rate(needed, 0.05, discordance=0.0) == 0.0
    assert blocking_rate(needed - 1, 0.05, discordance=0.0) == 1.0


def test_an_inconclusive_retention_message_states_its_blocking_rate():
    from mergeqa.decision.blocking import blocking_line

    rng = np.random.default_rng(3)
    owner = (rng.random(120) < 0.8).astype(float)
    merged = owner.copy()
    merged[np.flatnonzero(owner == 1)[:6]], merged[np.flatnonzero(owner == 0)[:6]] = 0, 1  # 10 % discordant
    c = compare_paired(merged, owner, margin=0.04)
    rate = blocking_rate(120, 0.04, discordance=0.1)
    assert c.verdict == "inconclusive" and rate > 0.5
    assert blocking_line(c, "owner").startswith(f"blocking rate {rate:.2f}: a merge exactly as good as owner")
    assert blocking_line(compare_paired(owner, owner, margin=0.2), "owner") is None  # decided: pass


@pytest.mark.parametrize("kwargs, message", [
    ({"discordance": 1.5}, "discordance"),
    ({"discordance": 0.2, "policy": "strict"}, "unknown policy"),
])
def test_misuse_is_a_precise_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        blocking_rate(100, 0.02, **kwargs)
