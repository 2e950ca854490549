"""The known-bad table and the lint's wall time.

    .venv/bin/python bench/known_bad_table.py                       # table + lint time, tiny family
    .venv/bin/python bench/known_bad_table.py --shape qwen2.5-0.5b  # + lint time on a 0.5B-shaped checkpoint

Derives the known-bad variants (mergeqa.models.badmerges) from the tiny family's ties merge, runs the gate
on them exactly as a user would (pytest over the lint and sanity checks, one run, junit XML) and
prints: variant -> the check that had to fail -> the first line of its message, and every other
check that failed. Then times `lint_checkpoint` (the ties merge vs its sources, base and two
parents, as its mergekit_config.yml maps them; no forward pass): cold = nothing cached (sources
read too), warm = the sources' statistics already in memory (a second merge in the same session). `--shape qwen2.5-0.5b` writes random bf16 Qwen2-0.5B-shaped
safetensors (merged + 2 parents, ~1 GB each) to a temporary directory and times the lint there,
with the files evicted from the page cache (cold disk) and again with them cached.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QWEN2_05B = {  # Qwen/Qwen2.5-0.5B config.json, the fields the shapes depend on
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
    "bos_token_id": 151643, "eos_token_id": 151643, "dtype": "bfloat16", "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
}
QWEN2_TOKENS, QWEN2_ADDED = 151643, 22  # regular + added tokens of the Qwen2.5 tokenizer


# -- the table -----------------------------------------------------------------------------------
def gate_table(cache_dir: Path, work: Path) -> str:
    from mergeqa.models.badmerges import from_family, gate_argv

    healthy, variants = from_family(cache_dir, work)
    xml = work / "gate.xml"
    started = time.perf_counter()
    subprocess.run(gate_argv([healthy, *(v.path for v in variants.values())], cache_dir, xml), cwd=work,
                   capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    cases = list(ET.parse(xml).getroot().iter("testcase"))

    def check_of(case) -> str:
        props = [p.get("name") for p in case.iter("property")]
        return ".".join(props[0].split(".")[1:3]) if props else case.get("name")

    def model_of(case) -> str:  # test_lint[nan_tensor-finite], test_generates[nan_tensor]
        return case.get("name").split("[", 1)[1].rstrip("]").split("-", 1)[0]

    rows = ["| variant | check that must fail | its message, first line | other checks that failed |",
            "|---|---|---|---|"]
    for name in ["healthy", *variants]:
        mine = [c for c in cases if model_of(c) == name]
        failed = {check_of(c): c.find("failure").text.splitlines()[0] for c in mine if c.find("failure") is not None}
        errors = [check_of(c) for c in mine if c.find("error") is not None]
        if name == "healthy":
            verdict = "all pass" if not failed and not errors else "FAILED: " + ", ".join([*failed, *errors])
            rows.append(f"| healthy (ties) | none ({len(mine)} checks) | {verdict} | |")
            continue
        v = variants[name]
        first = failed.pop(v.check, "**did not fail**")
        rows.append(f"| {name} | {v.check} | {first} | {', '.join(failed) or '-'}"
                    + (f"; errors: {', '.join(errors)}" if errors else "") + " |")
    return "\n".join(rows) + f"\n\n(gate run over {len(variants) + 1} models, {len(cases)} tests: {seconds:.1f} s)"


# -- lint timing ---------------------------------------------------------------------------------
def time_lint(merged: Path, parents: list[Path], repeats: int = 3, evict: list[Path] | None = None,
              base: Path | None = None) -> dict:
    from mergeqa.inspect import lint

    def run() -> float:
        started = time.perf_counter()
        results = lint.lint_checkpoint(merged, parents, base=base)
        elapsed = time.perf_counter() - started
        assert all(r.ok for r in results.values()), [r.message() for r in results.values() if not r.ok]
        return elapsed

    cold = []
    for _ in range(repeats):
        lint._STATS.clear()
        for f in evict or ():
            _evict(f)
        cold.append(run())
    warm = run()  # parents' statistics in memory, as for the second merge of a session
    return {"cold_s": statistics.median(cold), "warm_parents_s": warm}


def _evict(path: Path) -> None:
    """Drop one file's pages from the page cache (only that file's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def qwen2_05b_shapes() -> dict[str, tuple[int, ...]]:
    c = QWEN2_05B
    h, i = c["hidden_size"], c["intermediate_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], h), "model.norm.weight": (h,)}
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
    return shapes


def write_qwen2_05b(root: Path) -> tuple[Path, list[Path]]:
    """merged + two parents, random bf16 weights (the parents are scaled copies: cheap to make)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    base = {n: (torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16) for n, s in qwen2_05b_shapes().items()}
    vocab = {f"t{i}": i for i in range(QWEN2_TOKENS)}
    added = [{"id": QWEN2_TOKENS + k, "content": f"<|extra_{k}|>", "special": True} for k in range(QWEN2_ADDED)]
    added[0]["content"] = "<|endoftext|>"
    tokenizer = {"added_tokens": added, "model": {"type": "BPE", "vocab": vocab, "merges": []}}
    dirs = []
    for name, scale in (("merged", 1.0), ("parent_a", 1.1), ("parent_b", 0.9)):
        d = root / name
        d.mkdir()
        save_file({n: (t * scale).contiguous() for n, t in base.items()}, str(d / "model.safetensors"),
                  metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(QWEN2_05B))
        (d / "tokenizer.json").write_text(json.dumps(tokenizer))
        (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "chat_template": "{{ x }}"}))
        dirs.append(d)
    return dirs[0], dirs[1:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, metavar="DIR",
                    help="mergeqa cache with the family (default: $MERGEQA_CACHE_DIR or ~/.cache/mergeqa)")
    ap.add_argument("--shape", choices=("tiny", "qwen2.5-0.5b"), default="tiny",
                    help="also time the lint on a random Qwen2-0.5B-shaped checkpoint (default: tiny only)")
    ap.add_argument("--no-table", action="store_true", help="skip the gate run (timing only)")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch threads for the timings (default: torch's, one per core)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from mergeqa.core.cache import default_cache_dir

    cache = args.cache or default_cache_dir()
    with tempfile.TemporaryDirectory(prefix="mergeqa-known-bad-") as tmp:
        if not args.no_table:
            print(gate_table(cache, Path(tmp)), end="\n\n")
        from mergeqa.models.shipped_family import shipped_family
        from mergeqa.models.badmerges import family_merge

        family, merge = shipped_family(cache), family_merge(cache)
        t = time_lint(merge, list(family.parents.values()), repeats=5, base=family.base)
        size = sum(f.stat().st_size for f in merge.glob("*.safetensors"))
        print(f"lint, tiny family (ties vs its 3 sources: base and 2 parents, {size / 1e6:.1f} MB each, torch threads "
              f"{torch.get_num_threads()}): cold {t['cold_s'] * 1e3:.0f} ms, "
              f"parents cached {t['warm_parents_s'] * 1e3:.0f} ms")
    if args.shape == "qwen2.5-0.5b":
        with tempfile.TemporaryDirectory(prefix="mergeqa-lint-05b-") as tmp:
            started = time.perf_counter()
            merged, parents = write_qwen2_05b(Path(tmp))
            files = [d / "model.safetensors" for d in (merged, *parents)]
            size = files[0].stat().st_size
            print(f"wrote 3 x {size / 1e9:.2f} GB random bf16 Qwen2-0.5B-shaped checkpoints in "
                  f"{time.perf_counter() - started:.0f} s")
            cold = time_lint(merged, parents, repeats=2, evict=files)
            warm = time_lint(merged, parents, repeats=2)
            print(f"lint, qwen2.5-0.5b shape (merged vs 2 parents, {3 * size / 1e9:.1f} GB read, CPU, torch "
                  f"threads {torch.get_num_threads()}): cold disk {cold['cold_s']:.1f} s, page-cached "
                  f"{warm['cold_s']:.1f} s, parents' statistics cached {warm['warm_parents_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
