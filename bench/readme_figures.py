"""The figures the README and docs/family.md quote, produced from a real run on the shipped family.

    .venv/bin/python bench/readme_figures.py            # run the gate and the family table; --check
    .venv/bin/python bench/readme_figures.py --write    # ... and rewrite the generated blocks
    .venv/bin/python bench/readme_figures.py --from DIR # use a finished `mergeqa gate --out DIR`

A generated block sits between `<!-- generated: NAME -->` and `<!-- end generated -->` and is never
edited by hand:

- `gate-lines`: the per-merge lines of `mergeqa gate` (summary.md's "Verdict per merge");
- `comparison`: the run's comparison.md (every model's score per task);
- `family-table`: `mergeqa family --table` (scores, minimal pairs, probing; no build line: that
  names the machine).

Without --write it checks: exit code 1 and a diff when a file differs from the run
(tests/test_readme_figures.py does the same in CI).
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILES = (REPO / "README.md", REPO / "docs" / "family.md")
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def gate_blocks(out: Path) -> dict[str, str]:
    """The blocks a finished gate run gives: its per-merge lines and its comparison table."""
    summary = (out / "summary.md").read_text()
    lines = re.search(r"## Verdict per merge\n\n(.*?)(?:\n\n|\Z)", summary, re.S).group(1)
    merge_lines = "\n".join(ln[2:] for ln in lines.splitlines() if ln.startswith("- "))
    return {"gate-lines": f"```text\n{merge_lines}\n```\n",
            "comparison": (out / "comparison.md").read_text().strip() + "\n"}


def table_block(cache: Path | None) -> dict[str, str]:
    """The family table's block (computed and recorded in the cache if absent)."""
    from mergeqa.report.family_table import family_table, render

    text = render(family_table(cache))
    return {"family-table": "\n".join(ln for ln in text.splitlines() if not ln.startswith("family built in ")) + "\n"}


def apply(text: str, blocks: dict[str, str]) -> str:
    """`text` with each generated block it holds replaced by the run's (blocks it lacks: kept)."""
    return BLOCK.sub(lambda m: m.group(1) + blocks.get(m.group("name"), m.group("body")) + m.group(4), text)


def differences(blocks: dict[str, str], files=FILES) -> list[str]:
    """A unified diff per file whose generated blocks differ from `blocks`; [] when all agree."""
    out = []
    for path in files:
        text = path.read_text()
        new = apply(text, blocks)
        if new != text:
            out.append("".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                    f"{path.name} (as written)", f"{path.name} (from the run)")))
    return out


def names_in(files=FILES) -> set[str]:
    return {m.group("name") for path in files for m in BLOCK.finditer(path.read_text())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="a finished `mergeqa gate --out DIR`")
    parser.add_argument("--cache", type=Path, help="mergeqa cache (default: $MERGEQA_CACHE_DIR or ~/.cache/mergeqa)")
    parser.add_argument("--write", action="store_true", help="rewrite the generated blocks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.source
        if out is None:
            out = Path(tmp) / "gate"
            cache = ["--cache", str(args.cache)] if args.cache else []
            proc = subprocess.run([sys.executable, "-c", "import sys; from mergeqa.cli import main; sys.exit(main())",
                                   "gate", "--out", str(out), *cache, "-q"], cwd=REPO, check=False,
                                  capture_output=True, text=True)
            if not (out / "summary.md").is_file():
                print(proc.stdout[-5000:] + proc.stderr[-5000:], file=sys.stderr)
                print(f"mergeqa gate wrote no summary.md (exit {proc.returncode})", file=sys.stderr)
                return 2
        blocks = {**gate_blocks(out), **table_block(args.cache)}
    missing = names_in() - set(blocks)
    if missing:
        print(f"no block for: {', '.join(sorted(missing))}", file=sys.stderr)
        return 2
    if args.write:
        for path in FILES:
            path.write_text(apply(path.read_text(), blocks))
        print(f"wrote {', '.join(sorted(names_in()))} into {', '.join(p.name for p in FILES)}")
        return 0
    diffs = differences(blocks)
    print("\n".join(diffs) if diffs else "README.md and docs/family.md agree with the run")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
