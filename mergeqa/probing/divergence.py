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


@dataclass(frozen=True)
class AboveParents:
    """Is a merge's probed competence above every parent's on one phenomenon? One-sided paired
    sign-flip tests of mean(merge - parent) > 0 over the phenomenon's test items (correctness
    averaged over probe seeds), one per parent. "Above both" is shown when every parent's test
    rejects (an intersection-union test: no correction across the parents); `p` is the largest
    p-value, which `shown_above` adjusts across every (merge, phenomenon) test.

    Never pool phenomena into one test: where each parent is weak on the other's skill, a merge
    equal to parent A on A's phenomenon and to B on B's is above each parent on the pool, and
    above neither on any phenomenon."""

    merge: str
    diffs: dict[str, float]  # parent -> mean(merge - parent), accuracy
    pvalues: dict[str, float]  # parent -> one-sided p-value
    n_items: int
    phenomenon: str = ""

    @property
    def p(self) -> float:
        return max(self.pvalues.values())

    @property
    def closest(self) -> str:
        """The parent the merge is least above (the one that decides the claim)."""
        return min(self.diffs, key=lambda n: (self.diffs[n], n))

    def describe(self, p_adjusted: float | None = None) -> str:
        ref = self.closest
        adj = "" if p_adjusted is None else f", adjusted {p_adjusted:.3g}"
        on = f" on {self.phenomenon}" if self.phenomenon else ""
        return (f"{self.merge}{on} {100 * self.diffs[ref]:+.2f} pts over {ref} "
                f"(one-sided p = {self.pvalues[ref]:.3g}{adj})")

    def to_dict(self) -> dict:
        return {"merge": self.merge, "phenomenon": self.phenomenon, "diffs": self.diffs,
                "pvalues": self.pvalues, "n_items": self.n_items}

    @classmethod
    def from_dict(cls, d: Mapping) -> "AboveParents":
        return cls(str(d["merge"]), dict(d["diffs"]), dict(d["pvalues"]), int(d["n_items"]),
                   str(d.get("phenomenon", "")))


def above_parents(merge: str, merged_items, parents_items: Mapping[str, object], *,
                  phenomenon: str = "") -> AboveParents:
    """Test the merge's per-item probe scores on one phenomenon against each parent's (same items,
    same order)."""
    from mergeqa.stats.signflip import signflip_test

    if not parents_items:
        raise ValueError("above_parents needs at least one parent")
    merged_items = np.asarray(merged_items, dtype=float)
    diffs, pvalues = {}, {}
    for name, items in parents_items.items():
        res = signflip_test(merged_items, np.asarray(items, dtype=float), alternative="greater")
        diffs[name], pvalues[name] = float(res.statistic), float(res.pvalue)
    return AboveParents(merge, diffs, pvalues, int(merged_items.size), phenomenon)


def above_parents_per_phenomenon(merges, parents, items: Mapping[str, Mapping[str, object]]) -> list[AboveParents]:
    """One test per (merge, phenomenon): `items` is {phenomenon: {model: per-test-item scores}};
    phenomena missing a merge or a parent are left out."""
    models = set(merges) | set(parents)
    return [above_parents(m, per_model[m], {q: per_model[q] for q in parents}, phenomenon=name)
            for name, per_model in sorted(items.items()) if parents and models <= set(per_model)
            for m in merges]


def _adjusted(tests: list[AboveParents], correction: str) -> list[float]:
    from mergeqa.stats.multiplicity import adjust_pvalues

    return [float(a) for a in adjust_pvalues([t.p for t in tests], correction)] if tests else []


def shown_above(tests: list[AboveParents], *, alpha: float = 0.05,
                correction: str = "holm") -> dict[str, float]:
    """merge -> its smallest adjusted p of "above every parent" over its phenomena (adjusted across
    every (merge, phenomenon) test); the merge is shown above both parents when <= alpha."""
    out: dict[str, float] = {}
    for t, a in zip(tests, _adjusted(tests, correction)):
        out[t.merge] = min(a, out.get(t.merge, 1.0))
    return out


def above_line(tests: list[AboveParents], alpha: float, correction: str) -> str:
    """'ties on agreement (...)' or 'none (...)': the merges shown above both parents on a
    phenomenon, with how it was tested and the figures of the test that came closest."""
    if not tests:
        return "not tested (no per-item probe scores)"
    adjusted = _adjusted(tests, correction)
    shown = sorted(f"{t.merge} on {t.phenomenon}" if t.phenomenon else t.merge
                   for t, a in zip(tests, adjusted) if a <= alpha)
    best, best_p = min(zip(tests, adjusted), key=lambda ta: (ta[1], -ta[0].diffs[ta[0].closest], ta[0].merge))
    sizes = sorted({t.n_items for t in tests})
    n = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    merges, phenomena = len({t.merge for t in tests}), len({t.phenomenon for t in tests})
    how = (f"one-sided paired sign-flip test against each parent on each phenomenon's {n} test items, "
           f"{correction} across {len(tests)} tests ({merges} merges x {phenomena} phenomena), alpha {alpha:g}")
    if shown:
        return f"{', '.join(shown)} ({how}; e.g. {best.describe(best_p)})"
    return f"none ({how}; closest: {best.describe(best_p)})"


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
    #: merges whose probed competence was *shown* above every parent's (`shown_above`); None when
    #: no item-level test was run, and then no merge is said to be above its parents
    internals_shown_above: tuple[str, ...] | None = None

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
        """Merges whose internals were shown above every parent's (a paired test, not two point
        estimates) while their behaviour beats none's."""
        if not self.parents_behaviour or not self.internals_shown_above:
            return []
        return [m for m in self.behaviour if m in self.internals_shown_above
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
                      parents_internals: Mapping[str, float] | None = None,
                      internals_shown_above: list[str] | None = None) -> DivergenceReport:
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
                            tau, p, min_tau, dict(parents_behaviour or {}), dict(parents_internals or {}),
                            None if internals_shown_above is None else tuple(internals_shown_above))
