"""The operator kit's findings on mergekit, and the checks too heavy for CI.

    .venv/bin/python bench/operator_table.py                       # findings table, realistic first
    .venv/bin/python bench/operator_table.py --reproductions       # ... plus pasteable mergekit code
    .venv/bin/python bench/operator_table.py --full-size           # the size-sensitive triggers at size, searched
    .venv/bin/python bench/operator_table.py --stability           # DARE/DELLA bias on 10 seed windows
    .venv/bin/python bench/operator_table.py --search --profile mergeqa-thorough --methods ties,slerp

The findings table is ``mergeqa.operators.findings.KNOWN``, each entry replayed here (a finding
that no longer reproduces is marked STALE). ``--search`` searches every cell afresh (nothing is
read from KNOWN) and prints method x property per regime.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergeqa.operators import PROFILES, register_profiles  # noqa: E402

CELL = {"holds": "holds", "violated": "**violated**", "n/a": "n/a", "skipped": "skipped"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reproductions", action="store_true", help="print each finding's mergekit reproduction")
    parser.add_argument("--full-size", action="store_true",
                        help="replay the size-sensitive realistic triggers at real size, then search")
    parser.add_argument("--stability", action="store_true", help="DARE/DELLA unbiasedness on 10 disjoint seed windows")
    parser.add_argument("--variants", type=int, default=10, metavar="N",
                        help="reseeded variants replayed per random finding (default: %(default)s)")
    parser.add_argument("--windows", type=int, default=10, metavar="N",
                        help="seed windows for --stability (default: %(default)s)")
    parser.add_argument("--search", action="store_true", help="search every method x property x regime afresh")
    parser.add_argument("--profile", default="mergeqa-default", choices=sorted(PROFILES),
                        help="hypothesis settings profile for --search (default: %(default)s)")
    parser.add_argument("--methods", metavar="A,B", help="comma-separated mergekit methods for --search (default: all)")
    parser.add_argument("--properties", metavar="P,Q", help="comma-separated properties for --search (default: all)")
    parser.add_argument("--shrink-seconds", type=float, default=None, metavar="S",
                        help="shrinking budget per violated cell (default: the kit's, 10 s)")
    return parser.parse_args(argv)


def _environment() -> str:
    from importlib.metadata import version

    import torch

    return (f"mergekit {version('mergekit')}, torch {torch.__version__}, python {platform.python_version()}, "
            f"{os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f}), "
            f"CUDA {'available' if torch.cuda.is_available() else 'not available'}")


def _violates(known: Any, example: dict[str, Any]) -> bool:
    from mergeqa.operators.catalogue import get_property
    from mergeqa.operators.description import PropertyViolation
    from mergeqa.operators.mergekit_adapter import mergekit_operator

    try:
        get_property(known.property).check(mergekit_operator(known.method), **example)
    except PropertyViolation:
        return True
    return False


def findings_table(reproductions: bool, variants: int) -> None:
    from mergeqa.operators.findings import KNOWN, reproduction, reseeded

    print(f"Replay: the finding's own example; reseeded: {variants} other random draws (realistic: other "
          "data seeds of the recipe; DARE/DELLA: other seed windows), deterministic degenerate ones need none.\n")
    print("| # | method | property | regime | root cause | report upstream | replay | reseeded | in CI |")
    print("|---:|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for number, known in enumerate(KNOWN, 1):
        began = time.perf_counter()
        status = "violated" if _violates(known, known.example) else "STALE: holds now"
        random = known.regime == "realistic" or known.method.startswith(("dare", "della"))
        robust = (f"{sum(_violates(known, reseeded(known, s)) for s in range(1, variants + 1))}/{variants} violated"
                  if random else "deterministic")
        seconds = time.perf_counter() - began
        upstream = f"yes: {known.upstream}" if known.upstream else "no"
        kept = "non-strict xfail" if known.stream_dependent else "strict xfail"
        print(f"| {number} | {known.method} | {known.property} | {known.regime} | {known.root} | {upstream} | "
              f"{status} | {robust} ({seconds:.1f} s) | {kept} |", flush=True)
    print()
    for regime in ("realistic", "degenerate"):
        found = [k for k in KNOWN if k.regime == regime]
        roots = Counter(k.root for k in found)
        print(f"- {regime}: {len(found)} findings, {len(roots)} root causes, "
              f"{sum(bool(k.upstream) for k in found)} worth reporting upstream, "
              f"{sum(not k.stream_dependent for k in found)} strict xfails")
    print(f"\nReplayed {len(KNOWN)} findings in {time.perf_counter() - start:.1f} s.")
    print("\n### Causes\n")
    for number, known in enumerate(KNOWN, 1):
        print(f"{number}. **{known.method} / {known.property} [{known.regime}]**: {known.reason}")
    if reproductions:
        print("\n### Reproductions (torch + mergekit only)\n")
        for number, known in enumerate(KNOWN, 1):
            print(f"{number}. {known.id}\n\n```python\n{reproduction(known)}```\n")


def full_size(shrink: float) -> None:
    """The size-sensitive realistic findings (fp16_finite, low_precision_agrees) replayed on their
    triggers at real size (``ROOT_CAUSES[...].at_scale``: SFT/CPT deltas on real shapes, the same
    cases bench/operator_findings.py verifies), then searched for by the kit's realistic regime
    under the thorough profile (2**21 entries) and shrunk."""
    import torch
    from hypothesis import settings

    from mergeqa.operators.description import PropertyViolation
    from mergeqa.operators.findings import ROOT_CAUSES, UnrelatedFailure
    from mergeqa.operators.mergekit_adapter import mergekit_operator
    from mergeqa.operators.runner import run_property

    heavy = [r for r in ROOT_CAUSES if r.at_scale is not None
             and r.at_scale.property in ("fp16_finite", "low_precision_agrees")]
    print("### Replayed at full size (the realistic triggers)\n")
    for root in heavy:
        at = root.at_scale
        inputs = at.example()["inputs"]
        anchor = inputs.base.float() if inputs.base is not None else 0
        offsets = [float((m.float() - anchor).norm()) for m in inputs.models]
        l1 = float((inputs.models[0].double() - (inputs.base.double() if inputs.base is not None else 0)).abs().sum())
        del inputs
        began = time.perf_counter()
        try:
            violation = at.replay(mergekit_operator(at.method))
            verdict = "STALE: holds" if violation is None else f"violated: {violation}"
        except UnrelatedFailure as error:
            verdict = f"WRONG FAILURE: {error}"
        print(f"- **{root.key}: {at.method} / {at.property}** on `{at.recipe!r}` ({at.recipe.entries} entries; "
              f"offset norms {', '.join(f'{o:.3g}' for o in offsets)}; |delta|_1 {l1:.3g}): {verdict} "
              f"({time.perf_counter() - began:.1f} s)")
    print("\n### Found by search (realistic regime, profile mergeqa-thorough, shrunk)\n")
    register_profiles(load="mergeqa-thorough")
    profile = settings.get_profile("mergeqa-thorough")
    for method, prop in (("ties", "fp16_finite"), ("model_stock", "fp16_finite"),
                         ("model_stock", "low_precision_agrees")):
        began = time.perf_counter()
        torch.manual_seed(0)
        try:
            passed = run_property(prop, mergekit_operator(method), "realistic", profile, shrink_seconds=shrink)
            print(f"- {method} / {prop}: not found in {passed} examples ({time.perf_counter() - began:.0f} s)")
        except PropertyViolation as violation:
            print(f"- {method} / {prop} ({time.perf_counter() - began:.0f} s):\n\n```\n{violation}\n```")


def stability(windows: int) -> None:
    """Unbiasedness of DARE and DELLA by size, on ``windows`` disjoint seed windows."""
    from mergeqa.operators.catalogue import estimate_bias
    from mergeqa.operators.inputs import MergeInputs, RealisticInputs
    from mergeqa.operators.mergekit_adapter import mergekit_operator

    params = {"density": [0.5], "weight": [1.0]}
    sizes = {
        "2 entries [1, 1]": MergeInputs.of(models=[[1.0, 1.0]], base=[0.0, 0.0], params=params),
        "16 entries": RealisticInputs(shape=(16,), params=params).build(),
        "256 entries": RealisticInputs(shape=(256,), params=params).build(),
        "4096 entries": RealisticInputs(shape=(4096,), params=params).build(),
        "65536 entries": RealisticInputs(shape=(256, 256), params=params).build(),
    }
    print(f"Density 0.5, weight 1; effect bound 5%, z bound 6; windows of seeds w * 10**6 .. (w = 0..{windows - 1}).\n")
    print("| method | inputs | E[merged tv] / tv by class, window 0 (smallest first) | max abs z, window 0 | "
          "draws per window | detectable bias (worst unflagged window) | verdicts over windows |")
    print("|---|---|---|---:|---|---:|---|")
    start = time.perf_counter()
    for method in ("dare_ties", "dare_linear", "della", "della_linear"):
        operator = mergekit_operator(method)
        for label, inputs in sizes.items():
            estimates = [estimate_bias(operator, inputs.with_seed(w * 10**6)) for w in range(windows)]
            first = estimates[0]
            ratios = ", ".join(f"{r:.3f}" for r in first.ratios)
            verdicts = Counter(e.verdict for e in estimates)
            draws = sorted({e.draws for e in estimates})
            unflagged = [e.detectable for e in estimates if not e.biased]
            detectable = f"{max(unflagged):.1%}" if unflagged else "-"
            print(f"| {method} | {label} | {ratios} | {max(abs(z) for z in first.z):.1f} | "
                  f"{draws[0]}..{draws[-1]} | {detectable} | "
                  f"{', '.join(f'{n} {v}' for v, n in verdicts.items())} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s.")


def search(args: argparse.Namespace) -> None:
    from hypothesis import settings

    from mergeqa.operators.catalogue import CATALOGUE, get_property
    from mergeqa.operators.inputs import REGIMES
    from mergeqa.operators.mergekit_adapter import SKIPPED_METHODS, mergekit_operator, registered_method_names
    from mergeqa.operators.runner import SHRINK_SECONDS, evaluate

    register_profiles(load=args.profile)
    shrink = SHRINK_SECONDS if args.shrink_seconds is None else args.shrink_seconds
    methods = args.methods.split(",") if args.methods else [
        m for m in registered_method_names() if m not in SKIPPED_METHODS]
    properties = [get_property(p) for p in args.properties.split(",")] if args.properties else list(CATALOGUE)
    profile = settings.get_profile(args.profile)
    rows, violations = [], []
    start, cpu_start = time.perf_counter(), time.process_time()
    for method in methods:
        began = time.perf_counter()
        results = evaluate(mergekit_operator(method), properties, settings=profile, shrink_seconds=shrink)
        rows.append((method, {(r.property, r.regime): r for r in results}, time.perf_counter() - began))
        violations += [(method, r) for r in results if r.status == "violated"]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    names = [p.name for p in properties]
    print(f"Profile `{args.profile}` ({profile.max_examples} examples per cell, derandomize={profile.derandomize}, "
          f"shrinking <= {shrink:g} s per violation).\n")
    for regime in REGIMES:
        print(f"#### {regime} inputs\n")
        print("| method | " + " | ".join(names) + " | seconds (both regimes) |")
        print("|---|" + "---|" * len(names) + "---:|")
        for method, cells, seconds in rows:
            print(f"| {method} | " + " | ".join(CELL[cells[(n, regime)].status] if (n, regime) in cells else "-"
                                              for n in names) + f" | {seconds:.1f} |")
        print()
    counts = Counter((r.regime, r.status) for _, cells, _ in rows for r in cells.values())
    print(", ".join(f"{regime} {status}: {n}" for (regime, status), n in sorted(counts.items())))
    print(f"Wall time {wall:.1f} s, CPU time {cpu:.1f} s.")
    if violations:
        print("\n### Violations (shrunk counterexamples), realistic first\n")
        for method, result in sorted(violations, key=lambda v: REGIMES.index(v[1].regime)):
            lines = result.reason.splitlines()
            detail = lines[0].split(": ", 1)[1] if ": " in lines[0] else lines[0]
            print(f"- **{method} / {result.property} [{result.regime}]**: {detail}\n  `{lines[-1].strip()}`")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    register_profiles(load="mergeqa-default")
    from mergeqa.operators.runner import SHRINK_SECONDS

    print(f"{_environment()}.\n")
    if args.search:
        search(args)
        return 0
    if args.full_size:
        full_size(SHRINK_SECONDS if args.shrink_seconds is None else args.shrink_seconds)
        return 0
    if args.stability:
        stability(args.windows)
        return 0
    findings_table(args.reproductions, args.variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
