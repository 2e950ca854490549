"""Run the embedded gate's retention and regression checks twice, with `--executor local` and with
`--executor ray` (a local Ray cluster the run starts, as many CPUs as the machine has), each into
its own fresh cache that shares only the tiny family, and print what differs: verdicts, junit
figures, cached per-item results, and how often each merge and evaluation job ran (events.jsonl).

Run: .venv/bin/python bench/gate_on_ray.py [--eval-limit N]   (needs `pip install mergeqa[ray]`)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_gate(executor: str, cache: Path, limit: int | None) -> tuple[float, int, str]:
    junit = cache / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "--gate", "mergeqa/checks/test_retention.py",
           "--executor", executor, "--mergeqa-cache", str(cache), "--junitxml", str(junit),
           "-o", "junit_family=xunit1", "-p", "no:cacheprovider", "-q", "-p", "no:xdist",
           "--report-dir", str(cache / "report")]
    if limit:
        cmd += ["--eval-limit", str(limit)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - started, proc.returncode, proc.stdout.splitlines()[-1] if proc.stdout else proc.stderr


def verdicts(junit: Path) -> dict[str, tuple[str, dict]]:
    """testcase -> (outcome, {property: value})."""
    out = {}
    for case in ET.parse(junit).iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "xfailed" if tag == "skipped" and "xfail" in (node.get("type") or "") else tag
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        out[case.get("name")] = (outcome, props)
    return out


def entries(cache: Path) -> dict[tuple[str, str], dict]:
    """(model name, task) -> the cached entry (names from the event log). Keyed by name, not by
    the entry's file name: that hashes the task config, whose lm-eval metadata holds the YAML's
    path, and each private cache reaches the family's YAML through its own symlink."""
    names = {e["model_hash"]: e["model"] for e in events(cache) if e["event"] == "evaluated"}
    out = {}
    for path in sorted((cache / "results").rglob("*.json")):
        entry = json.loads(path.read_text())
        out[(names.get(path.parent.name, path.parent.name), entry["task"])] = {**entry, "model_hash": path.parent.name}
    return out


def events(cache: Path) -> list[dict]:
    path = cache / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-limit", type=int, default=None, metavar="N",
                        help="items per task (default: all, as the gate)")
    parser.add_argument("--compare", metavar="DIR", default=None,
                        help="only compare the two caches a previous run left in DIR")
    args = parser.parse_args()
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.models.shipped_family import shipped_family

    family = shipped_family(default_cache_dir())
    work = Path(args.compare or tempfile.mkdtemp(prefix="mergeqa-gate-on-ray-"))
    runs = {e: work / e for e in ("local", "ray")}
    for executor in () if args.compare else ("local", "ray"):
        cache = work / executor
        cache.mkdir()
        os.symlink(family.root, cache / family.root.name)
        seconds, code, last = run_gate(executor, cache, args.eval_limit)
        print(f"--executor {executor}: exit {code}, {seconds:.0f} s wall, pytest says: {last}")
    local, ray = (verdicts(runs[e] / "junit.xml") for e in ("local", "ray"))
    outcome_diff = [t for t in local if local[t][0] != ray.get(t, (None,))[0]]
    figure_diff = [t for t in local if local[t][1] != ray.get(t, (None, None))[1]]
    print(f"\ntest cases: local {len(local)}, ray {len(ray)}; outcomes: "
          f"{dict(collections.Counter(o for o, _ in local.values()))} (local) vs "
          f"{dict(collections.Counter(o for o, _ in ray.values()))} (ray)")
    print(f"test cases whose verdict differs: {len(outcome_diff)}; whose junit figures differ: "
          f"{len(figure_diff)} {figure_diff[:3]}")
    local_entries, ray_entries = entries(runs["local"]), entries(runs["ray"])

    def records(entry):
        return None if entry is None else (entry["items"], entry["metrics"])

    same = sum(records(local_entries[k]) == records(ray_entries.get(k)) for k in local_entries)
    print(f"cached result entries (model, task): local {len(local_entries)}, ray "
          f"{len(ray_entries)}, identical per-item records and metrics: {same}")
    rehashed = sorted({k[0] for k in local_entries if k in ray_entries
                       and local_entries[k]["model_hash"] != ray_entries[k]["model_hash"]})
    print(f"models whose content hash differs between the two runs: {rehashed or 'none'}")
    for executor, cache in runs.items():
        ev = events(cache)
        jobs = collections.Counter((e.get("model_hash"), e.get("task")) for e in ev if e["event"] == "evaluated")
        merges = collections.Counter(e.get("config") for e in ev if e["event"] == "merge_built")
        pids = {e["pid"] for e in ev if e["event"] in ("evaluated", "merge_built")}
        print(f"{executor}: {len(jobs)} (model, task) evaluations, max runs of one: "
              f"{max(jobs.values(), default=0)}; {len(merges)} merges built, max builds of one: "
              f"{max(merges.values(), default=0)}; in {len(pids)} process(es)")
    print(f"\n(caches kept under {work})")


if __name__ == "__main__":
    main()
