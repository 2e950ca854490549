"""Whether the datasets of lm-eval tasks can be loaded on this machine right now, offline.

Read from the tasks' YAML alone (groups and tags expanded to their leaves): a local file or
directory, a copy in the Hugging Face datasets or hub cache, or a custom loader shipped with the
task. Nothing is downloaded or loaded, so `mergeqa init` and `mergeqa plan` answer in seconds.
Not a guarantee that loading succeeds (a cache can be partial): the engine still says so in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


@dataclass(frozen=True)
class TaskData:
    """One leaf task's dataset: where lm-eval would read it, and whether it is here."""

    task: str
    source: str  # "cais/mmlu (abstract_algebra)", "json: /data/x.jsonl", "custom loader"
    available: bool
    where: str  # the cache or path that holds it, or what is missing
    output_type: str = ""  # lm-eval's: "loglikelihood_rolling" for a perplexity task ("" if unknown)

    def line(self) -> str:
        mark = "available" if self.available else "NOT available offline"
        return f"{self.task}: {self.source}: {mark} ({self.where})"


def hf_dataset_dirs(path: str) -> list[Path]:
    """Where the datasets library and the hub keep `path` (org/name) on this machine."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
    hub_cache = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or home / "hub")
    return [datasets_cache / path.replace("/", "___"), hub_cache / f"datasets--{path.replace('/', '--')}"]


def dataset_of(task: str, cfg: dict) -> TaskData:
    """TaskData for one leaf task's (include-resolved) YAML config."""
    return replace(_dataset_of(task, cfg), output_type=str(cfg.get("output_type") or ""))


def _dataset_of(task: str, cfg: dict) -> TaskData:
    if cfg.get("custom_dataset") is not None:
        return TaskData(task, "custom loader", True, "shipped with the task")
    path = str(cfg.get("dataset_path") or "")
    name = cfg.get("dataset_name")
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if path in FILE_BUILDERS or files:
        listed = files.values() if isinstance(files, dict) else files if isinstance(files, list) else [files]
        paths = [Path(str(f)) for f in listed if f]
        missing = [str(p) for p in paths if not p.exists()]
        source = f"{path or 'files'}: {', '.join(map(str, paths))}"
        return TaskData(task, source, bool(paths) and not missing,
                        f"missing {missing[0]}" if missing else "local files")
    if not path:
        return TaskData(task, "no dataset_path", False, "the task names no dataset")
    source = f"{path} ({name})" if name else path
    local = Path(path).expanduser()
    if local.is_dir():
        return TaskData(task, source, True, f"local directory {local}")
    found = [d for d in hf_dataset_dirs(path) if d.is_dir()]
    if found:
        return TaskData(task, source, True, f"cached in {found[0]}")
    return TaskData(task, source, False, f"not in {hf_dataset_dirs(path)[0].parent}; download it on a "
                    "connected machine (datasets.load_dataset) and copy the cache over")


def task_datasets(names: list[str], task_paths: list[str] | tuple[str, ...] = (), *,
                  include_defaults: bool = True) -> list[TaskData]:
    """TaskData for every leaf task of `names` (groups and tags expanded); an unknown name is
    reported as not available, with the closest known names. `include_defaults=False` looks in
    `task_paths` alone (in well under a second; lm-eval's own tasks take ~10 s to index)."""
    from mergeqa.evaluate.engine import task_manager

    tm = task_manager(tuple(str(p) for p in task_paths), include_defaults=include_defaults)
    out: list[TaskData] = []
    for name in names:
        out += _leaves(tm, name, seen=set())
    return out


def _leaves(tm, name: str, seen: set[str]) -> list[TaskData]:
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    from mergeqa.core.errors import did_you_mean

    entry = tm.task_index.get(name)
    if entry is None or name in seen:
        hint = did_you_mean(name, tm.all_tasks) if entry is None else ""
        return [] if entry is not None else [TaskData(name, "unknown task", False, f"lm-eval has no such task.{hint}")]
    seen.add(name)
    if entry.kind == Kind.TAG:
        return [d for member in sorted(entry.tags) for d in _leaves(tm, member, seen)]
    cfg = load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else dict(entry.cfg or {})
    if entry.kind == Kind.GROUP:
        members = cfg.get("task") or []
        out = []
        for m in members if isinstance(members, list) else [members]:
            if isinstance(m, dict) and m.get("group") not in tm.task_index and isinstance(m.get("task"), list):
                out += [d for sub in m["task"] if isinstance(sub, str) for d in _leaves(tm, sub, seen)]
                continue  # an inline subgroup: its members
            member = m if isinstance(m, str) else m.get("task") or m.get("group")
            if isinstance(member, str):
                out += _leaves(tm, member, seen)
        return out
    return [dataset_of(name, cfg)]
