"""Sequential early stop for retention and regression (`[statistics] sequential = true`): score
each task's documents in a seeded random order, one batch at a time, for the merge and its
parents, until the anytime-valid test of mergeqa.stats.sequential decides each comparison.

A task is decided sequentially when a parent owns it (`[retention.capabilities]`), it is one
lm-eval task (not a group), zero-shot, and its gated metric is 0/1 per item; every other task is
evaluated in full and decided fixed-n by mergeqa.retention.assess, with the reason in its verdict. The
batches are scored here, in this process (the engine's `docs=`, lm-eval's `samples=`), whatever
the executor; full evaluations go through `full`. Not the statistics, not the verdicts: this
module decides how many items to score and hands mergeqa.retention.assess.assess what it decided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from mergeqa.evaluate.engine import (
    WEIGHTED,
    EvalResult,
    EvalSettings,
    evaluate,
    extendable,
    load_tasks,
    paired_values,
    split_key,
    task_size,
)
from mergeqa.models.refs import ModelRef
from mergeqa.stats.sequential import DEFAULT_BATCH, SequentialComparison, compare_sequential, item_order

ORDER_SEED = 0  # one order per task size for every model, so parents' prefixes are shared
KINDS = ("retention", "regression")


@dataclass(frozen=True)
class SequentialDecision:
    """A comparison decided by the sequential test, against `reference` (a parent's name: the
    owner for retention; for regression the parent non-inferiority was shown against, or on a
    fail the one closest to it), at `alpha` (the configured alpha over the merge's comparisons,
    Bonferroni; regression: that over the k parents, each compared at alpha / k)."""

    comparison: SequentialComparison
    reference: str
    alpha: float
    comparisons: int  # the Bonferroni divisor: 2 x tasks of the suite
    parents: int = 1  # regression: compared against each of this many parents, at alpha / (comparisons x parents)


@dataclass
class EarlyStop:
    """What the sequential stage measured for one merge: results on the items it scored (the
    order's prefix for sequential tasks, every item for the others), its decisions, and for each
    task decided fixed-n the reason."""

    merged: EvalResult
    parents: dict[str, EvalResult]
    base: EvalResult | None
    decisions: dict[tuple[str, str], SequentialDecision] = field(default_factory=dict)
    fixed_n: dict[str, str] = field(default_factory=dict)


def evaluate_early(merged: ModelRef, parents: list[ModelRef], base: ModelRef | None, tasks: list[str],
                   thresholds, settings: EvalSettings, *, num_fewshot: dict | None = None,
                   full: Callable[[ModelRef, list[str]], EvalResult] | None = None,
                   batch: int = DEFAULT_BATCH,
                   progress: Callable[[str], None] | None = None) -> EarlyStop:
    """Score `tasks` batch by batch until every sequential comparison of `merged` is decided.

    `full(ref, tasks)` evaluates the fixed-n tasks (default: engine.evaluate here); the plugin
    passes its executor-aware evaluation.
    """
    full = full or (lambda ref, names: evaluate(ref, names, settings, num_fewshot=num_fewshot))
    leaves, groups = load_tasks(tasks, settings, num_fewshot)
    owners = thresholds.get("retention", "capabilities")
    names = [p.name for p in parents]
    fixed_n = {}
    for task in tasks:
        if task in groups:
            fixed_n[task] = "a group of tasks (decided on all its subtasks' items)"
        elif owners.get(task) not in names:
            fixed_n[task] = ("no parent owns it: retention is against the parents' per-item mean, "
                             "which is not a 0/1 outcome")
        elif not extendable(leaves[task]):
            fixed_n[task] = "few-shot: its examples depend on which documents are scored together"
    sizes = {t: task_size(leaves[t], settings) for t in tasks if t not in fixed_n}
    stop = _Loop(merged, parents, thresholds, settings, num_fewshot, batch,
                 alpha=thresholds.get("statistics", "alpha"), comparisons=2 * len(tasks))
    stop.run(sizes, fixed_n, progress)
    fixed = [t for t in tasks if t in fixed_n]
    results = []
    for ref in [merged, *parents, *([base] if base is not None else [])]:
        res = full(ref, fixed) if fixed else EvalResult(ref)
        scored = stop.views.get(ref.path, {})
        if ref is base and stop.prefix:  # the base only for its score, on the same items
            scored = evaluate(ref, list(stop.prefix), settings, num_fewshot=num_fewshot,
                              docs=stop.prefix).tasks
        results.append(EvalResult(ref, {**res.tasks, **scored}, dict(res.groups)))
    return EarlyStop(results[0], {p.name: r for p, r in zip(parents, results[1:])},
                     results[-1] if base is not None else None, stop.decisions, fixed_n)


class _Loop:
    """The batch loop: all sequential tasks advance together, one engine call per model a look."""

    def __init__(self, merged, parents, thresholds, settings, num_fewshot, batch, *, alpha, comparisons):
        self.merged, self.parents, self.thresholds = merged, parents, thresholds
        self.settings, self.num_fewshot, self.batch = settings, num_fewshot, batch
        self.alpha, self.comparisons = alpha / comparisons, comparisons
        self.views: dict = {}  # model path -> task -> TaskResult on the prefix scored
        self.prefix: dict[str, list[int]] = {}  # task -> the documents scored (order's prefix)
        self.decisions: dict[tuple[str, str], SequentialDecision] = {}

    def run(self, sizes: dict[str, int], fixed_n: dict[str, str], progress) -> None:
        orders = {t: item_order(n, ORDER_SEED) for t, n in sizes.items()}
        pending = set(sizes)
        look = 0
        while pending:
            look += 1
            docs = {t: [int(i) for i in orders[t][:min(sizes[t], look * self.batch)]] for t in sorted(pending)}
            if progress:
                progress(f"sequential: {self.merged.name}: scoring "
                         + ", ".join(f"{t} items 1-{len(d)} of {sizes[t]}" for t, d in docs.items()))
            for ref in [self.merged, *self.parents]:
                res = evaluate(ref, list(docs), self.settings, num_fewshot=self.num_fewshot, docs=docs)
                self.views.setdefault(ref.path, {}).update(res.tasks)
            self.prefix.update(docs)
            for task in sorted(pending):
                reason = self._decide(task, orders[task], sizes[task])
                if reason:
                    fixed_n[task] = reason
                if reason or all((task, kind) in self.decisions for kind in KINDS):
                    pending.discard(task)
        for task in fixed_n:  # scored in full by the caller, fixed-n
            self.prefix.pop(task, None)
            for views in self.views.values():
                views.pop(task, None)

    def _result(self, ref: ModelRef) -> EvalResult:
        return EvalResult(ref, self.views[ref.path])

    def _decide(self, task: str, order: np.ndarray, n_max: int) -> str | None:
        """Decide what this look decides for the task; a reason string when it cannot be
        sequential after all (its gated metric is not 0/1)."""
        from mergeqa.retention.assess import gated_metric

        merged = self._result(self.merged)
        key = gated_metric(task, merged, self.thresholds)
        if split_key(key)[0] in WEIGHTED or not merged.tasks[task].higher_is_better_for(key):
            return f"its gated metric {key!r} is not a 0/1 score where higher is better"
        position = {int(d): i for i, d in enumerate(order)}
        outcomes, scores = {}, {}
        for parent in self.parents:
            a, b, docs = paired_values(task, merged, self._result(parent), key,
                                       names=(self.merged.name, parent.name))
            if not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
                return f"its gated metric {key!r} is not 0/1 per item"
            rank = np.argsort([position[d] for _, d in docs], kind="stable")
            outcomes[parent.name] = (a[rank], b[rank])
            scores[parent.name] = float(b.mean())
        if (task, "retention") not in self.decisions:
            self._retention(task, outcomes, scores, n_max)
        if (task, "regression") not in self.decisions:
            self._regression(task, outcomes, scores, n_max)
        return None

    def _retention(self, task: str, outcomes: dict, scores: dict[str, float], n_max: int) -> None:
        """Retention against the owner at alpha / (2 x tasks); `outcomes` maps each parent to
        (merged, parent) 0/1 arrays in the order scored, `scores` to the parent's score on them."""
        from mergeqa.retention.assess import _rule

        owner = self.thresholds.get("retention", "capabilities")[task]
        margin = _rule("retention", scores[owner], self.thresholds.get("retention", "min_retention"), True, False)[1]
        c = compare_sequential(*outcomes[owner], margin=margin, alpha=self.alpha, n_max=n_max, batch=self.batch)
        if c.decided:
            self.decisions[(task, "retention")] = SequentialDecision(c, owner, self.alpha, self.comparisons)

    def _regression(self, task: str, outcomes: dict, scores: dict[str, float], n_max: int) -> None:
        """Regression against each parent at alpha / k (as significance.against_each): decided
        'pass' once non-inferiority is shown against one parent, 'fail' once a regression is
        shown against every one, 'inconclusive' when all are decided and neither holds."""
        from mergeqa.retention.assess import _rule

        alpha = self.alpha / len(scores)
        each = {}
        for ref in scores:
            margin = _rule("regression", scores[ref], self.thresholds.get("retention", "tolerance"), True, False)[1]
            each[ref] = compare_sequential(*outcomes[ref], margin=margin, alpha=alpha, n_max=n_max, batch=self.batch)
        passed = [ref for ref, c in each.items() if c.verdict == "pass"]
        if passed:
            verdict = "pass"
        elif all(c.verdict == "fail" for c in each.values()):
            verdict = "fail"
        elif all(c.decided for c in each.values()):
            verdict = "inconclusive"
        else:
            return
        ref = passed[0] if passed else min(each, key=lambda r: each[r].p_noninferiority)
        c = each[ref] if each[ref].verdict == verdict else replace(each[ref], verdict=verdict)
        self.decisions[(task, "regression")] = SequentialDecision(c, ref, alpha, self.comparisons, len(each))
