"""Inference cost of the embedded family: the parents, the five default merges and a depth
up-scaled passthrough merge (6 layers from the parents' 4), measured together on the sanity
prompts; then each merge's cost verdicts as the gate decides them with [cost] defaults.

    .venv/bin/python bench/cost_table.py [--repeats N] [--new-tokens N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

UPSCALED = """merge_method: passthrough
slices:
  - sources:
      - model: ${arithmetic}
        layer_range: [0, 4]
  - sources:
      - model: ${lists}
        layer_range: [2, 4]
dtype: float32
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.decision.thresholds import DEFAULTS
    from mergeqa.models.shipped_family import shipped_family
    from mergeqa.inspect import sanity
    from mergeqa.inspect.cost import measure_costs, size_verdicts, speed_verdicts
    from mergeqa.models.merging import build_merge
    from mergeqa.models.refs import ModelRef
    from mergeqa.models.session import DEFAULT_MERGES_DIR
    from mergeqa.report.html import cost_table

    cache = default_cache_dir()
    family = shipped_family(cache)
    subs = {"base": str(family.base), **{k: str(v) for k, v in family.parents.items()}}
    parents = [ModelRef(n, p, "parent") for n, p in family.parents.items()]
    configs = sorted(DEFAULT_MERGES_DIR.glob("*.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        up = Path(tmp) / "upscaled_passthrough.yaml"
        up.write_text(UPSCALED)
        configs.append(up)
        merges = [ModelRef(c.stem, build_merge(c, cache, substitutions=subs), "merged") for c in configs]
    prompts = sanity.parse_prompts(DEFAULTS["sanity"]["prompts"])
    rows = {m.model: m for m in measure_costs(parents + merges, prompts, device="cpu", dtype="float32",
                                              new_tokens=args.new_tokens, repeats=args.repeats)}
    header, body = cost_table({n: m.to_dict() for n, m in rows.items()}, lambda n: rows[n].role)
    strip = lambda c: c.replace("<small>", "").replace("</small>", "")  # noqa: E731
    print("| " + " | ".join(header) + " |\n|---|" + "---:|" * (len(header) - 1))
    for r in body:
        print("| " + " | ".join(strip(c) for c in r) + " |")
    limits = DEFAULTS["cost"]
    print()
    for m in merges:
        measured, refs = rows[m.name], [rows[p.name] for p in parents]
        verdicts = size_verdicts(measured, refs, max_size_ratio=limits["max_size_ratio"],
                                 max_memory_ratio=limits["max_memory_ratio"]) + \
            speed_verdicts(measured, refs, min_speed_ratio=limits["min_speed_ratio"],
                           max_latency_ratio=limits["max_latency_ratio"])
        print(f"{m.name}:")
        for v in verdicts:
            print(f"  {v.headline()}")
        for d in verdicts[0].details:
            print(f"  note: {d}")


if __name__ == "__main__":
    main()
