"""Print the markdown table mergekit method x merge property -> holds / violated / n/a, with runtime.

    .venv/bin/python bench/operator_table.py                      # profile mergeqa-default
    .venv/bin/python bench/operator_table.py --profile mergeqa-thorough --reasons
    .venv/bin/python bench/operator_table.py --methods slerp,ties --properties endpoints,fp16_finite

Every cell is searched afresh (nothing is read from the test suite's list of known violations);
violations are listed after the table with their shrunk counterexamples.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergeqa.operators import PROFILES, register_profiles  # noqa: E402

CELL = {"holds": "holds", "violated": "**violated**", "n/a": "n/a", "skipped": "skipped"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="mergeqa-default", choices=sorted(PROFILES),
                        help="hypothesis settings profile (default: %(default)s)")
    parser.add_argument("--methods", metavar="A,B", help="comma-separated mergekit methods (default: all registered)")
    parser.add_argument("--properties", metavar="P,Q", help="comma-separated properties (default: the catalogue)")
    parser.add_argument("--shrink-seconds", type=float, default=None, metavar="S",
                        help="shrinking budget per violated cell (default: the kit's, 10 s)")
    parser.add_argument("--reasons", action="store_true", help="also list why each n/a cell does not apply")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    register_profiles(load=args.profile)

    import mergekit
    import torch
    from hypothesis import settings

    from mergeqa.operators.mergekit_adapter import SKIPPED_METHODS, mergekit_operator, registered_method_names
    from mergeqa.operators.properties import CATALOGUE, SHRINK_SECONDS, evaluate, get_property

    shrink = SHRINK_SECONDS if args.shrink_seconds is None else args.shrink_seconds
    methods = args.methods.split(",") if args.methods else [
        m for m in registered_method_names() if m not in SKIPPED_METHODS
    ]
    properties = [get_property(p) for p in args.properties.split(",")] if args.properties else list(CATALOGUE)
    profile = settings.get_profile(args.profile)

    rows, violations, reasons = [], [], {}
    load = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    for method in methods:
        began = time.perf_counter()
        results = evaluate(mergekit_operator(method), properties, settings=profile, shrink_seconds=shrink)
        rows.append((method, results, time.perf_counter() - began))
        for result in results:
            if result.status == "violated":
                violations.append((method, result))
            elif result.status in ("n/a", "skipped"):
                reasons.setdefault((result.status, result.reason), []).append(f"{method}/{result.property}")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    names = [p.name for p in properties]
    print(f"mergekit {mergekit.__version__ if hasattr(mergekit, '__version__') else _version('mergekit')} x "
          f"{len(names)} properties, profile `{args.profile}` ({profile.max_examples} examples per cell, "
          f"derandomize={profile.derandomize}, shrinking <= {shrink:g} s per violation); "
          f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {platform.python_version()}; "
          f"CUDA {'available' if torch.cuda.is_available() else 'not available'}.\n")
    print("| method | " + " | ".join(names) + " | seconds |")
    print("|---|" + "---|" * len(names) + "---:|")
    for method, results, seconds in rows:
        print(f"| {method} | " + " | ".join(CELL[r.status] for r in results) + f" | {seconds:.1f} |")
    held = sum(r.status == "holds" for _, results, _ in rows for r in results)
    print(f"\n{held} cells hold, {len(violations)} violated. Wall time {wall:.1f} s, CPU time {cpu:.1f} s "
          f"(load average {load:.1f} on {os.cpu_count()} cores at the start); seconds per row include "
          "shrinking the violations.")
    if SKIPPED_METHODS and not args.methods:
        print("\nSkipped methods: " + "; ".join(f"{m} ({why})" for m, why in SKIPPED_METHODS.items()))

    if violations:
        print("\n### Violations (shrunk counterexamples)\n")
        for method, result in violations:
            lines = result.reason.splitlines()
            detail = lines[0].split(": ", 1)[1] if ": " in lines[0] else lines[0]
            print(f"- **{method} / {result.property}**: {detail}\n  `{lines[-1].strip()}`")
    if args.reasons and reasons:
        print("\n### Why cells are n/a or skipped\n")
        for (status, reason), cells in sorted(reasons.items()):
            print(f"- {status}: {reason}: {', '.join(cells)}")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    raise SystemExit(main())
