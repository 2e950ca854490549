"""`mergeqa plan`: a dry run. What a gate run would evaluate, what the cache already holds, the
smallest drop each comparison can detect at its sample size, and the work left (forward tokens).

    mergeqa plan --model ./merged --parents ./math ./code [--thresholds t.toml] [--eval-limit N]
    mergeqa plan                       # the embedded default (reads the family's cache entry if written)

Nothing is trained, merged, loaded for inference or evaluated: models are hashed, task YAML and
(locally available) datasets are read, prompts and items are tokenized. Not a benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from mergeqa.models.refs import ModelRef

ASSUMED_DISCORDANCE = 0.2  # share of items two models score differently, for planning only
ASSUMED_SCORE = 0.8  # the owner's accuracy the retention margin is taken from, for planning only


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
    from mergeqa.models.merging import merge_target

    out = []
    subs = ({"base": str(family.base), **{k: str(v) for k, v in family.parents.items()}}
            if gate.embedded and family else {})
    targets: dict[tuple, Path] = {}  # (file, document name) -> built directory
    for name, unit in gate._units().items():
        if isinstance(unit, Path):
            out.append(PlannedModel("merged", name, ModelRef(name, unit, "merged")))
            continue
        config = unit.path
        if gate.embedded and family is None:
            out.append(PlannedModel("merged", name, None, f"from {config.name}: not built yet (nor the family's "
                                    "cache entry, which the run writes first)"))
            continue
        missing = [d for d in unit.depends if (config, d) not in targets]
        if missing:
            out.append(PlannedModel("merged", name, None, f"from {config.name}: not built yet (after "
                                    f"{', '.join(missing)}, which it merges)"))
            continue
        built = {d: str(targets[(config, d)]) for d in unit.depends}
        target = merge_target(config, gate.cache_dir, substitutions=subs, seed=gate.merge_seed,
                              document=unit.index, built=built)
        if target.is_dir():
            targets[(config, unit.name)] = target
            out.append(PlannedModel("merged", name, ModelRef(name, target, "merged"), f"(from {config.name})"))
        else:
            out.append(PlannedModel("merged", name, None, f"from {config.name}: not built yet (mergekit builds "
                                    "it at first use; its hash is known then)"))
    if gate.parent_paths is not None or (gate.merge_configs and not gate.embedded):
        out += [PlannedModel("parent", p.name, p) for p in gate.parents(build=False)]
        base = gate.base()
        out += [PlannedModel("base", base.name, base)] if base else []
    elif family is not None:
        out += [PlannedModel("parent", n, ModelRef(n, p, "parent")) for n, p in family.parents.items()]
        out.append(PlannedModel("base", "base", ModelRef("base", family.base, "base")))
    else:
        out.append(PlannedModel("parent", "(family)", None, "the embedded family's parents and base: shipped with "
                                "mergeqa, not in this cache yet (`mergeqa family` writes its entry, seconds)"))
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

    from mergeqa.stats.power import minimum_detectable_effect

    if n <= 0:
        return "-"
    best = minimum_detectable_effect(n, 0.0, alpha=alpha, power=power)
    typical = minimum_detectable_effect(n, ASSUMED_DISCORDANCE, alpha=alpha, power=power)
    if math.isinf(typical):
        return "none: too few items for any drop to be significant"
    return f"{100 * typical:.1f} points ({100 * best:.1f} if only the dropped items differ)"


def _policy_margin(thresholds) -> tuple[str, float]:
    """The blocking policy ("fail", "warn" or "significant_drop") and the retention margin at
    ASSUMED_SCORE."""
    stat = lambda key: thresholds.get("statistics", key)  # noqa: E731
    policy = "significant_drop" if stat("decision") == "significant_drop" else stat("inconclusive")
    return policy, (1 - thresholds.get("retention", "min_retention")) * ASSUMED_SCORE


def _blocking_rate(n: int, thresholds) -> float:
    """The blocking rate of one retention comparison at n items, under the configured policy."""
    from mergeqa.decision.blocking import blocking_rate

    policy, margin = _policy_margin(thresholds)
    return blocking_rate(n, margin, discordance=ASSUMED_DISCORDANCE, alpha=thresholds.get("statistics", "alpha"),
                         policy=policy)


def _blocking(n: int, thresholds) -> str:
    """`_blocking_rate` in words."""
    if n <= 0:
        return "-"
    policy, margin = _policy_margin(thresholds)
    rate = _blocking_rate(n, thresholds)
    what = {"fail": "not shown non-inferior", "warn": "a significant regression",
            "significant_drop": "a significant drop beyond the margin"}[policy]
    sequential = ("; fixed-n figure, sequential mode blocks more often"
                  if thresholds.get("statistics", "sequential") else "")
    return (f"{rate:.2f} (a merge exactly as good as its owner is blocked when {what}; "
            f"retention margin {100 * margin:.1f} pts at an owner score of {ASSUMED_SCORE:g}{sequential})")


def _preflight(args, thresholds, gate) -> None:
    """What the gate refuses at configure time, refused here too (one line, exit 4), before
    anything is counted: a plan of a run that would stop is no plan."""
    from types import SimpleNamespace

    from mergeqa.pytest_plugin import preflight as pf

    pf.check_eval_limit(args.eval_limit)
    if thresholds.path is not None or gate.embedded:
        thresholds.check_parents(gate.parent_names())
    if thresholds.get("retention", "suite"):
        thresholds.suite(thresholds.get("retention", "suite"))
    pf.check_retention_names(thresholds, embedded=gate.embedded)
    pf.check_judge_inputs(thresholds, SimpleNamespace(questions=None, judge=None, judge_url=None, judge_model=None))
    pf.check_conflict_pairs(thresholds, None)
    pf.check_perplexity_task(thresholds, args.tasks_path)


def plan(args) -> str:
    """The plan as text, from the same options as the gate (argparse namespace from mergeqa.cli.main)."""
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.core.state import BUNDLED_TASKS
    from mergeqa.decision.thresholds import load_thresholds
    from mergeqa.evaluate.engine import EvalSettings
    from mergeqa.models.session import GateSession

    gate = GateSession.from_options(models=args.model, parents=args.parents, base=args.base,
                                    merge_configs=args.merge_config, cache_dir=args.cache or default_cache_dir(),
                                    device=args.device, dtype=args.dtype, seed=0)
    path = args.thresholds or ("thresholds.toml" if Path("thresholds.toml").is_file() else None)
    thresholds = load_thresholds(path, embedded=gate.embedded)
    _preflight(args, thresholds, gate)
    suite_name = thresholds.get("retention", "suite")
    tasks = thresholds.suite(suite_name)["tasks"] if suite_name else []
    wants_family = gate.embedded or (gate.parent_paths is None and not gate.merge_configs) or any(
        t.startswith("family") for t in [*tasks, thresholds.get("sanity", "perplexity_task")])
    family = gate.built_family() if wants_family else None
    paths = [str(BUNDLED_TASKS), *args.tasks_path] + ([str(family.tasks_dir)] if family else [])
    settings = EvalSettings(cache_dir=gate.cache_dir, device=args.device, dtype=args.dtype,
                            backend=args.backend, limit=args.eval_limit, task_paths=tuple(paths))
    planner = Planner(thresholds, settings, _models(gate, family), family_built=family is not None)
    what = "the embedded default (the tiny family and its merges)" if gate.embedded else \
        f"{len(gate.merged_names)} merged model(s) against their parents"
    lines = [f"mergeqa plan: {what}", f"thresholds: {path or 'built-in defaults'}; cache: {gate.cache_dir}"]
    if wants_family:
        where = (f"in the cache, {family.root}" if family else
                 "shipped, not in this cache yet (the run writes its entry first: links and tasks, seconds)")
        lines.append(f"family: {where}")
    sections = (planner.suite_lines() + planner.probing_lines() + planner.sanity_lines()  # fills the cache state
                + planner.judge_lines())
    return "\n".join(lines + planner.model_lines() + sections + planner.work_lines())


@dataclass
class Planner:
    """One dry run: each section adds its lines and the forward tokens its work still needs."""

    thresholds: object
    settings: object
    models: list[PlannedModel]
    family_built: bool
    tokens: dict[str, int] = field(default_factory=lambda: {"evaluation": 0, "probing": 0, "sanity": 0})

    def __post_init__(self):
        self.refs = [m.ref for m in self.models if m.ref is not None]
        self.tokenizer = self.refs[0].tokenizer() if self.refs else None
        self.alpha = self.thresholds.get("statistics", "alpha")
        self.power = self.thresholds.get("statistics", "power")
        name = self.thresholds.get("retention", "suite")
        self.suite = self.thresholds.suite(name) if name else {"tasks": []}
        probing = [self.thresholds.get("probing", k) for k in ("phenomena", "datasets")]
        self.n_probes = sum(len(names) for names in probing)

    def _task(self, task: str, roles: tuple[str, ...], num_fewshot=None) -> tuple[int, str, str]:
        """(items, what they are, the work) for one task; adds its tokens for every model of `roles`
        whose results the cache lacks. Items 0: the middle string says why it cannot be planned."""
        leaves, problem = _load(task, self.settings, num_fewshot)
        if problem:
            return 0, problem, ""
        limit = self.settings.limit
        n = sum(min(len(t.eval_docs), limit or len(t.eval_docs)) for t in leaves.values())
        work = None if self.tokenizer is None else sum(
            _request_tokens(t, self.tokenizer, limit, self.settings.backend) for t in leaves.values())
        for m in self.models:
            if m.role not in roles:
                continue
            if m.ref is not None and set(leaves) <= _cached(m.ref, list(leaves), self.settings):
                if task in self.suite["tasks"]:
                    m.cached_tasks.add(task)
            elif work is not None:
                self.tokens["evaluation"] += work
        sub = f", {len(leaves)} subtasks" if len(leaves) > 1 or task not in leaves else ""
        return n, f"n={n} items{sub}", f"; {_fmt(work)} forward tokens per model" if work is not None else ""

    def suite_lines(self) -> list[str]:
        tasks, alpha, power = self.suite["tasks"], self.alpha, self.power
        if not tasks:
            from mergeqa.pytest_plugin.no_suite import no_suite_line

            return ["", no_suite_line(self.thresholds)]
        policy = ("decision = significant_drop" if self.thresholds.get("statistics", "decision") == "significant_drop"
                  else f"inconclusive = {self.thresholds.get('statistics', 'inconclusive')}")
        lines = ["", f"retention suite {self.thresholds.get('retention', 'suite')!r} (paired tests, one-sided alpha "
                 f"{alpha}, power {power}, {ASSUMED_DISCORDANCE:.0%} of items discordant; Holm across up to "
                 f"{2 * len(tasks)} comparisons per merge). alpha bounds a false fail; with {policy} the "
                 "blocking rate is the chance CI goes red for a merge as good as its parents, per comparison:"]
        sizes: list[int] = []
        for task in tasks:
            if task.startswith("family") and not self.family_built:  # its size is in the recipe
                from mergeqa.family import load_recipe

                n = load_recipe()["eval_items"]
                lines.append(f"  {task}: n={n} items (the family recipe's eval_items; written with the family's "
                             f"cache entry); smallest drop detectable: {_mde(n, alpha, power)}; "
                             f"blocking rate {_blocking(n, self.thresholds)}")
                sizes.append(n)
                continue
            n, what, work = self._task(task, ("merged", "parent", "base"), self.suite.get("num_fewshot"))
            power_note = (f"; smallest drop detectable: {_mde(n, alpha, power)}; blocking rate "
                          f"{_blocking(n, self.thresholds)}") if n else ""
            lines.append(f"  {task}: {what}{power_note}{work}")
            sizes.append(n)
        if sizes and all(n > 0 for n in sizes):
            kept = math.prod(1 - _blocking_rate(n, self.thresholds) for n in sizes)
            lines.append(f"  the whole suite: a merge exactly as good as its owners is blocked by one of these "
                         f"{len(sizes)} retention comparisons about {1 - kept:.2f} of the time (each at the rate "
                         "above, taken as independent; the regression comparisons add to it)")
        return lines

    def probing_lines(self) -> list[str]:
        from mergeqa.probing.engine import ProbingEngine

        engine = ProbingEngine.from_thresholds(self.thresholds, cache_dir=self.settings.cache_dir, device="cpu",
                                               dtype=self.settings.dtype)
        for m in self.models:
            m.cached_probes = engine.cached(m.ref) if m.ref is not None else []
        lines = ["", f"probing ({len(engine.datasets)} sets, every model, best and last layer):"]
        for d in engine.datasets.values():
            if self.tokenizer is not None:
                per_model = sum(len(self.tokenizer(i.text).input_ids) for i in d.items)
                self.tokens["probing"] += per_model * sum(d.name not in m.cached_probes for m in self.models)
            n_test = len(d.indices("test"))
            lines.append(f"  {d.name}: {len(d.items)} sentences, test n={n_test}; smallest drop detectable: "
                         f"{_mde(n_test, self.alpha, self.power)}")
        from mergeqa.stats.betting import items_to_show

        tolerance = self.thresholds.get("probing", "tolerance")
        # the family's placeholder (not built yet) stands for its two parents
        parents = sum(2 if m.ref is None else 1 for m in self.models if m.role == "parent") or 1

        lines.append(f"  a merge is shown within {tolerance:g} of its parents by the betting test (valid for a loss on "
                     f"a few items): even a copy of a parent needs {items_to_show(tolerance, self.alpha / parents, low=-1.0)}"
                     f" test items (alpha / {parents} against each parent)")
        return lines

    def sanity_lines(self) -> list[str]:
        from mergeqa.inspect.sanity import parse_prompts

        prompts = parse_prompts(self.thresholds.get("sanity", "prompts"))
        chat = self.tokenizer is not None and bool(getattr(self.tokenizer, "chat_template", None))
        skipped = [p for p in prompts if p.chat and not chat] if self.tokenizer is not None else []
        prompts = [p for p in prompts if p not in skipped]
        new_tokens = self.thresholds.get("sanity", "new_tokens")
        if self.tokenizer is not None:
            per_merge = 2 * sum(len(self.tokenizer(p.text).input_ids) + new_tokens for p in prompts)
            self.tokens["sanity"] = per_merge * sum(m.role == "merged" for m in self.models)
        ppl_task = self.thresholds.get("sanity", "perplexity_task")
        if not ppl_task:
            ppl = "none (no [sanity] perplexity_task)"
        elif ppl_task.startswith("family") and not self.family_built:
            ppl = f"{ppl_task} (a family task: its items exist once the family's cache entry is written)"
        else:
            _, what, work = self._task(ppl_task, ("merged", "parent"))
            ppl = f"{ppl_task}, {what}{work}"
        return ["", f"sanity: {len(prompts)} prompts x 2 greedy runs x {new_tokens} new tokens per merge"
                + (f" ({len(skipped)} chat prompt(s) skipped: no chat template)" if skipped else "")
                + f"; perplexity: {ppl}"]

    def judge_lines(self) -> list[str]:
        """The A/B rule at the configured number of questions: how often a merge tied with its
        parent passes, with no ties and with half the questions tied, and how many questions a
        pass needs."""
        from mergeqa.judge.questions import default_questions_path, read_questions
        from mergeqa.stats.exact_paired import items_to_pass, pass_rate

        path = self.thresholds.file("judge", "questions", fix="name an MT-Bench question.jsonl, or leave it out "
                                    "for the embedded questions")
        n = len(read_questions(path or default_questions_path()))
        floor = self.thresholds.get("judge", "min_win_rate")
        effect0 = 2 * floor - 1  # win rate with ties as half = 0.5 + (P(win) - P(loss)) / 2
        tied = {d: float(pass_rate(n, 0.0, d, effect0, alpha=self.alpha)) for d in (1.0, 0.5)}
        needs = {d: items_to_pass(0.0, d, effect0, alpha=self.alpha, power=self.power) for d in (1.0, 0.5)}
        return ["", f"judge A/B ({n} questions, both orders, a tie half a win): pass against a parent when an exact "
                f"test at alpha {self.alpha:g} shows the win rate above {floor:g}. A merge tied with its parent (win "
                f"rate 0.5) passes about {tied[1.0]:.2f} of the time at n={n} with no ties, {tied[0.5]:.2f} with half "
                f"the questions tied; power {self.power:g} needs about {needs[1.0]} questions with no ties, "
                f"{needs[0.5]} with half tied (ties carry less variance than a win or a loss)"]

    def model_lines(self) -> list[str]:
        return ["", "models:"] + [m.line(len(self.suite["tasks"]), self.n_probes) for m in self.models]

    def work_lines(self) -> list[str]:
        if self.tokenizer is None:
            return ["", "work: unknown until the models exist (nothing to tokenize with yet)"]
        t, unbuilt = self.tokens, sum(m.ref is None for m in self.models)
        return ["", f"work left: about {_fmt(sum(t.values()))} forward tokens (evaluation {_fmt(t['evaluation'])}, "
                f"probing {_fmt(t['probing'])}, sanity {_fmt(t['sanity'])}), counted with {self.refs[0].name}'s "
                "tokenizer" + (f"; {unbuilt} model(s) to build first" if unbuilt else "")]


def _load(task: str, settings, num_fewshot):
    """({leaf: Task}, None) or ({}, why it cannot be planned)."""
    from mergeqa.core.errors import MergeQAUsageError
    from mergeqa.evaluate.availability import task_datasets
    from mergeqa.evaluate.engine import load_tasks

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
    from mergeqa.evaluate.engine import evaluate

    return set(evaluate(ref, leaves, settings, cached_only=True).tasks)
