"""The findings table, one row per root cause: finding -> cause -> realistic trigger -> mergekit's
behaviour against its documented contract; each realistic trigger replayed on mergekit at its real
size (up to a 32000x4096 embedding matrix, 131M entries, on CPU).

    .venv/bin/python bench/operator_findings.py            # about 2 minutes on one core
    .venv/bin/python bench/operator_findings.py --no-replay
    .venv/bin/python bench/operator_findings.py --write    # rewrite docs/operators.md's table

The table is ``mergeqa.operators.findings.table()`` (the registry ``ROOT_CAUSES``; ``cells``
counts the (method, property, regime) cells of KNOWN where each shows, which CI replays). Its
static columns are docs/operators.md's generated block ``operator-findings`` (``--write``
rewrites it; tests/test_operator_kit.py checks it without running mergekit); the "verified at
size" column is this bench's output only. bench/operator_table.py prints the cells.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DOC = REPO / "docs" / "operators.md"
BLOCK_NAME = "operator-findings"


def blocks():
    """bench/readme_figures.py's generated-block helpers (``apply``, ``differences``)."""
    spec = importlib.util.spec_from_file_location("readme_figures", REPO / "bench" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    parser.add_argument("--write", action="store_true",
                        help=f"rewrite the generated block {BLOCK_NAME!r} of docs/operators.md and exit")
    args = parser.parse_args(argv)
    from mergeqa.operators.findings import ROOT_CAUSES, TABLE_COLUMNS, table, table_rows

    if args.write:
        figures = blocks()
        DOC.write_text(figures.apply(DOC.read_text(), {BLOCK_NAME: table()}))
        print(f"wrote {BLOCK_NAME} into {DOC.relative_to(REPO)}")
        return 0
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = []
    for root, row in zip(ROOT_CAUSES, table_rows()):
        verified = "-" if root.at_scale is None else ("not run" if args.no_replay else replay(root))
        rows.append([*row, verified])
        print(f"{row[0]:>3} {root.key}: {verified}", file=sys.stderr, flush=True)
    print(table(rows, (*TABLE_COLUMNS, "verified at size")).rstrip("\n") + f" {time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
