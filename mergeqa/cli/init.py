"""`mergeqa init`, which writes a commented thresholds.toml for your merge (what a gate without
one says about the checks it cannot run is mergeqa.pytest_plugin.no_suite).

    mergeqa init --model ./merged --parents ./math ./code [--base ./base] [--suite leaderboard_v1
                 | --tasks my_task ... --tasks-path ./my_tasks] [--out thresholds.toml] [--force]

Not a place for measuring: the file only says what the gate will measure and where its data is.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError, did_you_mean
from mergeqa.models.refs import validate_model_dir

BUILTIN_SUITES = ("leaderboard_v1", "leaderboard_v2", "code")
GENERAL_SUITES = BUILTIN_SUITES[:2]  # what `init` picks from by itself; code only when asked for
PERPLEXITY_TASK = "wikitext"  # written as [sanity] perplexity_task when its data is on this machine


# -- mergeqa init -----------------------------------------------------------------------------
def has_chat_template(model_dir: Path) -> bool:
    """Whether the checkpoint's tokenizer ships a chat template (read from its files)."""
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("chat_template"))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else json.dumps(name)


def availability_by_task(tasks: list[str], task_paths) -> dict[str, list]:
    """{suite task: [TaskData of its leaves]} (a group such as mmlu has many leaves)."""
    from mergeqa.evaluate.availability import task_datasets

    return {t: task_datasets([t], task_paths) for t in tasks}


def _availability_lines(by_task: dict[str, list]) -> list[str]:
    lines = []
    for task, leaves in by_task.items():
        if len(leaves) == 1 and leaves[0].task == task:
            lines.append(leaves[0].line())
            continue
        ok = sum(d.available for d in leaves)
        sources = defaultdict(list)
        for d in leaves:
            sources[d.source.split(" (")[0]].append(d)
        where = "; ".join(f"{src}: {sum(d.available for d in ds)} of {len(ds)}" for src, ds in sources.items())
        lines.append(f"{task}: {ok} of {len(leaves)} subtasks available offline ({where})")
    return lines


def choose_suite(suite: str | None, tasks: list[str] | None, task_paths) -> tuple[str, dict, dict[str, list], str]:
    """(name, suite table, availability by task, why chosen)."""
    from mergeqa.decision.thresholds import GENERIC_DEFAULTS

    builtins = GENERIC_DEFAULTS["suites"]
    if tasks:
        spec = {"tasks": list(tasks)}
        return "custom", spec, availability_by_task(spec["tasks"], task_paths), "your lm-eval tasks (--tasks)"
    if suite is not None:
        if suite not in BUILTIN_SUITES:
            raise MergeQAUsageError(f"--suite {suite}: not a built-in suite.{did_you_mean(suite, BUILTIN_SUITES)} "
                                    f"Available: {', '.join(BUILTIN_SUITES)}; or pass --tasks NAME ... for your own")
        return suite, builtins[suite], availability_by_task(builtins[suite]["tasks"], task_paths), "--suite"
    tried = []
    for name in GENERAL_SUITES:
        by_task = availability_by_task(builtins[name]["tasks"], task_paths)
        leaves = [d for ds in by_task.values() for d in ds]
        tried.append(f"{name} {sum(d.available for d in leaves)}/{len(leaves)}")
        if leaves and all(d.available for d in leaves):
            return name, builtins[name], by_task, ("the first leaderboard suite whose datasets are all on "
                                                   f"this machine (datasets here: {', '.join(tried)})")
    name = GENERAL_SUITES[0]
    return name, builtins[name], availability_by_task(builtins[name]["tasks"], task_paths), (
        f"no leaderboard suite has its datasets on this machine (datasets here: {', '.join(tried)}): fetch "
        "those marked below, or run `mergeqa init` with --tasks YOUR_TASKS or --suite code")


def _prompts(chat: bool) -> dict:
    """The merge guide's sanity prompts; the chat one only for a tokenizer with a chat template."""
    from mergeqa.decision.thresholds import GENERIC_DEFAULTS

    return {k: v for k, v in GENERIC_DEFAULTS["sanity"]["prompts"].items() if chat or not v.get("chat")}


def render(model: Path, parents: list[Path], base: Path | None, *, suite_name: str, suite: dict,
           by_task: dict[str, list], why: str, chat: bool, perplexity_task: str, task_paths) -> str:
    """The commented thresholds.toml."""
    from mergeqa.decision.thresholds import GENERIC_DEFAULTS

    d = GENERIC_DEFAULTS
    command = " ".join(["pytest", f"--model={model}", "--parents", *map(str, parents)]
                       + ([f"--base={base}"] if base else []) + [f"--tasks-path={p}" for p in task_paths])
    prompts = _prompts(chat)
    out = [
        f"# mergeqa thresholds for {model.name}, written by `mergeqa init`: what it must reach to pass the gate.",
        f"# Run it with:  {command}",
        "# Every key is checked when the file is read: a typo is a usage error naming the key.",
        "",
        "[sanity]",
    ]
    for key in ("max_repetition_rate", "repetition_ngram", "max_repeated_span", "max_perplexity_ratio", "new_tokens",
                "parents_fail"):
        out.append(f"{key} = {_toml(d['sanity'][key])}")
    ppl_note = ("held-out text; its data is on this machine" if perplexity_task else
                f"empty: the check is skipped; e.g. \"{PERPLEXITY_TASK}\" once its data is on this machine")
    out += [f"perplexity_task = {_toml(perplexity_task)}  # an lm-eval loglikelihood_rolling task ({ppl_note})", "",
            "# What a coherent greedy continuation contains: `expect` = substrings (any one), `match` = a regular",
            "# expression; `chat = true` goes through the tokenizer's chat template. \"Tell me about AI\" is also",
            "# the repetition probe. Add prompts your parents' skills should answer.",
            "[sanity.prompts]"]
    out += [f"{_key(k)} = {_toml(v)}" for k, v in prompts.items()]
    if not chat:
        out.append(f"# no chat prompt: {model.name}'s tokenizer has no chat template (add one with chat = true "
                   "if it gets one)")
    out += ["", "[lint]"] + [f"{k} = {_toml(v)}" for k, v in d["lint"].items()]
    out += ["", "[retention]",
            f"suite = {_toml(suite_name)}  # {why}"]
    out += [f"{k} = {_toml(d['retention'][k])}" for k in ("min_retention", "tolerance", "mode")]
    out += ["",
            "# Which parent carries which capability: task = \"parent directory name\". A task's retention is",
            "# measured against its owner; a task with no owner against the parents' mean (no paired test).",
            "# Replace each placeholder with the task of the suite that parent was fine-tuned for:",
            "[retention.capabilities]"]
    out += [f"# \"TASK-FOR-{p.name}\" = {_toml(p.name)}" for p in parents]
    out += ["", "[statistics]"] + [f"{k} = {_toml(v)}" for k, v in d["statistics"].items()]
    out += ["", "[probing]  # the built-in English phenomena (mergeqa/data/probing/)"]
    out += [f"{k} = {_toml(v)}" for k, v in d["probing"].items()]
    out += ["", "# Judged (MT-Bench style) and conflict checks need data about your models; without it they",
            "# are reported \"not run\" (the embedded questions and pairs test the tiny family only).",
            "# [judge]",
            "# questions = \"question.jsonl\"  # FastChat's MT-Bench question.jsonl (--questions)",
            "# judge = \"reference\"  # or a local judge model directory; or url + model for an endpoint",
            "# [conflict]",
            "# pairs = \"pairs.jsonl\"  # consistency pairs, JSONL: a, b, consistent, skill (--conflict-pairs)",
            f"# owners = {{ SKILL = {_toml(parents[0].name)} }}  # the parent whose answers a skill's pairs follow"]
    out += ["", f"[suites.{suite_name}]"] + [f"{k} = {_toml(v)}" for k, v in suite.items()]
    out += ["# Datasets of this suite on this machine now (checked by `mergeqa init`; nothing downloaded):"]
    out += [f"#   {line}" for line in _availability_lines(by_task)]
    return "\n".join(out) + "\n"


def init(model, parents, base=None, *, suite: str | None = None, tasks: list[str] | None = None,
         task_paths=(), out: Path = Path("thresholds.toml"), force: bool = False) -> tuple[Path, str]:
    """Write `out` for this merge; returns (path, a summary to print). Never overwrites without force."""
    from mergeqa.decision.thresholds import load_thresholds

    out = Path(out)
    if out.exists() and not force:
        raise MergeQAUsageError(f"{out} already exists; pass --force to overwrite it, or --out PATH to write "
                                "another file")
    model = validate_model_dir(model, "--model")
    parents = [validate_model_dir(p, "--parents") for p in parents]
    base = validate_model_dir(base, "--base") if base else None
    if len(parents) < 1:
        raise MergeQAUsageError("--parents: give the parent checkpoint directories the merge was made from")
    for p in task_paths:
        if not Path(p).is_dir():
            raise MergeQAUsageError(f"--tasks-path {p}: no such directory of lm-eval task YAML")
    from mergeqa.core.state import BUNDLED_TASKS

    paths = [str(BUNDLED_TASKS), *map(str, task_paths)]
    name, spec, by_task, why = choose_suite(suite, tasks, paths)
    chat = has_chat_template(model)
    ppl_data = availability_by_task([PERPLEXITY_TASK], paths)[PERPLEXITY_TASK]
    ppl = PERPLEXITY_TASK if ppl_data and all(d.available for d in ppl_data) else ""
    text = render(model, parents, base, suite_name=name, suite=spec, by_task=by_task, why=why, chat=chat,
                  perplexity_task=ppl, task_paths=[Path(p).resolve() for p in task_paths])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    try:
        load_thresholds(tmp, embedded=False)  # what we write must read back
    except MergeQAUsageError:
        tmp.unlink()
        raise
    tmp.replace(out)
    leaves = [d for ds in by_task.values() for d in ds]
    summary = [f"mergeqa init: wrote {out}",
               f"  suite {name}: {len(spec['tasks'])} task(s), {sum(d.available for d in leaves)} of {len(leaves)} "
               "dataset(s) available offline" + ("" if all(d.available for d in leaves) else
                                                 f"; a run stops at the first missing one ({why})"),
               f"  sanity prompts: {', '.join(_prompts(chat))}"
               + ("" if chat else " (no chat prompt: the tokenizer has no chat template)"),
               f"  capabilities: placeholders for {', '.join(p.name for p in parents)} (edit [retention.capabilities])"]
    return out, "\n".join(summary)
