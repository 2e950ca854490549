"""The family's table: base, parents and every default merge x the family's tasks and probing.

It is computed once per family and recorded in the family's cache entry (`table.json`), with the
build's wall and CPU time and the machine, so figures from two machines can be compared line by
line. It looks for the two results of the paper the gate follows, in miniature: on the skill
tasks merges sit between their parents; on probing, some merges score above both (claimed only
when a paired test over a phenomenon's test items shows it). The grammar phenomena are one column
(their mean: every model is at ceiling there), each skill phenomenon its own. Not a verdict: the gate decides pass or
fail, with statistics; this table is a description.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

TABLE_FILE = "table.json"
#: Bumped when what the table records changes: a recorded table of another version is recomputed.
#: 2: the "above both parents on probing" test per merge (paired, over test items).
#: 3: the skill phenomena as columns; the "above both" test per merge and phenomenon, not pooled.
TABLE_VERSION = 3
#: Columns of the table: the gated suite's tasks, then the minimal pairs (described, not gated).
TABLE_TASKS = ("family_arithmetic", "family_lists", "family_grammar", "family_grammar_pairs")
SKILL_TASKS = ("family_arithmetic", "family_lists")
PROBING = "probing"  # column: mean over the grammar phenomena of the best layer's probe accuracy


def recorded_table(family) -> dict | None:
    """The table recorded in the family's cache entry, or None if none was computed yet."""
    path = Path(family.root) / TABLE_FILE
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return table if isinstance(table, dict) and table.get("version") == TABLE_VERSION else None


def family_table(cache_dir: Path | str | None = None, *, family=None, log=None) -> dict:
    """The table of `family` (default: the shipped one), computed (merges built, every model
    evaluated and probed) and recorded in its cache entry if absent. Costs a few minutes of CPU the
    first time."""
    from filelock import FileLock

    from mergeqa.core.cache import default_cache_dir
    from mergeqa.models.session import GateSession

    cache_dir = Path(cache_dir or default_cache_dir())
    gate = GateSession.from_options(models=[], parents=None, base=None, merge_configs=[],
                                    cache_dir=cache_dir, device="cpu", dtype="float32", seed=0)
    if family is not None:
        gate.use_family(family)
    family = gate.family()
    with FileLock(str(family.root) + ".table.lock"):
        table = recorded_table(family)
        if table is None:
            table = _compute(gate, family, cache_dir, log or (lambda msg: None))
            tmp = family.root / f".{TABLE_FILE}.{os.getpid()}"
            tmp.write_text(json.dumps(table, indent=2) + "\n")
            os.replace(tmp, family.root / TABLE_FILE)  # one atomic rename: never half a table
    return table


def _compute(gate, family, cache_dir: Path, log) -> dict:
    from mergeqa.decision.thresholds import load_thresholds
    from mergeqa.evaluate.engine import EvalSettings, evaluate
    from mergeqa.probing.datasets import PHENOMENA
    from mergeqa.probing.divergence import above_parents_per_phenomenon, internal_scores
    from mergeqa.probing.engine import ProbingEngine

    refs = [(gate.base(), "base")] + [(p, "parent") for p in gate.parents()]
    for name in gate.merged_names:
        log(f"merging {name}")
        refs.append((gate.merged(name), "merge"))
    settings = EvalSettings(cache_dir=cache_dir, device="cpu", task_paths=(str(family.tasks_dir),))
    probing = ProbingEngine.from_thresholds(load_thresholds(None), cache_dir=cache_dir, device="cpu",
                                            dtype="float32")
    skills = [n for n in probing.datasets if n in PHENOMENA and PHENOMENA[n].category == "skill"]
    rows, items = [], {}
    for ref, role in refs:
        log(f"evaluating {ref.name}")
        result = evaluate(ref, list(TABLE_TASKS), settings)
        scores = {t: round(result.score(t), 4) for t in TABLE_TASKS}
        probes = probing.results(ref)
        grammar = {n: r for n, r in probes.items() if n not in skills}
        scores[PROBING] = round(internal_scores({ref.name: grammar})[ref.name], 4)
        for name in skills:
            scores[name] = round(internal_scores({ref.name: {name: probes[name]}})[ref.name], 4)
        for name, r in probes.items():
            items.setdefault(name, {})[ref.name] = r.item_scores(r.best_layer)
        n_items = {t: len(result.tasks[t].items) for t in TABLE_TASKS}
        rows.append({"model": ref.name, "role": role, "scores": scores, "items": n_items})
    parents = [r["model"] for r in rows if r["role"] == "parent"]
    merges = [r["model"] for r in rows if r["role"] == "merge"]
    above = [t.to_dict() for t in above_parents_per_phenomenon(merges, parents, items)]
    return {"version": TABLE_VERSION, "family": family.root.name, "tasks": [*TABLE_TASKS, PROBING, *skills],
            "rows": rows, "probing_above": above, "build": family.build_info, "table_machine": machine()}


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def statistics() -> tuple[float, str]:
    """How "above both parents on probing" is decided: the default [statistics] alpha and
    correction (the table, like the family, uses the default thresholds)."""
    from mergeqa.decision.thresholds import load_thresholds

    defaults = load_thresholds(None)
    return defaults.get("statistics", "alpha"), defaults.get("statistics", "correction")


def above_tests(table: dict, alpha: float, correction: str) -> tuple[list, dict[str, float]]:
    """The recorded "above both parents on probing" tests (one per merge and phenomenon), and per
    merge its smallest p-value adjusted across all of them."""
    from mergeqa.probing.divergence import AboveParents, shown_above

    tests = [AboveParents.from_dict(d) for d in table["probing_above"]]
    return tests, shown_above(tests, alpha=alpha, correction=correction)


def relations(table: dict) -> dict[str, dict[str, bool]]:
    """merge -> {task: lies between its parents (inclusive), probing: *shown* above both parents on
    some phenomenon (one-sided paired sign-flip tests over its probe test items, adjusted across
    every merge x phenomenon)}."""
    parents = [r["scores"] for r in table["rows"] if r["role"] == "parent"]
    alpha, correction = statistics()
    _, adjusted = above_tests(table, alpha, correction)
    out = {}
    for row in table["rows"]:
        if row["role"] != "merge":
            continue
        rel = {}
        for task in SKILL_TASKS:
            lo, hi = min(p[task] for p in parents), max(p[task] for p in parents)
            rel[task] = lo <= row["scores"][task] <= hi
        rel[PROBING] = adjusted[row["model"]] <= alpha
        out[row["model"]] = rel
    return out


def render(table: dict) -> str:
    """The table as markdown, then the merges that lie between their parents on both skill tasks
    and those shown above both parents on probing, named."""
    from mergeqa.probing.divergence import above_line

    tasks = table["tasks"]
    lines = ["| model | role | " + " | ".join(tasks) + " |", "|---|---|" + "---:|" * len(tasks)]
    for row in table["rows"]:
        lines.append(f"| {row['model']} | {row['role']} | "
                     + " | ".join(f"{row['scores'][t]:.3f}" for t in tasks) + " |")
    items = table["rows"][0]["items"]
    lines.append("")
    lines.append("items per task: " + ", ".join(f"{t} {n}" for t, n in items.items())
                 + f"; {PROBING}: mean best-layer probe accuracy over the grammar phenomena"
                 + "".join(f"; {t}: its best-layer probe accuracy" for t in tasks[tasks.index(PROBING) + 1:]))
    rel = relations(table)
    between = [m for m, r in rel.items() if all(r[t] for t in SKILL_TASKS)]
    alpha, correction = statistics()
    tests, _ = above_tests(table, alpha, correction)
    lines.append(f"between the parents on both skill tasks: {', '.join(between) or 'none'} "
                 f"({len(between)} of {len(rel)} merges)")
    lines.append(f"above both parents on probing: {above_line(tests, alpha, correction)}")
    build = table.get("build") or {}
    if build:
        lines.append(f"family built in {build.get('wall_s')} s wall, {build.get('cpu_s')} s CPU "
                     f"({build.get('torch_threads')} torch threads, {build.get('cpus')} CPUs, "
                     f"{build.get('platform')})")
    return "\n".join(lines)


def render_comparison(shipped: dict, rebuilt: dict) -> str:
    """Two tables of the family side by side, as markdown: each cell "shipped / rebuilt", then the
    largest difference and each table's merges between their parents (`mergeqa family --rebuild`)."""
    tasks = shipped["tasks"]
    scores = {name: {r["model"]: r for r in table["rows"]} for name, table in (("shipped", shipped), ("rebuilt", rebuilt))}
    lines = [f"shipped ({shipped['family']}) / rebuilt from the recipe ({rebuilt['family']})", "",
             "| model | role | " + " | ".join(tasks) + " |", "|---|---|" + "---:|" * len(tasks)]
    gaps = []
    for model, row in scores["shipped"].items():
        other = scores["rebuilt"].get(model)
        cells = []
        for t in tasks:
            a = row["scores"][t]
            b = other["scores"][t] if other else None
            cells.append(f"{a:.3f} / {b:.3f}" if b is not None else f"{a:.3f} / -")
            if b is not None:
                gaps.append((abs(b - a), model, t, b - a))
        lines.append(f"| {model} | {row['role']} | " + " | ".join(cells) + " |")
    lines.append("")
    largest = max(gaps, key=lambda gap: gap[0], default=(0, "", "", 0))  # the first of equal gaps
    if largest[0] > 0:
        _, model, task, delta = largest
        lines.append(f"largest difference: {100 * delta:+.1f} points ({model}, {task}); "
                     f"{sum(g[0] > 0 for g in gaps)} of {len(gaps)} figures differ")
    else:
        lines.append(f"every figure the same ({len(gaps)} figures)")
    for name, table in (("shipped", shipped), ("rebuilt", rebuilt)):
        rel = relations(table)
        between = [m for m, r in rel.items() if all(r[t] for t in SKILL_TASKS)]
        lines.append(f"{name}: between the parents on both skill tasks: {', '.join(between) or 'none'} "
                     f"({len(between)} of {len(rel)} merges)")
    return "\n".join(lines)
