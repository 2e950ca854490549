"""mergekit's own example configs, pointed at the embedded family, through the gate: each one is
either gated (every merge with its own parents, both endpoints of a slerp among them) or refused
in one line with exit code 4.

    .venv/bin/python bench/mergekit_examples.py [--eval-limit N]

The examples are mergekit's examples/ties.yml (merge_method ranked_ties, which this mergekit lacks;
then the same with ties), gradient-slerp.yml (`pattern:`, the older spelling of `filter:`),
orcamini-platy-44layer.yml (layers [0, 24) and [20, 40): as written, and scaled to the family's 4
layers) and mega.yml (a gradient slerp, then a ties of that merge and the math model over the base:
two documents, the second naming the first). Hub ids become the family's directories: the math
model is `arithmetic`, the other `lists`, Llama-2 the family's `base`. The gated ones run in one
pytest process with the repository's thresholds.toml (the family's suite) and --eval-limit (100 by
default: the verdicts are the gate's, on fewer items; this shows which merge is compared with what).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TIES = """\
models:
  - model: {arithmetic} # Best
    parameters:
      density: [0.8, 0.3, 0.1]
      weight: [1.0, 0.8, 0.5]
  - model: {lists} #Middle
    parameters:
      density: [0.1, 0.4, 0.1]
      weight: [0.2, 0.8, 0.1]
merge_method: {method}
base_model: {base}
parameters:
  normalize: true
dtype: float32
"""

GRADIENT_SLERP = """\
slices:
  - sources:
      - model: {arithmetic}
        layer_range: [0, 4]
      - model: {lists}
        layer_range: [0, 4]
merge_method: slerp
base_model: {arithmetic}
parameters:
  t:
    - pattern: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - pattern: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
"""

PASSTHROUGH = """\
slices:
  - sources:
    - model: {arithmetic}
      layer_range: {first}
  - sources:
    - model: {lists}
      layer_range: {second}
merge_method: passthrough
dtype: float32
"""

MEGA = """\
slices:
  - sources:
      - model: {arithmetic}
        layer_range: [0, 4]
      - model: {lists}
        layer_range: [0, 4]
merge_method: slerp
base_model: {arithmetic}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float32
out_path: ./models/gradient-slerp
---
models:
  - model: ./models/gradient-slerp
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: {arithmetic}
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: {base}
parameters:
  normalize: true
  int8_mask: true
dtype: float32
out_path: ./models/gradient-slerp-ties
"""

REFUSED = [
    ("ties.yml", "examples/ties.yml as written (ranked_ties)", TIES, {"method": "ranked_ties"}),
    ("passthrough-44.yml", "orcamini-platy-44layer.yml as written ([0, 24], [20, 40])", PASSTHROUGH,
     {"first": [0, 24], "second": [20, 40]}),
]
GATED = [
    ("ties.yml", "examples/ties.yml with merge_method ties", TIES, {"method": "ties"}),
    ("gradient-slerp.yml", "gradient-slerp.yml (pattern:)", GRADIENT_SLERP, {}),
    ("passthrough.yml", "orcamini-platy-44layer.yml scaled to 4 layers ([0, 3], [1, 4])", PASSTHROUGH,
     {"first": [0, 3], "second": [1, 4]}),
    ("mega.yml", "mega.yml (mergekit-mega: two documents, out_path)", MEGA, {}),
]


def pytest(args, cwd) -> tuple[int, str, str, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-limit", type=int, default=100)
    args = parser.parse_args()
    from mergeqa.models.shipped_family import shipped_family

    family = shipped_family()  # what the gate uses: the weights that ship with mergeqa
    paths = {"base": family.base, **family.parents}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("| config | exit | wall | the line |\n|---|---|---|---|")
        for file, what, text, extra in REFUSED:
            (tmp / file).write_text(text.format(**paths, **extra))
            code, _, err, seconds = pytest(["--merge-config", file, "--collect-only", "-q"], tmp)
            line = err.strip().splitlines()[-1] if err.strip() else "(nothing on stderr)"
            print(f"| {what} | {code} | {seconds:.1f} s | {line.replace(str(tmp) + '/', '')} |")
        files = []
        for file, _, text, extra in GATED:
            (tmp / file).write_text(text.format(**paths, **extra))
            files.append(file)
        junit = tmp / "junit.xml"
        code, out, err, seconds = pytest(["--merge-config", *files, "--thresholds", str(REPO / "thresholds.toml"),
                                          "--eval-limit", str(args.eval_limit), "-n", "2", f"--junitxml={junit}",
                                          "--report-dir", str(tmp / "report"), "-q"], tmp)
        props = {p.get("name"): p.get("value") for p in ET.parse(junit).iter("property")} if junit.exists() else {}
        lines = {m.group(1): m.group(0) for m in re.finditer(r"^(\S+): (?:deployable|NOT deployable|interrupted).*$",
                                                              out, re.M)}
        print(f"\nGated in one run ({', '.join(files)}; --eval-limit {args.eval_limit}, -n 2): exit {code}, "
              f"{seconds:.0f} s\n")
        print("| merge | from | parents | the line |\n|---|---|---|---|")
        for name in [k.split(".")[3] for k in props if re.fullmatch(r"mergeqa\.run\.merge\.[^.]+\.verdict", k)]:
            origin = props.get(f"mergeqa.run.merged.{name}.merge_config", "?").replace(str(tmp) + "/", "")
            print(f"| {name} | {origin} | {props.get(f'mergeqa.run.merge.{name}.parents')} | "
                  f"{lines.get(name, '?')} |")
        summary = tmp / "report" / "summary.md"
        print(f"\nsummary.md: {summary.read_text().splitlines()[0] if summary.exists() else '(none)'}")
        warned = sorted({w.strip() for w in re.findall(r"MergeConfigWarning: (.*)", out + err)})
        for w in warned:
            print(f"warning: {w.replace(str(tmp) + '/', '')}")
        if code not in (0, 1):
            print(out[-3000:], err[-3000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
