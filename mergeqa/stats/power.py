"""Power: the smallest drop a one-sided test at `alpha` detects with probability `power`.

Printed with every inconclusive verdict so "no significant regression" never reads as "no
regression": "n=300 detects only drops of 6.1 points or more". Normal approximations, for planning.
"""

from __future__ import annotations

import math

from mergeqa.stats._base import check_alpha, check_count, check_open_interval


def _z_scores(alpha: float, power: float) -> tuple[float, float]:
    from scipy.special import ndtri

    check_alpha(alpha)
    check_open_interval("power", power, 0.0, 1.0, ", e.g. 0.8")
    return float(ndtri(1 - alpha)), float(ndtri(power))


def minimum_detectable_effect(
    n: int, discordance: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest accuracy drop McNemar detects on n paired 0/1 items (inf if none can be).

    `discordance` is the share of items the two models score differently. A drop D solves
    D sqrt(n) = z_a sqrt(psi) + z_b sqrt(psi - D^2) (Connor 1987) with psi = max(discordance, D),
    since a drop of D needs at least D discordant items. Both regimes share u, the positive root of
    u sqrt(n) = z_a + z_b sqrt(1 - u^2): D = u * max(sqrt(discordance), u). Below
    log2(1 / alpha) items even a total drop cannot make the exact test reject: inf.
    """
    z_a, z_b = _z_scores(alpha, power)
    n = check_count("n", n, minimum=0)
    if not 0 <= discordance <= 1:
        raise ValueError(f"discordance={discordance} must be a share of items, in [0, 1]")
    spread = n + z_b**2 - z_a**2
    if spread < 0 or 0.5**n > alpha:
        return math.inf
    u = (z_a * math.sqrt(n) + z_b * math.sqrt(spread)) / (n + z_b**2)
    return u * max(math.sqrt(discordance), u) if 0 < u <= 1 else math.inf


def minimum_detectable_shift(
    n: int, sd: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest drop in a mean per-item score detectable with n items whose differences have
    standard deviation `sd`: (z_a + z_b) sd / sqrt(n); inf with no items."""
    z_a, z_b = _z_scores(alpha, power)
    n = check_count("n", n, minimum=0)
    if not (math.isfinite(sd) and sd >= 0):
        raise ValueError(f"sd={sd} must be a finite standard deviation >= 0")
    return (z_a + z_b) * sd / math.sqrt(n) if n else math.inf
