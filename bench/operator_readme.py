"""docs/operators.md's example as a method author runs it: the block copied into a fresh
directory (no conftest, nothing else), run with pytest under each profile, as written (a correct
operator: 0 findings) and with a planted bug (the weights not normalised: found).

    .venv/bin/python bench/operator_readme.py [--profiles mergeqa-default mergeqa-thorough]

tests/test_operator_kit.py runs the default profile and checks that the thorough one loads.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORRECT = "return (total / sum(weight)).to(models[0].dtype)"
PLANTED = "return total.to(models[0].dtype)"  # forgets to divide by the weights' sum


def docs_example() -> str:
    text = (REPO / "docs" / "operators.md").read_text()
    block = re.search(r"```python\n(# tests/test_my_merge\.py\n.*?)```", text, re.S)
    if block is None or CORRECT not in block.group(1):
        raise SystemExit("docs/operators.md: the test_my_merge.py example is gone or changed; update this script")
    return block.group(1)


def run_example(source: str, profile: str | None, *extra: str) -> tuple[int, str, float]:
    """(exit code, output, seconds) of pytest on `source` as tests/test_my_merge.py in a fresh directory."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tests").mkdir()
        (Path(tmp) / "tests" / "test_my_merge.py").write_text(source)
        args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *extra]
        if profile:
            args.append(f"--hypothesis-profile={profile}")
        started = time.perf_counter()
        proc = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=1800, check=False)
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["mergeqa-default", "mergeqa-thorough"])
    args = parser.parse_args()
    source, ok = docs_example(), True
    print("| profile | operator | exit | findings | seconds |\n|---|---|---:|---|---:|")
    for profile in args.profiles:
        for name, code in (("as written", source), ("planted bug", source.replace(CORRECT, PLANTED))):
            rc, out, seconds = run_example(code, profile)
            found = re.search(r"violates (\d+) of (\d+) property checks", out)
            findings = f"{found.group(1)} of {found.group(2)} checks" if found else "0"
            print(f"| {profile} | {name} | {rc} | {findings} | {seconds:.0f} |")
            ok &= (rc == 0 and not found) if name == "as written" else (rc == 1 and bool(found))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
