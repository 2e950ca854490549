"""Where the expensive jobs run: merge builds, (model, tasks) evaluations and probing
representations. Each job is pure and content-addressed: it reads model directories and writes the
cache (mergeqa.core.cache), so it can run anywhere that sees the same paths, and a job that another
process already ran, or is running, only reads its result.

    executor = make_executor("ray")                  # or "local", or "ray://head:10001"
    results = evaluate_many(refs, ["family"], settings, executor=executor)

`local` runs the jobs here, one after another (what the engine always did). `ray` hands each to a
Ray cluster (`pip install mergeqa[ray]`), one task per job with `num_gpus` set from the model's
size (a whole node, sharded with device_map="auto", for a model one GPU cannot hold). Workers need
the model directories and the cache at the same paths (a shared filesystem, or one machine);
evaluation records also come back to the driver, which writes any entry its cache lacks. pytest's
collection, verdicts and reports do not change: only where the work runs. The sequential gate
(`[statistics] sequential = true`, mergeqa.retention.early_stop) scores its batches in the driver, with
the engine directly; only its fixed-n tasks run as jobs here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.evaluate.engine import EvalResult, _entry_path, _read_entry, _write_entry, evaluate
from mergeqa.models.refs import ModelRef

EXECUTORS = ("local", "ray", "ray://HOST:PORT")
DEFAULT_GPU_MEMORY_GB = 80.0


def _portable(ref: ModelRef) -> ModelRef:
    """The same model without what this process loaded (a job ships names and paths only)."""
    return ModelRef(ref.name, Path(ref.path), ref.role, merge_config=ref.merge_config)


def _resources(device: str, model_dir: Path | None, dtype: str, *, gpu_memory_gb: float,
               gpus_per_node: int) -> tuple[dict, str | None]:
    """Ray resources for a job on one model, and the device_map it must load with."""
    if device == "cpu" or gpus_per_node == 0:
        return {"num_cpus": 1}, None
    if model_dir is None:
        return {"num_cpus": 1, "num_gpus": 1}, None
    from mergeqa.models.devices import gpus_needed, model_bytes

    gpus, device_map = gpus_needed(model_bytes(model_dir, dtype), int(gpu_memory_gb * 2**30),
                                   gpus_per_node)
    return {"num_cpus": 1, "num_gpus": gpus}, device_map


# -- jobs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalJob:
    """Evaluate one model on `tasks` (the per-item records of every leaf task)."""

    ref: ModelRef
    tasks: tuple[str, ...]
    settings: object  # engine.EvalSettings
    num_fewshot: dict | None = None

    def run(self) -> dict:
        result = evaluate(self.ref, list(self.tasks), self.settings, num_fewshot=self.num_fewshot)
        return {"tasks": result.tasks, "groups": result.groups}

    def model_dir(self) -> Path:
        return Path(self.ref.path)

    def placed(self, device_map: str | None) -> "EvalJob":
        if device_map is None or not hasattr(self.settings, "device_map"):
            return self
        return dataclasses.replace(self, settings=dataclasses.replace(self.settings, device_map=device_map))


@dataclass(frozen=True)
class MergeJob:
    """Build one mergekit config into the cache (mergeqa.models.merging.build_merge)."""

    config: Path
    cache_dir: Path
    substitutions: tuple[tuple[str, str], ...] = ()
    cuda: bool = False
    seed: int = 0
    document: int = 0  # of a multi-document config
    built: tuple[tuple[str, str], ...] = ()  # (name, directory) of the documents it merges

    def run(self) -> Path:
        from mergeqa.models.merging import build_merge

        return build_merge(self.config, self.cache_dir, substitutions=dict(self.substitutions),
                           cuda=self.cuda, seed=self.seed, document=self.document, built=dict(self.built))

    def model_dir(self) -> None:
        return None

    def placed(self, device_map: str | None) -> "MergeJob":
        return self


@dataclass(frozen=True)
class ProbeJob:
    """Probe one model on every dataset of a ProbingEngine; the results go to its cache."""

    ref: ModelRef
    engine: object  # probing.engine.ProbingEngine, shipped without its in-memory results

    def run(self) -> list[str]:
        return sorted(self.engine.results(self.ref))

    def model_dir(self) -> Path:
        return Path(self.ref.path)

    def placed(self, device_map: str | None) -> "ProbeJob":
        return self


def _run_job(job):
    """What a Ray worker executes (a module-level function, importable by every worker)."""
    return job.run()


# -- executors ---------------------------------------------------------------------------------
class LocalExecutor:
    """Runs every job in this process, in order: today's behaviour, and the reference."""

    name = "local"
    distributed = False

    def run(self, jobs: Sequence) -> list:
        return [job.run() for job in jobs]


class RayExecutor:
    """Runs jobs as Ray tasks, all submitted at once, Ray's scheduler placing them.

    `address`: None starts (or joins, via RAY_ADDRESS or `ray start`) a local cluster;
    "ray://HOST:PORT" connects to a remote one. `num_cpus` caps a cluster started here.
    `gpu_memory_gb` sizes GPU jobs (Ray does not report GPU memory).
    """

    name = "ray"
    distributed = True

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 device: str = "auto", dtype: str = "float32",
                 gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB):
        self.address, self.num_cpus = address, num_cpus
        self.device, self.dtype, self.gpu_memory_gb = device, dtype, gpu_memory_gb
        self._started = False

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise MergeQAUsageError("--executor ray: Ray is not installed; "
                                    "`pip install mergeqa[ray]` (or use --executor local)") from None
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=self.num_cpus, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
            self._started = True
        return ray

    def _gpus_per_node(self, ray) -> int:
        return max((int(node["Resources"].get("GPU", 0)) for node in ray.nodes() if node["Alive"]),
                   default=0)

    def run(self, jobs: Sequence) -> list:
        if not jobs:
            return []
        ray = self._ray()
        remote = ray.remote(_run_job)
        per_node = self._gpus_per_node(ray)
        device = "cpu" if per_node == 0 or self.device == "cpu" else "cuda"
        futures = []
        for job in jobs:
            resources, device_map = _resources(device, job.model_dir(), self.dtype,
                                               gpu_memory_gb=self.gpu_memory_gb,
                                               gpus_per_node=per_node)
            futures.append(remote.options(**resources, max_retries=0).remote(job.placed(device_map)))
        return ray.get(futures)

    def shutdown(self) -> None:
        """Stop the cluster this executor started (a joined one is left running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_executor(spec: str = "local", *, device: str = "auto", dtype: str = "float32"):
    """'local', 'ray' or 'ray://HOST:PORT' -> an executor; anything else is a usage error."""
    if spec == "local":
        return LocalExecutor()
    if spec == "ray" or spec.startswith("ray://"):
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise MergeQAUsageError(f"--executor {spec}: Ray is not installed; "
                                    "`pip install mergeqa[ray]` (or use --executor local)")
        return RayExecutor(None if spec == "ray" else spec, device=device, dtype=dtype)
    raise MergeQAUsageError(f"--executor {spec!r}: expected one of {', '.join(EXECUTORS)}")


# -- what the gate calls -----------------------------------------------------------------------
def evaluate_on(executor, ref: ModelRef, tasks: list[str], settings, *, num_fewshot: dict | None = None,
                progress: Callable[[str], None] | None = None):
    """engine.evaluate of one model, run as one job when the executor is distributed (a local or
    no executor evaluates here)."""
    if executor is not None and executor.distributed:
        return evaluate_many([ref], tasks, settings, executor=executor, num_fewshot=num_fewshot,
                             progress=progress)[0]
    return evaluate(ref, tasks, settings, num_fewshot=num_fewshot, progress=progress)


def evaluate_many(refs: Sequence[ModelRef], tasks: list[str], settings, *, executor=None,
                  num_fewshot: dict | None = None,
                  progress: Callable[[str], None] | None = None) -> list:
    """EvalResults of every model in `refs`, one executor job per model the cache does not fully
    hold, all submitted together; entries the jobs return that this cache lacks are written."""
    executor = executor or LocalExecutor()
    results = [evaluate(r, tasks, settings, num_fewshot=num_fewshot, cached_only=True) for r in refs]
    todo = [i for i, res in enumerate(results) if _incomplete(res, tasks)]
    if progress and todo:
        progress(f"{executor.name} executor: evaluating {', '.join(refs[i].name for i in todo)}")
    jobs = [EvalJob(_portable(refs[i]) if executor.distributed else refs[i], tuple(tasks), settings,
                    num_fewshot) for i in todo]
    for i, out in zip(todo, executor.run(jobs)):
        _store(refs[i], out["tasks"], settings)
        results[i] = EvalResult(refs[i], dict(out["tasks"]), dict(out["groups"]))
    return results


def _incomplete(result, tasks: list[str]) -> bool:
    leaves = [leaf for name in tasks for leaf in result.groups.get(name, [name])]
    return any(leaf not in result.tasks for leaf in leaves)


def _store(ref: ModelRef, task_results: dict, settings) -> None:
    """Write the entries a remote job returned where this cache lacks them or holds only some
    of their documents (a sequential run's prefix; no shared disk)."""
    for name, result in task_results.items():
        path = _entry_path(settings, ref.content_hash, name, result.config_hash)
        held = _read_entry(path) if path.is_file() else None
        if held is None or (not held.complete and result.complete):
            _write_entry(path, result)


def build_merges(gate, executor=None) -> list[Path]:
    """Build every merge config (document) of a GateSession through the executor (in parallel on
    Ray; a document that merges other documents' merges after them); `gate.merged(name)` then
    finds each in the cache."""
    from mergeqa.models.refs import resolve_device

    executor = executor or LocalExecutor()
    subs = tuple(sorted(gate._substitutions().items()))
    cuda = resolve_device(gate.device) == "cuda"
    built: dict[tuple, str] = {}  # (file, document name) -> directory
    todo, out = list(gate.merge_docs), []
    while todo:
        ready = [d for d in todo if all((d.path, dep) in built for dep in d.depends)]
        if not ready:  # parse_merge_documents refuses circles: only a hand-built session gets here
            raise ValueError(f"merge documents that need each other: {', '.join(d.name for d in todo)}")
        paths = executor.run([MergeJob(Path(d.path).resolve(), Path(gate.cache_dir), subs, cuda, gate.merge_seed,
                                       d.index, tuple((dep, built[(d.path, dep)]) for dep in d.depends))
                              for d in ready])
        built.update({(d.path, d.name): str(p) for d, p in zip(ready, paths)})
        out += paths
        todo = [d for d in todo if d not in ready]
    return out


def probe_many(engine, refs: Sequence[ModelRef], executor=None) -> None:
    """Probe every model the probing cache lacks, one job per model; `engine.results(ref)`
    then reads them from the cache."""
    executor = executor or LocalExecutor()
    todo = [r for r in refs if engine._missing(r)]
    if not executor.distributed:
        engine.prepare(todo)
        return
    executor.run([ProbeJob(_portable(r), _bare_engine(engine)) for r in todo])


def _bare_engine(engine):
    """A copy of a ProbingEngine with no in-memory results (cheap to ship)."""
    import copy

    bare = copy.copy(engine)
    bare._memo = {}
    return bare


def prefetch(gate, tasks: list[str], settings, executor, *, num_fewshot: dict | None = None,
             progress: Callable[[str], None] | None = None) -> dict:
    """Everything a gate run evaluates, as parallel jobs: the merges first, then every model on
    `tasks`. Returns {model path: EvalResult}."""
    build_merges(gate, executor)
    refs = gate.all_merged() + gate.parents() + ([gate.base()] if gate.base() is not None else [])
    results = evaluate_many(refs, tasks, settings, executor=executor, num_fewshot=num_fewshot,
                            progress=progress)
    return {ref.path: result for ref, result in zip(refs, results)}
