"""Run the behavioural gate twice on the embedded default and report what the cache saved.

    .venv/bin/python bench/gate_twice.py [--cache DIR]

The first run evaluates base-free parents and merges (parents are shared across merges); the
second must evaluate nothing: prints parent/merge evaluations per run and the wall-time ratio.
Uses a fresh results cache next to the family (the shipped family, linked in, not rebuilt).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", default=None, help="cache holding the family (default: mergeqa's)")
    args = parser.parse_args()
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.models.shipped_family import shipped_family

    family = shipped_family(args.cache or default_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        os.symlink(family.root, cache / family.root.name)
        rows = []
        for run in (1, 2):
            started = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "pytest", "--gate", "-k", "retention or regression",
                                   "--mergeqa-cache", str(cache), "-q", "-p", "no:cacheprovider"],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - started
            events = [json.loads(line) for line in (cache / "events.jsonl").read_text().splitlines()]
            done = [e for e in events if e["event"] == "evaluated"]
            rows.append((run, wall, done, proc.stdout.strip().splitlines()[-1]))
            (cache / "events.jsonl").write_text("")
        print("| run | wall s | parent (model x task) evaluations | merge (model x task) evaluations | pytest |")
        print("|---:|---:|---:|---:|---|")
        for run, wall, done, last in rows:
            parents = sum(e["role"] == "parent" for e in done)
            merges = sum(e["role"] == "merged" for e in done)
            print(f"| {run} | {wall:.1f} | {parents} | {merges} | {last} |")
        print(f"\nwall-time ratio second/first: {rows[1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
