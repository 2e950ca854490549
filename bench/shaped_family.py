"""Write a family of a given model shape for the GPU checks: a random-weight base (seeded) and two
parents, `arithmetic` and `lists`, each the base plus 1 % noise (as shared/gpu/h100-baseline.md
measured), with the tiny family's tokenizer, and the embedded merge configs pointed at them.

    python bench/shaped_family.py --shape qwen2.5-0.5b --out /tmp/fam05b --dtype bfloat16
    pytest --merge-config /tmp/fam05b/configs/*.yaml --parents /tmp/fam05b/arithmetic \
        /tmp/fam05b/lists --base /tmp/fam05b/base --device cuda

Random weights score near chance: the gate's verdicts on it mean nothing, its wall time does.
`--shape tiny-qwen2` writes the same on CPU in seconds (what checks this script without a GPU).
"""

from __future__ import annotations

import argparse
import shutil
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergeqa.evaluate import synthetic_mc as smc  # noqa: E402
from mergeqa.models.refs import TOKENIZER_FILES  # noqa: E402
from mergeqa.models.session import DEFAULT_MERGES_DIR  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(smc.MODEL_SHAPES))
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--noise", type=float, default=0.01, help="parent = base + noise x N(0, std of each tensor)")
    args = p.parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from mergeqa.core.cache import default_cache_dir
    from mergeqa.models.shipped_family import shipped_family

    started = time.perf_counter()
    family = shipped_family(default_cache_dir())
    out = Path(args.out)
    tok_files = [f for f in (family.base / n for n in TOKENIZER_FILES) if f.is_file()]
    vocab = len(AutoTokenizer.from_pretrained(str(family.base)))
    base = smc.build_model(args.shape, vocab, seed=0, dtype=getattr(torch, args.dtype))
    names = {"base": 0, "arithmetic": 1, "lists": 2}
    for name, seed in names.items():
        model = base
        if seed:
            gen = torch.Generator().manual_seed(seed)
            model = smc.build_model(args.shape, vocab, seed=0, dtype=getattr(torch, args.dtype))
            with torch.no_grad():
                for t in model.parameters():
                    t.add_(args.noise * t.float().std() * torch.randn(t.shape, generator=gen).to(t.dtype))
        model.save_pretrained(out / name)
        for f in tok_files:
            shutil.copy(f, out / name / f.name)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    subs = {n: str((out / n).resolve()) for n in names}
    for config in sorted(DEFAULT_MERGES_DIR.glob("*.yaml")):
        text = string.Template(config.read_text()).safe_substitute(subs)
        (out / "configs" / config.name).write_text(text.replace("dtype: float32", f"dtype: {args.dtype}"))
    params = sum(t.numel() for t in base.parameters())
    print(f"{args.shape}: {params / 1e6:.1f} M parameters x 3 models in {args.dtype} -> {out} "
          f"({time.perf_counter() - started:.1f} s); merge configs in {out / 'configs'}")


if __name__ == "__main__":
    main()
