"""The findings table, one row per root cause: finding -> cause -> realistic trigger -> mergekit's
behaviour against its documented contract; each realistic trigger replayed on mergekit at its real
size (up to a 32000x4096 embedding matrix, 131M entries, on CPU).

    .venv/bin/python bench/operator_findings.py            # about 3 minutes on one core
    .venv/bin/python bench/operator_findings.py --no-replay

The table is ``mergeqa.operators.findings.ROOT_CAUSES``; ``cells`` counts the (method, property,
regime) cells of KNOWN where each shows (CI replays those). bench/operator_table.py prints the cells.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def replay(root) -> str:
    from mergeqa.operators.findings import UnrelatedFailure
    from mergeqa.operators.mergekit_adapter import mergekit_operator

    at = root.at_scale
    began = time.perf_counter()
    try:
        violation = at.replay(mergekit_operator(at.method))
        verdict = "STALE: holds" if violation is None else "violated: " + str(violation).splitlines()[0][:110]
    except UnrelatedFailure as error:
        verdict = "WRONG FAILURE: " + str(error).splitlines()[0][:200]
    return (f"{at.method}/{at.property} on `{at.recipe!r}` ({at.recipe.entries / 1e6:.3g}M entries): "
            f"{verdict} ({time.perf_counter() - began:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-replay", action="store_true", help="print the table without running mergekit")
    args = parser.parse_args(argv)
    import torch

    from mergeqa.operators.findings import ROOT_CAUSES, cells

    torch.set_num_threads(1)
    print("| # | finding (label) | root cause | realistic trigger (delta scale, size) | mergekit vs documented "
          "contract | cells | verified at size |")
    print("|---:|---|---|---|---|---:|---|")
    start = time.perf_counter()
    for number, root in enumerate(ROOT_CAUSES, 1):
        verified = "-" if root.at_scale is None else ("not run" if args.no_replay else replay(root))
        row = [root.key + f" ({root.label})", root.cause, root.trigger, root.behaviour, str(len(cells(root.key))),
               verified]
        print(f"| {number} | " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |", flush=True)
    labels = [r.label for r in ROOT_CAUSES]
    print(f"\n{len(ROOT_CAUSES)} findings (root causes): {labels.count('realistic')} realistic, "
          f"{labels.count('degenerate')} degenerate; {time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
