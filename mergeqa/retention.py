"""Capability retention and regression of a merge against its parents, per task.

For each task of the suite: retention = merged / the parent that carries the capability
([retention.capabilities] in thresholds.toml), and merged / the parents' mean as the seed guide
does; regression = merged below min(parents) x (1 - tolerance). In "significance" mode the
verdict is a paired test on the same items (mergeqa.significance), Holm/BH-adjusted across the
merge's comparisons; in "point" mode it is the guide's rule on the two averages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .engine import EvalResult
from .significance import PairedComparison, adjust_comparisons, compare_paired


@dataclass
class Finding:
    """One gate decision: (merge, task, kind) with its figures, verdict and message."""

    merge: str
    task: str
    kind: str  # "retention" | "regression"
    reference: str
    merged_score: float
    reference_score: float
    threshold: float
    verdict: str  # "pass" | "fail" | "inconclusive"
    comparison: PairedComparison | None = None
    figures: dict = field(default_factory=dict)
    message: str = ""


def _items(result: EvalResult, task: str) -> list[float]:
    """Per-item main-metric scores; a group's leaves are concatenated in a fixed order."""
    leaves = result.groups.get(task, [task])
    return [s for leaf in leaves for s in result.tasks[leaf].scores()]


def assess(merge: str, merged: EvalResult, parents: dict[str, EvalResult], tasks: list[str],
           thresholds, *, base: EvalResult | None = None) -> dict[tuple[str, str], Finding]:
    """Every retention and regression finding for one merge, keyed by (task, kind).

    The base, when given, is reported (how much of a skill the merge owes to fine-tuning).
    """
    get = lambda key: thresholds.get("retention", key)  # noqa: E731
    stat = lambda key: thresholds.get("statistics", key)  # noqa: E731
    capabilities = get("capabilities")
    min_retention, tolerance, mode = get("min_retention"), get("tolerance"), get("mode")
    findings: dict[tuple[str, str], Finding] = {}
    for task in tasks:
        m_score = merged.score(task)
        scores = {name: r.score(task) for name, r in parents.items()}
        mean = sum(scores.values()) / len(scores)
        owner = capabilities.get(task)
        common = {"expected_low": min(scores.values()), "expected_high": max(scores.values()),
                  "parents_mean": mean, "retention_vs_mean": m_score / mean if mean else float("nan"),
                  **{f"parent.{n}": s for n, s in scores.items()}}
        if base is not None:
            common["base"] = base.score(task)
        for leaf in merged.groups.get(task, []):  # MMLU-style groups: each subtask's score
            common[f"subtask.{leaf}.merged"] = merged.score(leaf)
            common.update({f"subtask.{leaf}.{n}": r.score(leaf) for n, r in parents.items()})
        if owner in parents:
            ref_name, ref_score = owner, scores[owner]
        else:  # no parent owns the task: retention against the parents' mean, as the guide does
            ref_name, ref_score = "parents' mean", mean
        findings[(task, "retention")] = Finding(
            merge, task, "retention", ref_name, m_score, ref_score, min_retention * ref_score,
            "pass" if m_score >= min_retention * ref_score else "fail",
            figures={**common, "retention": m_score / ref_score if ref_score else float("nan"),
                     "min_retention": min_retention})
        weakest = min(scores, key=scores.get)
        findings[(task, "regression")] = Finding(
            merge, task, "regression", weakest, m_score, scores[weakest],
            scores[weakest] * (1 - tolerance),
            "pass" if m_score >= scores[weakest] * (1 - tolerance) else "fail",
            figures={**common, "tolerance": tolerance})
    if mode == "significance":
        _decide_with_statistics(findings, merged, parents, stat)
    for f in findings.values():
        f.message = _message(f)
    return findings


def _decide_with_statistics(findings, merged, parents, stat) -> None:
    keys, comparisons = [], []
    for (task, kind), f in findings.items():
        if f.reference not in parents:  # against the parents' mean there are no paired items
            continue
        margin = f.reference_score - f.threshold  # the drop the point rule tolerates
        comparisons.append(compare_paired(_items(merged, task), _items(parents[f.reference], task),
                                          margin=max(margin, 0.0), alpha=stat("alpha"),
                                          power=stat("power")))
        keys.append((task, kind))
    for key, comparison in zip(keys, adjust_comparisons(comparisons, stat("correction"))):
        f = findings[key]
        f.comparison, f.verdict = comparison, comparison.verdict
        f.figures.update(comparison.figures())


def _message(f: Finding) -> str:
    from .messages import failure_message

    what = (f"{f.merge}: {f.task} {f.kind} against {f.reference} is {f.verdict}"
            f" (expected range from the parents {f.figures['expected_low']:.3f}..{f.figures['expected_high']:.3f})")
    stats = f.comparison.describe(f.reference).splitlines() if f.comparison else []
    if f.kind == "retention":
        cause = (f"the merge lost the skill that {f.reference} carries: its task vector was "
                 "diluted, pruned or cancelled by the other parents'")
        fix = ("raise this parent's weight or density, try ties/dare_ties with a lower density "
               "for the others, or lower [retention] min_retention if this loss is acceptable")
    else:
        cause = "the merge is worse than every parent on this task: interference between parents"
        fix = "check the merge weights and base_model; or raise [retention] tolerance"
    return failure_message(what, obtained=f.merged_score, expected=f">= {f.threshold:.4g}",
                           delta=f.merged_score - f.threshold, details=stats, cause=cause, fix=fix)
