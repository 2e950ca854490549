"""`mergeqa plan`: a dry run. What a gate run would evaluate, what the cache already holds, the
smallest drop each comparison can detect at its sample size, and the work left (forward tokens).

    mergeqa plan --model ./merged --parents ./math ./code [--thresholds t.toml] [--eval-limit N]
    mergeqa plan                       # the embedded default (reads the family only if built)

Nothing is trained, merged, loaded for inference or evaluated: models are hashed, task YAML and
(locally available) datasets are read, prompts and items are tokenized. Not a benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .models import ModelRef

ASSUMED_DISCORDANCE = 0.2  # share of items two models score differently, for planning only


@dataclass
class PlannedModel:
    role: str
    name: str
    ref: ModelRef | None  # None: not built yet, so no hash and nothing cached
    note: str = ""
    cached_tasks: set[str] = field(default_factory=set)
    cached_probes: list[str] = field(default_factory=list)

    def line(self, n_tasks: int, n_probes: int) -> str:
        if self.ref is None:
            return f"  {self.role:<7} {self.name:<16} {self.note}"
        return (f"  {self.role:<7} {self.name:<16} sha256 {self.ref.content_hash[:12]}  results cached: "
                f"{len(self.cached_tasks)}/{n_tasks} tasks, {len(self.cached_probes)}/{n_probes} probing sets"
                f"  {self.ref.path}{'  ' + self.note if self.note else ''}")


def _models(gate, family) -> list[PlannedModel]:
    """Merged models, parents, base: resolved without building any of them."""
    from .merging import merge_target

    out = []
    subs = ({"base": str(family.base), **{k: str(v) for k, v in family.parents.items()}}
            if gate.embedded and family else {})
    for i, name in enumerate(gate.merged_names):
        if i < len(gate.model_paths):
            out.append(PlannedModel("merged", name, ModelRef(name, gate.model_paths[i], "merged")))
            continue
        config = gate.merge_configs[i - len(gate.model_paths)]
        if gate.embedded and family is None:
            out.append(PlannedModel("merged", name, None, f"from {config.name}: the family is not built yet"))
            continue
        target = merge_target(config, gate.cache_dir, substitutions=subs, seed=gate.merge_seed)
        if target.is_dir():
            out.append(PlannedModel("merged", name, ModelRef(name, target, "merged"), f"(from {config.name})"))
        else:
            out.append(PlannedModel("merged", name, None, f"from {config.name}: not built yet (mergekit builds "
                                    "it at first use; its hash is known then)"))
    if gate.parent_paths is not None or (gate.merge_configs and not gate.embedded):
        out += [PlannedModel("parent", p.name, p) for p in gate.parents()]
        base = gate.base()
        out += [PlannedModel("base", base.name, base)] if base else []
    elif family is not None:
        out += [PlannedModel("parent", n, ModelRef(n, p, "parent")) for n, p in family.parents.items()]
        out.append(PlannedModel("base", "base", ModelRef("base", family.base, "base")))
    else:
        out.append(PlannedModel("parent", "(family)", None, "the embedded family's parents and base: not built "
                                "yet (`mergeqa family` builds them, about 3 min on 2 cores)"))
    return out


def _request_tokens(task, tokenizer, limit, backend: str) -> int:
    """Forward tokens to score one task once: contexts shared across their continuations by the
    mergeqa-hf scorer, generation counted up to max_gen_toks."""
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    length = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    total, contexts = 0, set()
    for inst in task.instances:
        args = inst.arguments
        if inst.request_type == "loglikelihood":
            ctx, cont = args[0], args[1]
            if backend == "mergeqa-hf":
                total += length(cont) + (0 if ctx in contexts else length(ctx))
                contexts.add(ctx)
            else:
                total += length(ctx + cont)
        elif inst.request_type == "loglikelihood_rolling":
            total += length(args[0])
        else:  # generate_until
            total += length(args[0]) + int((args[1] or {}).get("max_gen_toks", 256))
    return total


def _fmt(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(int(n))


def _mde(n: int, alpha: float, power: float) -> str:
    import math

    from .stats.power import minimum_detectable_effect

    if n <= 0:
        return "-"
    best = minimum_detectable_effect(n, 0.0, alpha=alpha, power=power)
    typical = minimum_detectable_effect(n, ASSUMED_DISCORDANCE, alpha=alpha, power=power)
    if math.isinf(typical):
        return "none: too few items for any drop to be significant"
    return f"{100 * typical:.1f} points ({100 * best:.1f} if only the dropped items differ)"


def plan(args) -> str:
    """The plan as text, from the same options as the gate (argparse namespace from mergeqa.cli)."""
    from .cache import default_cache_dir
    from .engine import EvalSettings
    from .plugin import BUNDLED_TASKS
    from .session import GateSession
    from .thresholds import load_thresholds

    gate = GateSession.from_options(models=args.model, parents=args.parents, base=args.base,
                                    merge_configs=args.merge_config, cache_dir=args.cache or default_cache_dir(),
                                    device=args.device, dtype=args.dtype, seed=0)
    path = args.thresholds or ("thresholds.toml" if Path("thresholds.toml").is_file() else None)
    thresholds = load_thresholds(path, embedded=gate.embedded)
    suite_name = thresholds.get("retention", "suite")
    suite = thresholds.suite(suite_name) if suite_name else {"tasks": []}
    ppl_task = thresholds.get("sanity", "perplexity_task")
    wants_family = gate.embedded or (gate.parent_paths is None and not gate.merge_configs) or any(
        t.startswith("family") for t in [*suite["tasks"], ppl_task])
    family = gate.built_family() if wants_family else None
    paths = [str(BUNDLED_TASKS), *args.tasks_path] + ([str(family.tasks_dir)] if family else [])
    settings = EvalSettings(cache_dir=gate.cache_dir, device=args.device, dtype=args.dtype,
                            backend=args.backend, limit=args.eval_limit, task_paths=tuple(paths))
    alpha, power = thresholds.get("statistics", "alpha"), thresholds.get("statistics", "power")
    models = _models(gate, family)
    refs = [m.ref for m in models if m.ref is not None]
    tokenizer = refs[0].tokenizer() if refs else None
    what = "the embedded default (the tiny family and its merges)" if gate.embedded else \
        f"{len(gate.merged_names)} merged model(s) against their parents"
    lines = [f"mergeqa plan: {what}", f"thresholds: {path or 'built-in defaults'}; cache: {gate.cache_dir}"]
    if wants_family:
        lines.append(f"family: {'built, ' + str(family.root) if family else 'not built (the run builds it first)'}")
    header = len(lines)

    # -- retention suite: items, cache, power, tokens ------------------------------------------
    evaluated = [m for m in models if m.role in ("merged", "parent", "base")]
    tokens = {"evaluation": 0, "probing": 0, "sanity": 0}
    task_lines = []
    leaves_of: dict[str, dict] = {}
    for task in suite["tasks"]:
        if task.startswith("family") and family is None:  # its size is in the recipe
            from .family import load_recipe

            n = load_recipe()["eval_items"]
            task_lines.append(f"  {task}: n={n} items (the family recipe's eval_items; written when the family "
                              f"is built); smallest drop detectable: {_mde(n, alpha, power)}")
            continue
        leaves, problem = _load(task, settings, suite.get("num_fewshot"))
        if problem:
            task_lines.append(f"  {task}: {problem}")
            continue
        leaves_of[task] = leaves
        n = sum(min(len(t.eval_docs), args.eval_limit or len(t.eval_docs)) for t in leaves.values())
        work = sum(_request_tokens(t, tokenizer, args.eval_limit, args.backend) for t in leaves.values()) \
            if tokenizer is not None else None
        for m in evaluated:
            if m.ref is not None and set(leaves) <= _cached(m.ref, list(leaves), settings):
                m.cached_tasks.add(task)
            todo = m.ref is None or task not in m.cached_tasks
            if todo and work is not None:
                tokens["evaluation"] += work
        sub = f", {len(leaves)} subtasks" if len(leaves) > 1 or task not in leaves else ""
        task_lines.append(f"  {task}: n={n} items{sub}; smallest drop detectable: {_mde(n, alpha, power)}"
                          + (f"; {_fmt(work)} forward tokens per model" if work is not None else ""))
    if suite["tasks"]:
        lines += ["", f"retention suite {suite_name!r} (paired tests, one-sided alpha {alpha}, power {power}, "
                  f"{ASSUMED_DISCORDANCE:.0%} of items discordant; Holm across up to {2 * len(suite['tasks'])} "
                  "comparisons per merge):"] + task_lines
    else:
        from .init import no_suite_line

        lines += ["", no_suite_line(thresholds)]

    # -- probing -------------------------------------------------------------------------------
    from .probing.engine import ProbingEngine

    engine = ProbingEngine.from_thresholds(thresholds, cache_dir=gate.cache_dir, device="cpu", dtype=args.dtype)
    for m in evaluated:
        if m.ref is not None:
            m.cached_probes = engine.cached(m.ref)
    probe_lines = []
    for d in engine.datasets.values():
        n_test = len(d.indices("test"))
        per_model = sum(len(tokenizer(i.text).input_ids) for i in d.items) if tokenizer is not None else None
        for m in evaluated:
            todo = m.ref is None or d.name not in m.cached_probes
            if todo and per_model is not None:
                tokens["probing"] += per_model
        probe_lines.append(f"  {d.name}: {len(d.items)} sentences, test n={n_test}; smallest drop detectable: "
                           f"{_mde(n_test, alpha, power)}")
    lines += ["", f"probing ({len(engine.datasets)} sets, every model, best and last layer):"] + probe_lines

    # -- sanity ---------------------------------------------------------------------------------
    from .sanity import parse_prompts

    prompts = parse_prompts(thresholds.get("sanity", "prompts"))
    chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    skipped = [p for p in prompts if p.chat and not chat] if tokenizer is not None else []
    prompts = [p for p in prompts if p not in skipped]
    new_tokens = thresholds.get("sanity", "new_tokens")
    merged = [m for m in models if m.role == "merged"]
    if tokenizer is not None:
        per_merge = 2 * sum(len(tokenizer(p.text).input_ids) + new_tokens for p in prompts)
        tokens["sanity"] = per_merge * len(merged)
    lines += ["", f"sanity: {len(prompts)} prompts x 2 greedy runs x {new_tokens} new tokens per merge"
              + (f" ({len(skipped)} chat prompt(s) skipped: no chat template)" if skipped else "")
              + f"; perplexity: {ppl_task or 'none (no [sanity] perplexity_task)'}"]
    lines[header:header] = ["", "models:"] + [m.line(len(suite["tasks"]), len(engine.datasets)) for m in models]
    total = sum(tokens.values())
    if tokenizer is None:
        lines += ["", "work: unknown until the models exist (nothing to tokenize with yet)"]
    else:
        unbuilt = sum(m.ref is None for m in models)
        lines += ["", f"work left: about {_fmt(total)} forward tokens (evaluation {_fmt(tokens['evaluation'])}, "
                  f"probing {_fmt(tokens['probing'])}, sanity {_fmt(tokens['sanity'])}), counted with "
                  f"{refs[0].name}'s tokenizer" + (f"; {unbuilt} model(s) to build first" if unbuilt else "")]
    return "\n".join(lines)


def _load(task: str, settings, num_fewshot):
    """({leaf: Task}, None) or ({}, why it cannot be planned)."""
    from .availability import task_datasets
    from .engine import load_tasks
    from .errors import MergeQAUsageError

    if not task.startswith("family"):
        data = task_datasets([task], settings.task_paths)
        missing = [d for d in data if not d.available]
        if missing:
            return {}, (f"NOT available offline: {len(missing)} of {len(data)} dataset(s), e.g. {missing[0].source} "
                        f"({missing[0].where}); the run would stop at this task")
    try:
        leaves, _ = load_tasks([task], settings, num_fewshot)
    except MergeQAUsageError as exc:
        return {}, str(exc)
    return leaves, None


def _cached(ref: ModelRef, leaves: list[str], settings) -> set[str]:
    """The leaves whose results for `ref` the cache holds (evaluate with cached_only computes nothing)."""
    from .engine import evaluate

    return set(evaluate(ref, leaves, settings, cached_only=True).tasks)
