"""Every input a user can misspell, checked once at configure time, before any model is loaded:
names in thresholds.toml that must name a task of the suite, files named by options or [sections],
options that need each other, the perplexity task and its data, --eval-limit. Each problem is one
MergeQAUsageError naming the option or the file and the fix (pytest prints it, exit code 4).

Not for the checks themselves (they measure), nor for what thresholds.py validates on reading
(types, ranges, unknown keys); only what needs the run's options or suite beside the file.
"""

from __future__ import annotations

from mergeqa.core.errors import MergeQAUsageError, did_you_mean

# The family's one loglikelihood_rolling task (mergeqa/family/tasks.py, _PPL). Named here, not
# there: an edit under mergeqa/family/ changes the family's cache key and rebuilds every cache.
FAMILY_PERPLEXITY_TASKS = ("family_grammar_ppl",)
ROLLING = "loglikelihood_rolling"


def preflight(config, thresholds, gate) -> None:
    """All of the checks below, on the process that runs the session (under xdist the controller
    has checked before any worker starts)."""
    if hasattr(config, "workerinput"):
        return
    opt = config.option
    check_eval_limit(opt.eval_limit)
    check_retention_names(thresholds, embedded=gate.embedded)
    check_judge_inputs(thresholds, opt)
    check_conflict_pairs(thresholds, opt.conflict_pairs)
    check_perplexity_task(thresholds, opt.tasks_path)


def check_eval_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise MergeQAUsageError(f"--eval-limit {limit}: must be at least 1 (items per task); leave it out "
                                "to evaluate every item")


def check_retention_names(thresholds, *, embedded: bool) -> None:
    """Every [retention.capabilities] and [retention.metrics] task is a task of the suite: a
    misspelt one is otherwise ignored, and the real task loses its owner or its metric."""
    from mergeqa.decision.thresholds import defaults_for

    where = thresholds.path or "thresholds"
    suite = thresholds.get("retention", "suite")
    tasks = thresholds.suite(suite)["tasks"] if suite else []
    consequence = {"capabilities": "is measured against the parents' mean, not its owner",
                   "metrics": "is gated on its default metric"}
    for key, then in consequence.items():
        table = thresholds.get("retention", key)
        if table == defaults_for(embedded)["retention"][key]:
            continue  # the built-in defaults name their own suite's tasks; only a file's entries are checked
        for task in table:
            if task in tasks:
                continue
            if not suite:
                raise MergeQAUsageError(f"{where}: [retention.{key}] {task}: no [retention] suite is set, so "
                                        "no task is measured; set suite = \"NAME\" (a suite of [suites]) or "
                                        "remove the entry")
            raise MergeQAUsageError(f"{where}: [retention.{key}] {task} is not a task of the suite {suite!r} "
                                    f"(the entry is ignored and the task you meant {then}).{did_you_mean(task, tasks)}")


def check_judge_inputs(thresholds, opt) -> None:
    """The questions file (readable, well formed) and the judge: an endpoint with its model name,
    one judge only, a local judge that is a model directory."""
    from mergeqa.judge.evaluation import JudgeInputs

    inputs = JudgeInputs.resolve(thresholds, questions=opt.questions, judge=opt.judge,
                                 judge_url=opt.judge_url, judge_model=opt.judge_model)
    if inputs.source != "embedded":
        from mergeqa.judge.questions import read_questions

        read_questions(inputs.questions)  # a malformed line: one usage error naming file:line


def check_conflict_pairs(thresholds, option: str | None) -> None:
    from mergeqa.conflict.consistency import pairs_file, read_pairs

    path = pairs_file(thresholds, option)
    if path is not None:
        read_pairs(path)


def check_perplexity_task(thresholds, task_paths) -> None:
    """[sanity] perplexity_task names a loglikelihood_rolling task whose data is on this machine.

    The family's own tasks are written with their data by the family's build, which a run that
    needs them does first (the family is not built here for a check); any other task is looked up
    in --tasks-path, then in lm-eval's own index (~10 s; the engine reuses it in this process)."""
    task = thresholds.get("sanity", "perplexity_task")
    if not task:
        return
    from mergeqa.family.tasks import ALL_TASKS

    where = f"{thresholds.path or 'thresholds'}: [sanity] perplexity_task = {task!r}"
    if task in FAMILY_PERPLEXITY_TASKS:
        return
    if task in ALL_TASKS:
        raise MergeQAUsageError(f"{where}: not a perplexity ({ROLLING}) task of the family; use "
                                f"{', '.join(FAMILY_PERPLEXITY_TASKS)}")
    if task.startswith("family"):  # the family's prefix (its tasks directory is added for it)
        raise MergeQAUsageError(f"{where}: the embedded family has no such task.{did_you_mean(task, ALL_TASKS)}")
    from mergeqa.core.state import BUNDLED_TASKS
    from mergeqa.evaluate.availability import task_datasets
    from mergeqa.evaluate.engine import task_manager

    paths = (str(BUNDLED_TASKS), *task_paths)  # as the gate's EvalSettings name them
    data = task_datasets([task], paths, include_defaults=False)  # --tasks-path first: fast
    if any(d.source == "unknown task" for d in data):
        data = task_datasets([task], paths)
    unknown = [d for d in data if d.source == "unknown task"]
    if unknown:
        known = [*task_manager(tuple(paths), include_defaults=True).all_tasks, *FAMILY_PERPLEXITY_TASKS]
        raise MergeQAUsageError(f"{where}: lm-eval has no such task (add its YAML directory with --tasks-path)."
                                f"{did_you_mean(task, known)}")
    missing = [d for d in data if not d.available]
    if missing:
        raise MergeQAUsageError(f"{where}: its data is not on this machine ({missing[0].line()}); or set "
                                "perplexity_task = \"\" to skip the perplexity check")
    other = [d for d in data if d.output_type != ROLLING]
    if other:
        raise MergeQAUsageError(f"{where}: {other[0].task} is a {other[0].output_type or 'non-perplexity'} task; "
                                f"name a {ROLLING} task (e.g. wikitext), or \"\" to skip the check")
