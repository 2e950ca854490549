"""The evaluation engine: lm-eval tasks on a model, per-item records, a content-addressed cache.

    result = evaluate(ref, ["family"], settings)       # a ModelRef; groups expand to leaf tasks
    result.tasks["family_arithmetic"].items[0].metrics  # {"acc": 1.0}

lm-eval defines the tasks and scores them; this module decides what needs scoring. A result is
keyed by the model's content hash x the task's full config (few-shot, template, lm-eval version)
x the scoring settings, so a parent is evaluated once across runs and merges, and a changed model
never gets another model's results. An entry records which documents it holds: `evaluate(...,
docs={task: ids})` scores only the listed documents the entry lacks (lm-eval's `samples=`) and
the entry grows; a full evaluation of a partial entry scores the rest. Not a scorer: see
mergeqa.evaluate.scorer for the fast backend.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mergeqa.core.cache import digest, log_event
from mergeqa.core.errors import MergeQAUsageError
from mergeqa.core.progress import duration
from mergeqa.models.refs import ModelRef, resolve_device

RESULTS_VERSION = 2  # bump when the record format changes (2: filters kept apart, weights)


@dataclass(frozen=True)
class EvalSettings:
    """How models are scored; every field is part of the result cache key."""

    cache_dir: Path
    device: str = "auto"
    dtype: str = "float32"
    backend: str = "mergeqa-hf"  # or "hf": lm-eval's own HFLM
    batch_size: int = 32
    limit: int | None = None
    task_paths: tuple[str, ...] = ()
    device_map: str | None = None  # "auto": shard over the visible GPUs (same results: not in the key)

    def key(self) -> dict:
        return {"dtype": self.dtype, "backend": self.backend, "limit": self.limit,
                "device": resolve_device(self.device).split(":")[0]}


@dataclass
class ItemRecord:
    """One document's scores under one lm-eval filter (a gsm8k doc has one per filter)."""

    doc_id: int
    doc_hash: str
    metrics: dict[str, float]  # bare metric names ("acc", "exact_match"); this filter's values
    choice: int | str | None  # the model's pick (multiple choice) or its filtered response
    target: object = None
    filter: str = "none"
    weights: dict[str, float] = field(default_factory=dict)  # perplexity-type metrics: the item's
    # word/byte count, lm-eval's (loglikelihood, weight) pair; `metrics` keeps the loglikelihood


# lm-eval aggregations whose per-item values are (loglikelihood, weight) pairs
WEIGHTED = ("word_perplexity", "byte_perplexity", "bits_per_byte")
# Per-item metrics whose values lie in [0, 1] by definition (lm-eval's names): a paired test on
# them can rest on that range (the betting test; significance.compare_paired). Others (BLEU-like
# corpus metrics, log-likelihoods, perplexities) have no range a test could rest on.
UNIT_RANGE = frozenset({"acc", "acc_norm", "exact_match", "em", "f1", "mc1", "mc2", "contains", "accuracy",
                        "pass@1", "pass_at_1", "prompt_level_strict_acc", "inst_level_strict_acc",
                        "prompt_level_loose_acc", "inst_level_loose_acc", "rouge1_acc", "rouge2_acc", "rougeL_acc",
                        "bleu_acc"})
# The metric each Open LLM Leaderboard task is read on (its v1 table); others: the task's first.
LEADERBOARD_METRICS = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "truthfulqa_mc2": "acc",
                       "winogrande": "acc", "gsm8k": "exact_match,strict-match", "mmlu": "acc"}


def metric_key(metric: str, filter_name: str = "none") -> str:
    """lm-eval's "metric,filter", written "metric" for the default filter "none"."""
    return metric if filter_name == "none" else f"{metric},{filter_name}"


def split_key(key: str) -> tuple[str, str]:
    metric, _, filter_name = key.partition(",")
    return metric, filter_name or "none"


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, float]  # lm-eval's aggregates by metric_key: "acc", "exact_match,strict-match"
    items: list[ItemRecord]
    config_hash: str
    cached: bool = False
    higher_is_better: dict[str, bool] = field(default_factory=dict)  # bare metric -> direction
    doc_ids: list[int] | None = None  # the documents held, sorted; None: every one (older entries)
    n_docs: int | None = None  # documents the task has (under --eval-limit)

    @property
    def complete(self) -> bool:
        """True when every document of the task was scored (`metrics` aggregate all of them)."""
        return self.doc_ids is None or len(self.doc_ids) == self.n_docs

    def holds(self, wanted: set[int]) -> bool:
        return self.doc_ids is None or wanted <= set(self.doc_ids)

    @property
    def main_metric(self) -> str:
        """The metric key gated by default: the Open LLM Leaderboard's for its tasks (acc_norm for
        arc_challenge and hellaswag, strict-match exact_match for gsm8k, ...), else the task's
        first metric in lm-eval's order. `[retention.metrics]` overrides it per task."""
        family = self.task.split("_")[0] if self.task.startswith(("mmlu_", "hendrycks")) else self.task
        wanted = LEADERBOARD_METRICS.get(self.task, LEADERBOARD_METRICS.get(family))
        if wanted in self.metrics:
            return wanted
        return next(iter(self.metrics))

    def higher_is_better_for(self, key: str) -> bool:
        metric = split_key(key)[0]
        if metric in self.higher_is_better:
            return bool(self.higher_is_better[metric])
        return not (metric.endswith(("perplexity", "bits_per_byte")) or metric in ("ter", "loss"))

    def records(self, key: str) -> list[ItemRecord]:
        """This metric's records (one filter), in doc_id order."""
        metric, filter_name = split_key(key)
        if key not in self.metrics:
            from mergeqa.core.errors import did_you_mean

            raise MergeQAUsageError(f"task {self.task!r} has no metric {key!r}.{did_you_mean(key, self.metrics)}"
                                    " Set it in thresholds.toml [retention.metrics] as \"metric\" or "
                                    "\"metric,filter\".")
        return sorted((it for it in self.items if it.filter == filter_name and metric in it.metrics),
                      key=lambda i: i.doc_id)

    def gated_values(self, key: str) -> dict[tuple[int, str], float]:
        """{(doc_id, doc_hash): value} in gating units, higher is better: the metric itself, its
        negative for lower-is-better metrics, and for perplexity-type metrics the item's
        loglikelihood x n / sum of weights, whose mean is -log(perplexity) (so a merge and a
        parent compare in log-perplexity, the unit of the threshold). Duplicates are an error."""
        records = self.records(key)
        metric = split_key(key)[0]
        out: dict[tuple[int, str], float] = {}
        scale = 1.0
        if metric in WEIGHTED:
            total = sum(r.weights.get(metric, 0.0) for r in records)
            scale = len(records) / total if total else float("nan")
        sign = 1.0 if metric in WEIGHTED or self.higher_is_better_for(key) else -1.0
        for r in records:
            doc = (r.doc_id, r.doc_hash)
            if doc in out:
                raise MergeQAUsageError(f"task {self.task!r}: document {r.doc_id} appears twice under filter "
                                        f"{r.filter!r} in one model's results; clear its cache entry and re-run")
            out[doc] = sign * scale * r.metrics[metric]
        return out

    def value_range(self, key: str) -> tuple[float, float] | None:
        """The range of `gated_values(key)` a paired test can rest on: [0, 1] (or [-1, 0] when
        lower is better) for a metric of UNIT_RANGE whose logged values all lie in it; None else."""
        metric = split_key(key)[0]
        if metric not in UNIT_RANGE or metric in WEIGHTED:
            return None
        if not all(0.0 <= r.metrics[metric] <= 1.0 for r in self.records(key)):
            return None
        return (0.0, 1.0) if self.higher_is_better_for(key) else (-1.0, 0.0)

    def scores(self, metric: str | None = None) -> list[float]:
        """Per-item values of `metric` (a metric key) in doc_id order, as lm-eval logged them."""
        key = metric or self.main_metric
        return [it.metrics[split_key(key)[0]] for it in self.records(key)]


@dataclass
class EvalResult:
    model: ModelRef
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> its leaf tasks

    def score(self, task: str, metric: str | None = None) -> float:
        """The gated metric of a task (`metric` or its main metric), or the unweighted mean
        over a group's leaves."""
        if task in self.tasks:
            t = self.tasks[task]
            return t.metrics[metric or t.main_metric]
        leaves = self.groups[task]
        return sum(self.score(t, metric) for t in leaves) / len(leaves)


def paired_values(task: str, merged: EvalResult, reference: EvalResult, metric: str | None = None,
                  names: tuple[str, str] = ("merged", "reference")):
    """Per-item gated values of two models on the same documents, paired by document identity
    (leaf task, doc_id and doc_hash), as two float arrays and the (leaf, doc_id) of each pair. Documents missing on either side,
    extra, or with another content are a usage error naming the task and the first one."""
    import numpy as np

    leaves = merged.groups.get(task, [task])
    a, b, docs = [], [], []
    for leaf in leaves:
        try:
            mine, theirs = merged.tasks[leaf], reference.tasks[leaf]
        except KeyError:
            raise MergeQAUsageError(f"task {leaf!r}: no results for {names[0] if leaf not in merged.tasks else names[1]}")
        key = metric or mine.main_metric
        va, vb = mine.gated_values(key), theirs.gated_values(key)
        if va.keys() != vb.keys():
            only_a = sorted(set(va) - set(vb))
            only_b = sorted(set(vb) - set(va))
            first = (only_a or only_b)[0]
            by_id = {d: h for d, h in vb} if only_a else {d: h for d, h in va}
            other = by_id.get(first[0])
            where = names[0] if only_a else names[1]
            detail = (f"document {first[0]} has content hash {first[1][:12]} in {where}'s results but "
                      f"{other[:12]} in the other's" if other else
                      f"document {first[0]} is in {where}'s results only")
            raise MergeQAUsageError(
                f"task {leaf!r}: {names[0]} and {names[1]} were not scored on the same documents "
                f"({len(va)} vs {len(vb)} items; {detail}). The task's data changed between the two "
                "evaluations, or they ran with different --eval-limit; delete the stale entries under "
                "the cache's results/ directory and run again")
        for doc in sorted(va):
            a.append(va[doc])
            b.append(vb[doc])
            docs.append((leaf, doc[0]))
    return np.asarray(a, dtype=float), np.asarray(b, dtype=float), docs


# -- tasks -------------------------------------------------------------------------------------
_MANAGERS: dict[tuple, object] = {}


def task_manager(paths: tuple[str, ...], include_defaults: bool):
    """One lm-eval TaskManager per set of include paths (indexing costs seconds)."""
    key = (paths, include_defaults)
    if key not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        _MANAGERS[key] = TaskManager(include_path=list(paths) or None, include_defaults=include_defaults)
    return _MANAGERS[key]


def load_tasks(names: list[str], settings: EvalSettings, num_fewshot: dict[str, int] | None = None):
    """{leaf task name: Task} and {group: [leaves]}; unknown names and unloadable datasets are
    usage errors in one line naming the task and what to set."""
    from lm_eval.api.task import Task

    bundled = all(_is_bundled(n, settings) for n in names)
    tm = task_manager(settings.task_paths, include_defaults=not bundled)
    unknown = [n for n in names if n not in tm.all_tasks]
    if unknown:
        from mergeqa.core.errors import did_you_mean

        raise MergeQAUsageError(f"lm-eval task {unknown[0]!r} is not known.{did_you_mean(unknown[0], tm.all_tasks)}"
                                " (add its YAML directory with --tasks-path)")
    leaves: dict[str, Task] = {}
    groups: dict[str, list[str]] = {}
    for name in names:
        try:
            found = list(tm.load([name])["tasks"].values())
        except Exception as exc:  # datasets raises many types when offline
            raise MergeQAUsageError(
                f"lm-eval task {name!r}: its dataset could not be loaded ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160]}). This machine is offline: put the dataset in "
                "HF_DATASETS_CACHE, or point the task's dataset_path/data_files at a local copy "
                "(--tasks-path DIR with your YAML).") from None
        for task in found:
            fewshot = (num_fewshot or {}).get(task.config.task, (num_fewshot or {}).get(name))
            if fewshot is not None:
                task.set_config(key="num_fewshot", value=fewshot)
            leaves[task.config.task] = task
        if len(found) != 1 or found[0].config.task != name:
            groups[name] = [t.config.task for t in found]
    return leaves, groups


def _is_bundled(name: str, settings: EvalSettings) -> bool:
    return any(Path(p, f"{name}.yaml").is_file() for p in settings.task_paths)


def task_config_hash(task) -> str:
    from importlib.metadata import version

    return digest(task.dump_config(), version("lm-eval"), RESULTS_VERSION)


# -- the cache ---------------------------------------------------------------------------------
def _entry_path(settings: EvalSettings, model_hash: str, task: str, config_hash: str) -> Path:
    key = digest(model_hash, config_hash, settings.key())
    return Path(settings.cache_dir) / "results" / model_hash[:16] / f"{task}-{key[:16]}.json"


def _read_entry(path: Path) -> TaskResult | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or unreadable: evaluate again and overwrite
    try:
        raw["items"] = [ItemRecord(**it) for it in raw["items"]]
        return TaskResult(**raw, cached=True)
    except TypeError:
        return None  # an entry in an older record format: evaluate again


def _write_entry(path: Path, result: TaskResult) -> None:
    """Atomic: a temporary file in the same directory, renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(result)
    data.pop("cached")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, default=_jsonable)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# -- evaluation --------------------------------------------------------------------------------
def evaluate(ref: ModelRef, tasks: list[str], settings: EvalSettings, *,
             num_fewshot: dict[str, int] | None = None, cached_only: bool = False,
             progress: Callable[[str], None] | None = None,
             docs: dict[str, Sequence[int]] | None = None) -> EvalResult:
    """Results of `ref` on `tasks`, evaluating only what the cache does not hold.

    `docs` maps a leaf task to the document indices wanted (the sequential gate's prefix of its
    item order): only those the cache entry lacks are scored, the entry is extended, and the
    result holds exactly those documents, its aggregates over them. Tasks not in `docs` are
    evaluated in full (a partial entry is completed, not re-scored). A few-shot task is always
    scored in full: lm-eval draws few-shot examples from one random stream over the documents
    scored, so a document scored in a subset would get other examples than in a full run.

    With cached_only=True nothing is evaluated (tasks the cache does not fully hold are left
    out). To run a full evaluation as a job of a distributed executor: mergeqa.evaluate.executor.evaluate_on.
    """
    leaves, groups = load_tasks(tasks, settings, num_fewshot)
    model_hash = ref.content_hash
    result = EvalResult(ref, groups=groups)
    missing, wanted = {}, {}
    for name, task in leaves.items():
        config_hash = task_config_hash(task)
        path = _entry_path(settings, model_hash, name, config_hash)
        wanted[name] = _wanted(task, settings, (docs or {}).get(name))
        cached = _read_entry(path)
        if cached is not None and cached.holds(wanted[name]):
            result.tasks[name] = _restrict(cached, task, wanted[name])
        else:
            missing[name] = (task, config_hash, path)
    if missing and not cached_only:
        from filelock import FileLock

        lock = Path(settings.cache_dir) / "results" / f"{model_hash[:16]}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):  # two workers on one model: the second reads the first's results
            todo = {}
            for name, (task, config_hash, path) in missing.items():
                cached = _read_entry(path)
                if cached is not None and cached.holds(wanted[name]):
                    result.tasks[name] = _restrict(cached, task, wanted[name])
                else:
                    todo[name] = (task, config_hash, path, cached, wanted[name])
            if todo:
                _run(ref, todo, settings, result, progress)
    return result


def task_size(task, settings: EvalSettings) -> int:
    """How many documents lm-eval scores of this task under the settings' limit."""
    n = len(task.eval_docs)
    return min(n, int(settings.limit)) if settings.limit else n


def extendable(task) -> bool:
    """Whether documents of this task can be scored in parts (zero-shot: see `evaluate`)."""
    return not task.config.num_fewshot


def _wanted(task, settings: EvalSettings, ids: Sequence[int] | None) -> set[int]:
    n = task_size(task, settings)
    if ids is None or not extendable(task):
        return set(range(n))
    ids = {int(i) for i in ids}
    if any(not 0 <= i < n for i in ids):
        raise ValueError(f"{task.config.task}: document indices must be in [0, {n})")
    return ids


class _DocIndices(list):
    """A sorted list of document indices with set membership: lm-eval tests `i in samples` for
    every document of the task, which is quadratic on a plain list."""

    def __init__(self, ids):
        super().__init__(sorted(ids))
        self._members = frozenset(self)

    def __contains__(self, i) -> bool:
        return i in self._members


def _run(ref: ModelRef, todo: dict, settings: EvalSettings, result: EvalResult, progress) -> None:
    """One lm-eval run over every document the cache lacks; one cache entry per task, extended
    where it held some documents already (lm-eval's `samples=`: only the missing ones)."""
    import lm_eval

    lm = make_lm(ref, settings)
    plans = {}  # name -> (task, config_hash, path, cached entry to extend, wanted, documents to score)
    for name, (task, config_hash, path, cached, wanted) in todo.items():
        held = set(cached.doc_ids) if cached is not None and cached.doc_ids and extendable(task) else set()
        plans[name] = (task, config_hash, path, cached if held else None, wanted, sorted(wanted - held))
    whole = all(cached is None and len(score) == task_size(task, settings)
                for task, _, _, cached, _, score in plans.values())
    if progress:
        sizes = ", ".join(f"{name} ({len(p[5])} items)" for name, p in plans.items())
        progress(f"evaluating {ref.name} on {sizes}...")
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[p[0] for p in plans.values()], log_samples=True,
        limit=settings.limit if whole else None,
        samples=None if whole else {name: _DocIndices(p[5]) for name, p in plans.items()},
        bootstrap_iters=0, verbosity="ERROR", confirm_run_unsafe_code=True,
        task_manager=task_manager(settings.task_paths, include_defaults=False))
    seconds = round(time.perf_counter() - started, 2)
    if progress:
        progress(f"evaluated {ref.name} in {duration(seconds)}")
    for name, (task, config_hash, path, cached, wanted, scored) in plans.items():
        new = _to_task_result(name, out, config_hash)
        n_docs = task_size(task, settings)
        if cached is None and whole:
            entry = new  # one run over the whole task: lm-eval's own aggregates, as always
        else:
            items = sorted((cached.items if cached else []) + new.items,
                           key=lambda it: (it.filter, it.doc_id))
            entry = TaskResult(name, _aggregates(task, items, order=new.metrics), items, config_hash,
                               higher_is_better=new.higher_is_better)
        entry.doc_ids = sorted({it.doc_id for it in entry.items})
        entry.n_docs = n_docs
        _write_entry(path, entry)
        result.tasks[name] = _restrict(entry, task, wanted)
        log_event(Path(settings.cache_dir), "evaluated", model=ref.name, role=ref.role,
                  model_hash=ref.content_hash[:16], task=name, n=len(new.items), docs=len(scored),
                  held=len(entry.doc_ids), of=n_docs, seconds_all_tasks=seconds)


def _aggregates(task, items: list[ItemRecord], order=()) -> dict[str, float]:
    """lm-eval's aggregation of each metric over these records (the task's own functions; a
    perplexity-type metric gets its (loglikelihood, weight) pairs back), keys in `order` first."""
    aggregation = task.aggregation()
    values: dict[str, tuple[str, list]] = {key: None for key in order}
    for it in items:
        for metric, v in it.metrics.items():
            key = metric_key(metric, it.filter)
            if values.get(key) is None:
                values[key] = (metric, [])
            values[key][1].append((v, it.weights[metric]) if metric in it.weights else v)
    return {key: float(aggregation[metric](vals)) for key, (metric, vals) in
            ((k, v) for k, v in values.items() if v is not None)}


def _restrict(entry: TaskResult, task, wanted: set[int]) -> TaskResult:
    """The entry as a result on the `wanted` documents only (aggregates over them)."""
    held = set(entry.doc_ids) if entry.doc_ids is not None else {it.doc_id for it in entry.items}
    if held == wanted:
        return entry
    items = [it for it in entry.items if it.doc_id in wanted]
    return TaskResult(entry.task, _aggregates(task, items, order=entry.metrics), items,
                      entry.config_hash, entry.cached, entry.higher_is_better,
                      sorted(wanted), entry.n_docs)


def make_lm(ref: ModelRef, settings: EvalSettings):
    """The lm-eval LM for a model loaded once per process (ModelRef caches it): mergeqa's
    prefix-sharing scorer by default, lm-eval's own HFLM with backend="hf"."""
    from mergeqa.evaluate.scorer import make_lm as make_scorer

    if settings.backend == "vllm":
        from mergeqa.models.devices import vllm_lm

        return vllm_lm(ref, settings)
    device = resolve_device(settings.device)
    if settings.device_map:  # placed by accelerate over the visible GPUs: never moved again
        return make_scorer(ref.model(device, settings.dtype, device_map=settings.device_map),
                           ref.tokenizer(), backend=settings.backend, batch_size=settings.batch_size)
    return make_scorer(ref.model(device, settings.dtype), ref.tokenizer(), backend=settings.backend,
                       batch_size=settings.batch_size, device=device)


def _to_task_result(name: str, out: dict, config_hash: str) -> TaskResult:
    """lm-eval's output for one task: aggregates keyed "metric[,filter]", one record per document
    per filter (lm-eval logs each document once for every filter of the task)."""
    metrics = {}
    for k, v in out["results"][name].items():
        if "," in k and "_stderr" not in k and isinstance(v, (int, float)):
            metric, filter_name = k.split(",", 1)
            metrics[metric_key(metric, filter_name)] = float(v)
    items = []
    for sample in out["samples"][name]:
        resps = sample["filtered_resps"]
        if resps and isinstance(resps[0], (tuple, list)):  # loglikelihood: (logprob, is_greedy)
            lls = [r[0] for r in resps]
            choice = int(max(range(len(lls)), key=lls.__getitem__))
        else:
            choice = resps[0] if resps else None
        values = {m: sample[m] for m in sample["metrics"] if m in sample}
        items.append(ItemRecord(
            doc_id=int(sample["doc_id"]), doc_hash=sample["doc_hash"],
            metrics={m: float(_scalar(v)) for m, v in values.items()},
            choice=choice, target=_jsonable(sample["target"]) if not isinstance(sample["target"], (int, str)) else sample["target"],
            filter=sample.get("filter", "none"),
            weights={m: float(v[1]) for m, v in values.items() if isinstance(v, (list, tuple)) and len(v) == 2}))
    direction = {m: bool(v) for m, v in out.get("higher_is_better", {}).get(name, {}).items()}
    return TaskResult(name, metrics, items, config_hash, higher_is_better=direction)


def _scalar(value):
    if isinstance(value, (list, tuple)):  # perplexity metrics keep (loglikelihood, weight) pairs
        return value[0]
    return value
