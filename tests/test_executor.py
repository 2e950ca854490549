"""The executor seam (local and a Ray cluster started here) and GPU placement (xdist pinning,
model sizing), all without a GPU: the pinning is tested on CUDA_VISIBLE_DEVICES itself."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.evaluate.executor import LocalExecutor, RayExecutor, evaluate_many, make_executor
from mergeqa.models.devices import gpus_for_worker, gpus_needed, parameter_count, pin_worker_gpus


# -- GPU placement -----------------------------------------------------------------------------
@pytest.mark.parametrize("index, workers, gpus, expected", [
    (0, 2, ["0", "1"], ["0"]),
    (1, 2, ["0", "1"], ["1"]),
    (1, 2, ["0", "1", "2", "3"], ["2", "3"]),          # a block each: device_map shards inside it
    (0, 3, ["0", "1", "2", "3", "4"], ["0", "1"]),     # the remainder goes to the first workers
    (2, 3, ["0", "1", "2", "3", "4"], ["4"]),
    (3, 4, ["0", "1"], ["1"]),                         # more workers than GPUs: shared round-robin
    (1, 2, ["4", "6"], ["6"]),                         # the user's own CUDA_VISIBLE_DEVICES list
    (0, 2, [], []),
])
def test_each_worker_takes_its_own_gpus(index, workers, gpus, expected):
    assert gpus_for_worker(index, workers, gpus) == expected


def test_pinning_sets_cuda_visible_devices_only_inside_xdist():
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert pin_worker_gpus({"workerid": "gw1", "workercount": 2}, env) == ["2", "3"]
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert pin_worker_gpus(None, env) == [] and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "MERGEQA_NO_GPU_PINNING": "1"}
    assert pin_worker_gpus({"workerid": "gw1", "workercount": 2}, env) == []
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    with pytest.raises(MergeQAUsageError, match="gwN"):
        pin_worker_gpus({"workerid": "worker-1", "workercount": 2}, {"CUDA_VISIBLE_DEVICES": "0"})


@pytest.mark.parametrize("worker, expected", [("gw0", "0"), ("gw1", "1")])
def test_the_plugin_pins_each_xdist_worker_while_it_configures(monkeypatch, worker, expected):
    """What `pytest -n 2` does in each worker, before any test can initialise CUDA. (The same
    with real workers: docs/scaling.md, "Several GPUs", shows the command and its output.)"""
    from types import SimpleNamespace

    from mergeqa.pytest_plugin.hooks import _share_cores

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.delenv("MERGEQA_NO_GPU_PINNING", raising=False)
    _share_cores(SimpleNamespace(workerinput={"workerid": worker, "workercount": 2}))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected


def test_model_size_sets_the_gpus_a_job_reserves(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float32)}, str(tmp_path / "x.safetensors"))
    assert parameter_count(tmp_path) == 17
    gib = 2**30
    assert gpus_needed(10 * gib, 80 * gib, 8) == (1, None)
    assert gpus_needed(70 * gib, 80 * gib, 8) == (8, "auto")  # 70 x 1.3 headroom > 80: the node
    with pytest.raises(MergeQAUsageError, match="needs ~1300 GiB but a node has 8 x 80 GiB"):
        gpus_needed(1000 * gib, 80 * gib, 8)


# -- executors: options ------------------------------------------------------------------------
def test_executor_spec_is_checked():
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(MergeQAUsageError, match="expected one of local, ray, ray://HOST:PORT"):
        make_executor("dask")


def test_bad_executor_and_missing_vllm_are_usage_errors(pytester):
    import importlib.util

    result = pytester.runpytest_subprocess("--executor", "slurm", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--executor 'slurm': expected one of local, ray*"])
    if importlib.util.find_spec("vllm") is None:  # vLLM is never installed in CI (it needs CUDA)
        result = pytester.runpytest_subprocess("--backend", "vllm", "-p", "no:cacheprovider")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--backend vllm: vLLM is not installed; `pip install vllm`*"])


# -- executors: the same results, each job once ------------------------------------------------
def _events(cache, kind):
    path = cache / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def _entries(cache):
    """{relative path: parsed JSON} of every evaluation result in a cache."""
    root = cache / "results"
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))}


def _private(tmp_path, family, name):
    cache = tmp_path / name
    cache.mkdir()
    os.symlink(family.root, cache / family.root.name)
    return cache


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs for this module (about 15 s to start on 2 busy cores)."""
    ray = pytest.importorskip("ray", reason="Ray is the `ray` extra, which .ci/setup installs; "
                                            "pip install mergeqa[ray] to run this test")
    executor = RayExecutor(num_cpus=2, device="cpu")
    executor._ray()
    yield executor
    executor.shutdown()
    assert not ray.is_initialized()


@pytest.mark.slow
def test_ray_executor_gives_the_local_executors_results_and_runs_each_job_once(
        family, tmp_path, ray_cluster):
    from mergeqa.evaluate.engine import EvalSettings
    from mergeqa.evaluate.executor import MergeJob
    from mergeqa.models.refs import ModelRef

    tasks = ["family_arithmetic", "family_lists"]
    caches = {name: _private(tmp_path, family, name) for name in ("local", "ray")}
    from mergeqa.models.session import DEFAULT_MERGES_DIR

    subs = tuple(sorted({"base": str(family.base), **{k: str(v) for k, v in family.parents.items()}}.items()))
    results, merged = {}, {}
    for name, executor in (("local", LocalExecutor()), ("ray", ray_cluster)):
        cache = caches[name]
        [merged[name]] = executor.run([MergeJob(DEFAULT_MERGES_DIR / "linear_lopsided.yaml", cache, subs)])
        refs = [ModelRef("arithmetic", family.parents["arithmetic"], "parent"),
                ModelRef("linear_lopsided", merged[name], "merged")]
        settings = EvalSettings(cache_dir=cache, device="cpu", task_paths=(str(family.tasks_dir),), limit=12)
        results[name] = evaluate_many(refs, tasks, settings, executor=executor)
        again = evaluate_many(refs, tasks, settings, executor=executor)  # all from the cache now
        assert all(t.cached for r in again for t in r.tasks.values())

    assert merged["local"].name == merged["ray"].name, "the merge's content address must not depend on where it was built"
    for local, remote in zip(results["local"], results["ray"]):
        for task in tasks:
            assert local.tasks[task].items == remote.tasks[task].items
            assert local.tasks[task].metrics == remote.tasks[task].metrics
    assert _entries(caches["local"]) == _entries(caches["ray"]) and len(_entries(caches["ray"])) == 4
    for name in ("local", "ray"):
        evaluated = [(e["model_hash"], e["task"]) for e in _events(caches[name], "evaluated")]
        assert sorted(evaluated) == sorted(set(evaluated)) and len(evaluated) == 4, evaluated
        assert len(_events(caches[name], "merge_built")) == 1
    ray_pids = {e["pid"] for e in _events(caches["ray"], "evaluated") + _events(caches["ray"], "merge_built")}
    assert os.getpid() not in ray_pids, "the ray executor's jobs must run in Ray's workers"
    shutil.rmtree(caches["local"] / "results")  # a cache that lost its results is refilled by Ray
    refs = [ModelRef("arithmetic", family.parents["arithmetic"], "parent")]
    settings = EvalSettings(cache_dir=caches["local"], device="cpu", task_paths=(str(family.tasks_dir),), limit=12)
    [refilled] = evaluate_many(refs, tasks, settings, executor=ray_cluster)
    assert refilled.tasks["family_arithmetic"].items == results["ray"][0].tasks["family_arithmetic"].items


@pytest.mark.slow
def test_device_map_auto_loads_through_accelerate_and_scores_the_same(family, tmp_path, monkeypatch):
    """--device-map auto on a machine without GPUs: the model is loaded with device_map="auto"
    (accelerate keeps it on the CPU) and never moved after, and the per-item records equal an
    ordinary load's. With GPUs the same call shards it over the visible ones."""
    import transformers

    from mergeqa.evaluate.engine import EvalSettings, evaluate
    from mergeqa.models.refs import ModelRef

    loads = []
    original = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **kw: loads.append(kw.get("device_map")) or original(*a, **kw))
    records = {}
    for device_map in (None, "auto"):
        settings = EvalSettings(cache_dir=tmp_path / str(device_map), device="cpu", limit=8,
                                task_paths=(str(family.tasks_dir),), device_map=device_map)
        ref = ModelRef("arithmetic", family.parents["arithmetic"], "parent")
        records[device_map] = evaluate(ref, ["family_arithmetic"], settings).tasks["family_arithmetic"].items
    assert loads == [None, "auto"]
    assert records[None] == records["auto"]


@pytest.mark.slow
def test_the_sequential_gate_scores_batches_in_the_driver_and_fixed_n_tasks_as_jobs(family, tmp_path, ray_cluster):
    """`[statistics] sequential = true` under --executor ray: the same verdicts as local; the
    batches of the sequential task are scored in this process, the fixed-n task by Ray."""
    from mergeqa.decision.thresholds import load_thresholds
    from mergeqa.evaluate.engine import EvalSettings
    from mergeqa.evaluate.executor import evaluate_on
    from mergeqa.models.refs import ModelRef
    from mergeqa.retention.assess import assess
    from mergeqa.retention.early_stop import evaluate_early

    tasks = ["family_arithmetic", "family_grammar"]  # owned (sequential) and unowned (fixed-n)
    path = tmp_path / "thresholds.toml"
    path.write_text('[statistics]\nsequential = true\n[retention]\nsuite = "two"\n'
                    '[suites.two]\ntasks = ["family_arithmetic", "family_grammar"]\n')
    thresholds = load_thresholds(path)
    merged = ModelRef("arithmetic_again", family.parents["arithmetic"], "merged")
    parents = [ModelRef(name, family.parents[name], "parent") for name in ("arithmetic", "lists")]
    outcomes = {}
    for name, executor in (("local", LocalExecutor()), ("ray", ray_cluster)):
        cache = _private(tmp_path, family, name)
        settings = EvalSettings(cache_dir=cache, device="cpu", task_paths=(str(family.tasks_dir),), limit=200)
        early = evaluate_early(merged, parents, None, tasks, thresholds, settings,
                               full=lambda ref, names: evaluate_on(executor, ref, names, settings))
        assert set(early.fixed_n) == {"family_grammar"}
        verdicts = assess(merged.name, early.merged, early.parents, tasks, thresholds, early=early)
        outcomes[name] = {k: (v.outcome, v.figures.get("items_used"), v.figures["n"]) for k, v in verdicts.items()}
        where = {(e["task"], e["pid"] == os.getpid()) for e in _events(cache, "evaluated")}
        assert where == {("family_arithmetic", True), ("family_grammar", name == "local")}, where
    assert outcomes["local"] == outcomes["ray"]
