"""The embedded default's verdicts do not depend on the machine's thread count: `mergeqa gate` on the
shipped family with 1 and with 2 torch threads, each on an empty cache (so nothing is reused),
per-merge lines compared, and every numeric junit figure compared.

    .venv/bin/python bench/gate_threads.py [--threads 1 2]

fp32 CPU scoring: a thread count changes the order of floating-point sums, so log-likelihoods
move in the last bits. The gate's verdicts rest on which answer scores highest and on counts, so
the lines must be identical; the script prints the largest difference of any figure as well.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def gate(threads: int, root: Path) -> tuple[list[str], dict[str, str], float, int]:
    out, cache = root / f"out-{threads}", root / f"cache-{threads}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "MERGEQA_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "import sys; from mergeqa.cli import main; sys.exit(main())",
                           "gate", "--out", str(out), "-q"], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - started
    summary = (out / "summary.md").read_text() if (out / "summary.md").is_file() else ""
    lines = [ln[2:] for ln in summary.split("## Verdict per merge", 1)[-1].splitlines() if ln.startswith("- ")]
    figures = {}
    for case in ET.parse(out / "junit.xml").iter("testcase"):
        for p in case.iter("property"):  # each run's own directories named alike, so paths compare
            value = (p.get("value") or "").replace(str(cache), "<cache>").replace(str(out), "<out>")
            # a merge's directory is named by a hash of its config, which holds the cache's paths
            value = re.sub(r"(<cache>/merges/[\w.-]+)-[0-9a-f]{16}", r"\1-<hash>", value)
            figures[f"{case.get('name')}:{p.get('name')}"] = value
    return lines, figures, seconds, proc.returncode


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {t: gate(t, Path(tmp)) for t in args.threads}
    first, *others = args.threads
    for t, (lines, _, seconds, code) in runs.items():
        print(f"\n{t} torch thread(s): exit {code}, {seconds:.0f} s")
        print("\n".join(f"  {ln}" for ln in lines))
    same = True
    for t in others:
        a, b = runs[first], runs[t]
        same &= a[0] == b[0] and a[3] == b[3]
        shared = a[1].keys() & b[1].keys()
        text_diff = sorted(k for k in shared if _number(a[1][k]) is None and a[1][k] != b[1][k]
                           and not re.search(r"(path|seconds|_s$|time|plot|cache)", k))
        worst, where = 0.0, ""
        for k in shared:
            x, y = _number(a[1][k]), _number(b[1][k])
            if x is not None and y is not None and not re.search(r"(seconds|_s$|time|speed|tokens_per)", k):
                if abs(x - y) > worst:
                    worst, where = abs(x - y), k
        print(f"\n{first} vs {t} threads: per-merge lines {'identical' if a[0] == b[0] else 'DIFFER'}; "
              f"{len(shared)} junit properties compared; largest difference of a figure {worst:.3g}"
              + (f" ({where})" if where else "") + f"; {len(text_diff)} text properties differ"
              + (f": {', '.join(text_diff[:5])}" if text_diff else ""))
        for k in text_diff[:3]:
            print(f"  {k}:\n    {first}: {a[1][k][:300]}\n    {t}: {b[1][k][:300]}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
