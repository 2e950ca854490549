"""The evaluation engine: lm-eval tasks on a model, per-item records, a content-addressed cache.

    result = evaluate(ref, ["family"], settings)       # a ModelRef; groups expand to leaf tasks
    result.tasks["family_arithmetic"].items[0].metrics  # {"acc": 1.0}

lm-eval defines the tasks and scores them; this module decides what needs scoring. A result is
keyed by the model's content hash x the task's full config (few-shot, template, lm-eval version)
x the scoring settings, so a parent is evaluated once across runs and merges, and a changed model
never gets another model's results. Not a scorer: see mergeqa.scorer for the fast backend.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cache import digest, log_event
from .errors import MergeQAUsageError
from .models import ModelRef, resolve_device

RESULTS_VERSION = 1  # bump when the record format changes


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
    doc_id: int
    doc_hash: str
    metrics: dict[str, float]
    choice: int | str | None  # the model's pick (multiple choice) or its filtered response
    target: object = None


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, float]  # lm-eval's aggregates, "acc" not "acc,none"
    items: list[ItemRecord]
    config_hash: str
    cached: bool = False

    @property
    def main_metric(self) -> str:
        for m in ("acc", "exact_match", "pass@1", "word_perplexity"):
            if m in self.metrics:
                return m
        return next(iter(self.metrics))

    def scores(self, metric: str | None = None) -> list[float]:
        """Per-item values of `metric` in doc_id order (the paired statistics' input)."""
        metric = metric or self.main_metric
        return [it.metrics[metric] for it in sorted(self.items, key=lambda i: i.doc_id)]


@dataclass
class EvalResult:
    model: ModelRef
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> its leaf tasks

    def score(self, task: str) -> float:
        """The main metric of a task, or the unweighted mean over a group's leaves."""
        if task in self.tasks:
            t = self.tasks[task]
            return t.metrics[t.main_metric]
        leaves = self.groups[task]
        return sum(self.score(t) for t in leaves) / len(leaves)


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
        from .errors import did_you_mean

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
    raw["items"] = [ItemRecord(**it) for it in raw["items"]]
    return TaskResult(**raw, cached=True)


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
             progress: Callable[[str], None] | None = None, executor=None) -> EvalResult:
    """Results of `ref` on `tasks`, evaluating only what the cache does not hold.

    With cached_only=True nothing is evaluated (tasks not in the cache are left out). A
    distributed `executor` (mergeqa.executor) runs the evaluation as one of its jobs.
    """
    if executor is not None and executor.distributed and not cached_only:
        from .executor import evaluate_many

        return evaluate_many([ref], tasks, settings, executor=executor, num_fewshot=num_fewshot,
                             progress=progress)[0]
    leaves, groups = load_tasks(tasks, settings, num_fewshot)
    model_hash = ref.content_hash
    result = EvalResult(ref, groups=groups)
    missing = {}
    for name, task in leaves.items():
        config_hash = task_config_hash(task)
        path = _entry_path(settings, model_hash, name, config_hash)
        cached = _read_entry(path)
        if cached is not None:
            result.tasks[name] = cached
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
                if cached is not None:
                    result.tasks[name] = cached
                else:
                    todo[name] = (task, config_hash, path)
            if todo:
                _run(ref, todo, settings, result, progress)
    return result


def _run(ref: ModelRef, todo: dict, settings: EvalSettings, result: EvalResult, progress) -> None:
    """One lm-eval run over every task the cache lacks; one cache entry per task."""
    import lm_eval

    lm = make_lm(ref, settings)
    if progress:
        sizes = ", ".join(f"{name} ({len(task.eval_docs)} items)" for name, (task, _, _) in todo.items())
        progress(f"evaluating {ref.name} on {sizes}")
    started = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[task for task, _, _ in todo.values()], log_samples=True, limit=settings.limit,
        bootstrap_iters=0, verbosity="ERROR", confirm_run_unsafe_code=True,
        task_manager=task_manager(settings.task_paths, include_defaults=False))
    seconds = round(time.perf_counter() - started, 2)
    for name, (_, config_hash, path) in todo.items():
        task_result = _to_task_result(name, out, config_hash)
        _write_entry(path, task_result)
        result.tasks[name] = task_result
        log_event(Path(settings.cache_dir), "evaluated", model=ref.name, role=ref.role,
                  model_hash=ref.content_hash[:16], task=name, n=len(task_result.items),
                  seconds_all_tasks=seconds)


def make_lm(ref: ModelRef, settings: EvalSettings):
    """The lm-eval LM for a model loaded once per process (ModelRef caches it): mergeqa's
    prefix-sharing scorer by default, lm-eval's own HFLM with backend="hf"."""
    from .scorer import make_lm as make_scorer

    if settings.backend == "vllm":
        from .devices import vllm_lm

        return vllm_lm(ref, settings)
    device = resolve_device(settings.device)
    if settings.device_map:  # placed by accelerate over the visible GPUs: never moved again
        return make_scorer(ref.model(device, settings.dtype, device_map=settings.device_map),
                           ref.tokenizer(), backend=settings.backend, batch_size=settings.batch_size)
    return make_scorer(ref.model(device, settings.dtype), ref.tokenizer(), backend=settings.backend,
                       batch_size=settings.batch_size, device=device)


def _to_task_result(name: str, out: dict, config_hash: str) -> TaskResult:
    metrics = {k.split(",")[0]: float(v) for k, v in out["results"][name].items()
               if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
    items = []
    for sample in out["samples"][name]:
        resps = sample["filtered_resps"]
        if resps and isinstance(resps[0], (tuple, list)):  # loglikelihood: (logprob, is_greedy)
            lls = [r[0] for r in resps]
            choice = int(max(range(len(lls)), key=lls.__getitem__))
        else:
            choice = resps[0] if resps else None
        items.append(ItemRecord(
            doc_id=int(sample["doc_id"]), doc_hash=sample["doc_hash"],
            metrics={m: float(_scalar(sample[m])) for m in sample["metrics"] if m in sample},
            choice=choice, target=_jsonable(sample["target"]) if not isinstance(sample["target"], (int, str)) else sample["target"]))
    return TaskResult(name, metrics, items, config_hash)


def _scalar(value):
    if isinstance(value, (list, tuple)):  # perplexity metrics keep (loglikelihood, weight) pairs
        return value[0]
    return value
