"""Capability retention and regression of a merge against its parents, per task, as Verdicts.

For each task of the suite, on the task's gated metric (`[retention.metrics]`, else the Open LLM
Leaderboard's, else the task's first; direction from lm-eval's higher_is_better):

- retention: the merge against the parent that owns the skill (`[retention.capabilities]`), or,
  for a task no parent owns, against the per-item mean of the parents; it must keep
  `min_retention` of the reference's score (for a lower-is-better metric: stay within
  reference / min_retention);
- regression: the merge against its weakest parent on the task, within `tolerance`; in
  significance mode tested against each parent (`significance.against_each`: non-inferiority to
  one parent at alpha / k shows it for the weakest), not against the one weakest on these items.

In "significance" mode each is a paired test on the same documents (mergeqa.decision.significance): pass
only when non-inferiority at the margin the point rule tolerates is shown, fail on a significant
drop, else inconclusive; Holm/BH across the merge's distinct hypotheses. Perplexity-type metrics
are compared per item in log-perplexity units, the units of their margin. "point" mode is the
guide's rule on the two aggregates. With `[statistics] sequential = true` the comparisons that
mergeqa.retention.early_stop decided on a prefix of the items come in as `early` and are reported as such.
"""

from __future__ import annotations

import math

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.decision.verdict import Verdict
from mergeqa.evaluate.engine import WEIGHTED, EvalResult, paired_values, split_key

EXAMPLES = 5  # documents the reference got right and the merge wrong, kept for the report


def gated_metric(task: str, result: EvalResult, thresholds) -> str:
    """The metric key a task is gated on (for a group: its first leaf's)."""
    override = thresholds.get("retention", "metrics").get(task)
    if override:
        return override
    leaf = result.groups.get(task, [task])[0]
    return result.tasks[leaf].main_metric


def _direction(task: str, result: EvalResult, key: str) -> bool:
    leaf = result.groups.get(task, [task])[0]
    return result.tasks[leaf].higher_is_better_for(key)


def _rule(kind: str, reference: float, limit: float, hib: bool, weighted: bool) -> tuple[float, float]:
    """(threshold on the aggregate, margin in gating units) for a retention floor `limit`
    (min_retention) or a regression tolerance `limit`."""
    if kind == "retention":
        threshold = reference * limit if hib else reference / limit
        margin = -math.log(limit) if weighted else (reference * (1 - limit) if hib else threshold - reference)
    else:
        threshold = reference * (1 - limit) if hib else reference * (1 + limit)
        margin = math.log1p(limit) if weighted else abs(reference) * limit
    return threshold, max(margin, 0.0)


def assess(merge: str, merged: EvalResult, parents: dict[str, EvalResult], tasks: list[str],
           thresholds, *, base: EvalResult | None = None, base_name: str = "base",
           early=None) -> dict[tuple[str, str], Verdict]:
    """Every retention and regression verdict for one merge, keyed by (task, kind).

    `early` (a mergeqa.retention.early_stop.EarlyStop) holds the comparisons the sequential test decided
    (the results then hold only the items it scored for those tasks) and, for the other tasks,
    why they were decided fixed-n."""
    from mergeqa.decision.blocking import blocking_line
    from mergeqa.decision.significance import adjust_comparisons, decide_significant_drop

    get = lambda key: thresholds.get("retention", key)  # noqa: E731
    stat = lambda key: thresholds.get("statistics", key)  # noqa: E731
    min_retention, tolerance, mode = get("min_retention"), get("tolerance"), get("mode")
    if not parents:
        raise MergeQAUsageError("retention needs parents to compare with; pass --parents")
    verdicts: dict[tuple[str, str], Verdict] = {}
    pending = []  # (key, comparison, hypothesis) for the multiplicity adjustment
    decided = early.decisions if early is not None else {}
    for task in tasks:
        key = gated_metric(task, merged, thresholds)
        hib, weighted = _direction(task, merged, key), split_key(key)[0] in WEIGHTED
        try:
            m_score = merged.score(task, key)
            scores = {name: r.score(task, key) for name, r in parents.items()}
        except KeyError as exc:
            raise MergeQAUsageError(f"task {task!r}: metric {key!r} missing ({exc}); set "
                                    "[retention.metrics] to one the task reports") from None
        mean = sum(scores.values()) / len(scores)
        owner = get("capabilities").get(task)
        common = {"metric": key, "higher_is_better": hib, "expected_low": min(scores.values()),
                  "expected_high": max(scores.values()), "parents_mean": mean,
                  **{f"parent.{n}": s for n, s in scores.items()}}
        all_scores = {merge: m_score, **scores}
        roles = {merge: "merged", **{n: "parent" for n in scores}}
        if base is not None:
            common["base"] = all_scores[base_name] = base.score(task, key)
            roles[base_name] = "base"
        for leaf in merged.groups.get(task, []):  # MMLU-style groups: each subtask's score
            common[f"subtask.{leaf}.merged"] = merged.score(leaf, key)
            common.update({f"subtask.{leaf}.{n}": r.score(leaf, key) for n, r in parents.items()})
        weakest = (min if hib else max)(scores, key=scores.get)
        plans = [("retention", owner if owner in parents else None, min_retention),
                 ("regression", weakest, tolerance)]
        for kind, ref, limit in plans:
            if (task, kind) in decided:  # regression: the parent the sequential test decided against
                ref = decided[(task, kind)].reference
            ref_name = ref or "parents' mean"
            ref_score = scores[ref] if ref else mean
            threshold, margin = _rule(kind, ref_score, limit, hib, weighted)
            ok = m_score >= threshold if hib else m_score <= threshold
            ratio = (m_score / ref_score if hib else ref_score / m_score) if m_score and ref_score else math.nan
            v = Verdict(kind, merge, "pass" if ok else "fail",
                        figures={"obtained": m_score, "threshold": threshold, "reference": ref_name,
                                 "reference_score": ref_score, "retention": ratio,
                                 **({"min_retention": min_retention} if kind == "retention" else {"tolerance": tolerance}),
                                 **common},
                        summary=f"{task} {kind} against {ref_name}",
                        expected=f"{'>=' if hib else '<='} {threshold:.4g} ({key})",
                        delta=m_score - threshold,
                        data={"task": task, "kind": kind, "metric": key, "higher_is_better": hib,
                              "scores": all_scores, "roles": roles, "reference": ref_name})
            verdicts[(task, kind)] = v
            if (task, kind) in decided:
                _sequential(v, decided[(task, kind)], len(merged.tasks[task].records(key)))
            elif mode == "significance":
                if early is not None:
                    v.figures["sequential"] = "no"
                    v.data["fixed_n_reason"] = (f"sequential early stop not used for {task}: "
                                                f"{early.fixed_n.get(task, 'decided fixed-n')}")
                if kind == "regression":
                    margins = {n: _rule(kind, sc, limit, hib, weighted)[1] for n, sc in scores.items()}
                    compared = _compare_each(task, key, merged, parents, margins, stat, merge)
                    if not isinstance(compared, str):
                        v.data["compared_with"], compared = compared
                    # below every parent: with one parent the hypothesis its retention check tests too
                    pending.append(((task, kind), compared, (task, next(iter(parents)) if len(parents) == 1
                                                             else "every parent")))
                else:
                    pending.append(((task, kind), _compare(task, key, merged, parents, ref, margin, stat, merge),
                                    (task, ref_name)))
    if pending:
        usable = [(k, c, h) for k, c, h in pending if not isinstance(c, str)]
        # With sequential decisions in the run, each spent alpha / m of the run's alpha
        # (Bonferroni over m = 2 x tasks comparisons); the fixed-n ones share what is left.
        slots = next(iter(decided.values())).comparisons if decided else len(pending)
        adjusted = adjust_comparisons([c for _, c, _ in usable], stat("correction"),
                                      keys=[h for _, _, h in usable],
                                      share=min(1.0, len(pending) / slots)) if usable else []
        for (key, _, _), c in zip(usable, adjusted):
            v = verdicts[key]
            v.outcome = decide_significant_drop(c) if stat("decision") == "significant_drop" else c.verdict
            v.figures.update(c.figures())
            v.figures["decision"] = stat("decision")
            v.details = c.describe(v.data.get("compared_with", v.figures["reference"])).splitlines()
            blocking = blocking_line(c, v.data.get("compared_with", v.figures["reference"]))
            v.details += [blocking] if blocking else []
            if "fixed_n_reason" in v.data:
                v.details.append(v.data["fixed_n_reason"] + "; decided fixed-n on every item")
            v.data.update(effect=c.effect, ci=list(c.ci), n=c.n)
        for key, problem, _ in pending:
            if isinstance(problem, str):
                v = verdicts[key]
                v.outcome, v.reason = "error", problem
                v.fix = ("evaluate the whole task (drop --eval-limit), use a larger task, or set "
                         "[retention] mode = \"point\" for a smoke run")
    for v in verdicts.values():
        _explain(v)
    _examples(verdicts, merged, parents)
    return verdicts


def _sequential(v: Verdict, decision, n_scored: int) -> None:
    """A verdict the sequential test decided: its outcome, figures and the items it needed."""
    c = decision.comparison
    v.outcome = c.verdict
    v.figures.update(c.figures())
    v.figures.update(items_used=c.n, items_total=c.n_max, sequential="yes",
                     correction=f"bonferroni over {decision.comparisons}"
                     + (f" x {decision.parents} parents" if decision.parents > 1 else ""), decision="non_inferiority")
    v.summary += f", decided after {c.n} of {c.n_max} items"
    v.details = [c.describe(v.figures["reference"]),
                 f"sequential early stop: items in a seeded random order, {c.batch} at a time; "
                 f"alpha {decision.alpha:.3g} per comparison (alpha / {decision.comparisons}"
                 + (f" / {decision.parents}: against each parent" if decision.parents > 1 else "") + "); the scores "
                 f"above are on the {n_scored} items scored of this task"]
    v.data.update(effect=c.effect, n=c.n, items_used=c.n, items_total=c.n_max, items_scored=n_scored)


def _compare_each(task, key, merged, parents, margins, stat, merge):
    """Regression against each parent at alpha / k, combined by `significance.against_each`:
    (the parent the figures are against, the comparison), or a string as `_compare`."""
    from mergeqa.decision.significance import against_each

    alpha, k = stat("alpha"), len(parents)
    each = {}
    for name in parents:
        c = _compare(task, key, merged, parents, name, margins[name], stat, merge, alpha=alpha / k)
        if isinstance(c, str):
            return c
        each[name] = c
    return against_each(each, alpha)


def _compare(task, key, merged, parents, ref, margin, stat, merge, *, alpha=None):
    """The paired comparison on the gated metric `key` (at `alpha`, default the configured one), or a string saying why
    none can be decided (an error verdict)."""
    import numpy as np

    from mergeqa.decision.significance import compare_paired, smallest_decidable_n

    if ref is not None:
        a, b, _ = paired_values(task, merged, parents[ref], key, names=(merge, ref))
    else:  # no owner: against the per-item mean of the parents, on the documents all share
        pairs = [paired_values(task, merged, r, key, names=(merge, n)) for n, r in parents.items()]
        a, b = pairs[0][0], np.mean([p[1] for p in pairs], axis=0)
    if a.size == 0:
        return f"{task}: no items were scored (n=0); check the task's data and --eval-limit"
    alpha = stat("alpha") if alpha is None else alpha
    binary = bool(np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all())
    bounds = value_range(task, key, merged, [parents[ref]] if ref is not None else list(parents.values()))
    width = None if bounds is None else bounds[1] - bounds[0]
    needed = smallest_decidable_n(margin, alpha, binary=binary, width=width)
    if a.size < needed:
        return (f"{task}: {a.size} items, but no outcome on fewer than {needed} items can decide a paired "
                f"test at alpha={alpha:g} (margin {margin:.4g})")
    return compare_paired(a, b, margin=margin, alpha=alpha, power=stat("power"), bounds=bounds)


def value_range(task, key, merged, references) -> tuple[float, float] | None:
    """The range every model's gated per-item values of `task` lie in by the metric's definition
    (`TaskResult.value_range` of each leaf, all the same), or None: then graded items are decided
    by the sign-flip test, which assumes symmetric differences (docs/statistics.md)."""
    ranges = set()
    for result in (merged, *references):
        for leaf in result.groups.get(task, [task]):
            t = result.tasks[leaf]
            ranges.add(t.value_range(key))
    return ranges.pop() if len(ranges) == 1 else None


def _explain(v: Verdict) -> None:
    ref = v.figures["reference"]
    v.summary += (f" (parents {v.figures['expected_low']:.3f}..{v.figures['expected_high']:.3f})")
    if v.check == "retention":
        v.cause = (f"the merge lost the skill that {ref} carries: its task vector was diluted, pruned or "
                   "cancelled by the other parents'")
        v.fix = ("raise this parent's weight or density, try ties/dare_ties with a lower density for the "
                 "others, or lower [retention] min_retention if this loss is acceptable")
    else:
        v.cause = "the merge is worse than every parent on this task: interference between parents"
        v.fix = "check the merge weights and base_model; or raise [retention] tolerance"
    if v.outcome == "inconclusive":
        v.cause = "too few items (or too much disagreement between the two models) to tell either way"
        v.fix = (f"evaluate more items of {v.data['task']} (no --eval-limit), or accept unproven merges "
                 "with [statistics] inconclusive = \"warn\"")


def _examples(verdicts, merged: EvalResult, parents: dict[str, EvalResult]) -> None:
    """For each failed retention verdict against a parent: the first documents that parent got
    right and the merge got wrong (doc ids and targets), for the report."""
    for (task, kind), v in verdicts.items():
        ref = v.figures["reference"]
        if kind != "retention" or v.ok or ref not in parents:
            continue
        a, b, docs = paired_values(task, merged, parents[ref], v.data["metric"])
        lost = [docs[i] for i in range(len(docs)) if b[i] > a[i]][:EXAMPLES]
        v.data["lost_examples"] = [{"task": leaf, "doc_id": doc} for leaf, doc in lost]
