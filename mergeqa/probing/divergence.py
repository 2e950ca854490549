"""Behaviour vs internals: the merges ranked by a behavioural score and by their probe scores,
Kendall's tau between the two rankings, and a flag when they disagree -- the paper's finding that
a merge's encoded competence can exceed its parents' while its behaviour sits between them.

Behaviour scores come in as a plain dict (merge -> score, higher is better) from whoever measured
them; this module measures nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .probes import ProbeResult


def internal_scores(results: Mapping[str, Mapping[str, ProbeResult]], which: str = "best") -> dict[str, float]:
    """model -> mean over phenomena of the test accuracy at the best (val-chosen) or last layer."""
    if which not in ("best", "last"):
        raise ValueError(f"which={which!r}: expected 'best' or 'last'")
    out = {}
    for model, per_set in results.items():
        accs = [r.accuracy().mean(1)[r.best_layer if which == "best" else r.last_layer]
                for r in per_set.values()]
        out[model] = float(np.mean(accs))
    return out


def _ranking(scores: Mapping[str, float]) -> list[str]:
    return sorted(scores, key=lambda n: (-scores[n], n))


@dataclass(frozen=True)
class DivergenceReport:
    behaviour: dict[str, float]
    internals: dict[str, float]
    tau: float
    p_value: float
    min_tau: float
    parents_behaviour: dict[str, float] = field(default_factory=dict)
    parents_internals: dict[str, float] = field(default_factory=dict)

    @property
    def behaviour_ranking(self) -> list[str]:
        return _ranking(self.behaviour)

    @property
    def internals_ranking(self) -> list[str]:
        return _ranking(self.internals)

    @property
    def flagged(self) -> bool:
        """The rankings disagree: tau below `min_tau` (never flagged when tau is undefined)."""
        return not math.isnan(self.tau) and self.tau < self.min_tau

    @property
    def internals_above_parents(self) -> list[str]:
        """Merges whose internals beat every parent's while their behaviour beats none's."""
        if not self.parents_behaviour or not self.parents_internals:
            return []
        return [m for m in self.behaviour
                if self.internals[m] > max(self.parents_internals.values())
                and self.behaviour[m] <= max(self.parents_behaviour.values())]

    def figures(self) -> dict[str, object]:
        return {"kendall_tau": self.tau, "p_value": self.p_value, "min_tau": self.min_tau,
                "flagged": self.flagged, "behaviour_ranking": ",".join(self.behaviour_ranking),
                "internals_ranking": ",".join(self.internals_ranking),
                "internals_above_parents": ",".join(self.internals_above_parents)}

    def summary(self) -> str:
        """A few lines for the terminal summary: both rankings, tau, and the flag."""
        lines = [f"{'merge':<18} {'behaviour':>9} {'rank':>4}   {'internals':>9} {'rank':>4}"]
        b_rank = {n: i + 1 for i, n in enumerate(self.behaviour_ranking)}
        i_rank = {n: i + 1 for i, n in enumerate(self.internals_ranking)}
        for n in self.behaviour_ranking:
            lines.append(f"{n:<18} {self.behaviour[n]:>9.4f} {b_rank[n]:>4}   "
                         f"{self.internals[n]:>9.4f} {i_rank[n]:>4}")
        verdict = ("DISAGREE: internals do not order the merges as behaviour does"
                   if self.flagged else "agree" if not math.isnan(self.tau) else "undefined (fewer than 2 merges or all tied)")
        lines.append(f"Kendall's tau = {self.tau:.3f} (p = {self.p_value:.3g}, n = {len(self.behaviour)}), "
                     f"flag below {self.min_tau:g}: {verdict}")
        above = self.internals_above_parents
        if above:
            lines.append(f"internals above both parents while behaviour is not (as in the paper): {', '.join(above)}")
        return "\n".join(lines)


def divergence_report(behaviour: Mapping[str, float], internals: Mapping[str, float], *,
                      min_tau: float = 0.0, parents_behaviour: Mapping[str, float] | None = None,
                      parents_internals: Mapping[str, float] | None = None) -> DivergenceReport:
    """Rank the merges both ways and compare the rankings (Kendall's tau-b, two-sided p)."""
    from scipy.stats import kendalltau

    if set(behaviour) != set(internals):
        raise ValueError(f"behaviour and internal scores name different merges: "
                         f"{sorted(set(behaviour) ^ set(internals))}")
    names = sorted(behaviour)
    if len(names) < 2:
        tau, p = math.nan, math.nan
    else:
        res = kendalltau([behaviour[n] for n in names], [internals[n] for n in names])
        tau, p = float(res.statistic), float(res.pvalue)
    return DivergenceReport({n: float(behaviour[n]) for n in names}, {n: float(internals[n]) for n in names},
                            tau, p, min_tau, dict(parents_behaviour or {}), dict(parents_internals or {}))
