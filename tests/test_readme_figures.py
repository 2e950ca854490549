"""The README and docs/family.md quote a real run on the shipped family: their generated blocks
are what `bench/readme_figures.py` writes from `mergeqa gate` and `mergeqa family --table`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _figures():
    spec = importlib.util.spec_from_file_location("readme_figures", REPO / "bench" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_generated_block_is_replaced_and_the_text_around_it_kept(tmp_path):
    figures = _figures()
    text = ("intro\n<!-- generated: gate-lines -->\nold lines\n<!-- end generated -->\nmiddle\n"
            "<!-- generated: other -->\nkept\n<!-- end generated -->\n")
    new = figures.apply(text, {"gate-lines": "```text\nties: deployable\n```\n"})
    assert new == ("intro\n<!-- generated: gate-lines -->\n```text\nties: deployable\n```\n<!-- end generated -->\n"
                   "middle\n<!-- generated: other -->\nkept\n<!-- end generated -->\n")
    page = tmp_path / "page.md"
    page.write_text(text)
    [diff] = figures.differences({"gate-lines": "new\n"}, files=(page,))
    assert "-old lines" in diff and "+new" in diff
    assert figures.differences({"gate-lines": "old lines\n"}, files=(page,)) == []


def test_the_docs_hold_the_generated_blocks_filled():
    figures = _figures()
    assert figures.names_in() == {"gate-lines", "comparison", "family-table"}
    for path in figures.FILES:
        for m in figures.BLOCK.finditer(path.read_text()):
            assert m.group("body").strip(), f"{path.name}: block {m.group('name')} is empty (run bench/readme_figures.py --write)"


@pytest.mark.slow
def test_the_readme_quotes_the_gate_and_the_family_table(family, cache_dir, tmp_path):
    """A real `mergeqa gate` on the shipped family (the suite's cache: results other tests computed
    are reused) and the family's table: the README's and docs/family.md's blocks are the same."""
    figures = _figures()
    out = tmp_path / "gate"
    proc = subprocess.run([sys.executable, "-c", "import sys; from mergeqa.cli import main; sys.exit(main())",
                           "gate", "--out", str(out), "--cache", str(cache_dir), "-q"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the demo has failing merges
    blocks = {**figures.gate_blocks(out), **figures.table_block(cache_dir)}
    diffs = figures.differences(blocks)
    assert not diffs, "\n".join(diffs) + "\nthe docs differ from the run: .venv/bin/python bench/readme_figures.py --write"
