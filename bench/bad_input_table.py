"""Every kind of bad input the gate refuses, and the one line each prints (exit code 4).

    .venv/bin/python bench/bad_input_table.py

Runs `pytest --gate --collect-only` (or `--model`) in a scratch directory per case; needs no
model family (the pickle and path cases make their own directories).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

CASES = [
    ("alpha = 2", "[statistics]\nalpha = 2\n"),
    ("power = 0", "[statistics]\npower = 0\n"),
    ("min_retention = nan", "[retention]\nmin_retention = nan\n"),
    ("min_retention = 1.5", "[retention]\nmin_retention = 1.5\n"),
    ("inconclusive = xfail", '[statistics]\ninconclusive = "xfail"\n'),
    ("empty suite", "[suites.mine]\ntasks = []\n"),
    ("capability naming no parent", '[retention.capabilities]\nfamily_lists = "list"\n'),
    ("unknown section", "[retension]\nsuite = 'family'\n"),
    ("typo in a key", "[retention]\nmin_retension = 0.9\n"),
    ("seeds = 2.5", "[probing]\nseeds = 2.5\n"),
]


class _Bomb:
    def __reduce__(self):
        return (print, ("unpickled!",))


def run(args, cwd) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, (lines[-1] if lines else proc.stdout.strip().splitlines()[-1])


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, toml in CASES:
            (tmp / "thresholds.toml").write_text(toml)
            code, line = run(["--gate", "--thresholds", "thresholds.toml", "--collect-only", "-q"], tmp)
            rows.append((f"thresholds.toml: {name}", code, line))
        pickled = tmp / "pickled"
        pickled.mkdir()
        (pickled / "config.json").write_text('{"model_type": "llama"}')
        (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(_Bomb()))
        rows.append(("pickle-only checkpoint", *run(["--model", str(pickled), "--collect-only", "-q"], tmp)))
        rows.append(("missing --model directory", *run(["--model", str(tmp / "nope"), "--collect-only", "-q"], tmp)))
    print("| bad input | exit | the line it prints |\n|---|---:|---|")
    for name, code, line in rows:
        print(f"| {name} | {code} | {line.replace('|', '/')} |")
    return 0 if all(code == 4 for _, code, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
