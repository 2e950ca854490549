"""Time lm-eval's HFLM against mergeqa's prefix-sharing scorer on a 5-shot-like, 4-choice task.

One run builds a seeded random-weight model and a synthetic task (mergeqa.evaluate.synthetic_mc), scores it
with both backends (model preloaded, both warmed up, timing includes tokenisation as lm-eval's
`loglikelihood` does), and prints a markdown table: items/s, ratio, agreement, peak memory, tokens
through the model, fraction of the FLOP floor. Not a test: it asserts nothing.

    python bench/bench_scorer.py                                          # CPU, small Llama
    python bench/bench_scorer.py --device cuda --dtype bfloat16 --shape qwen2.5-0.5b   # the GPU figure
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mergeqa.evaluate import synthetic_mc as smc  # noqa: E402
from mergeqa.evaluate.scorer import make_lm  # noqa: E402

TOL = 1e-4


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu", metavar="DEV", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--dtype", default="both", choices=["float32", "bfloat16", "both"],
                   help="dtypes to time (default: %(default)s); fp32 answers are always computed as the truth")
    p.add_argument("--shape", default=None, choices=sorted(smc.MODEL_SHAPES),
                   help="model shape (default: qwen2.5-0.5b on cuda, small-llama on cpu)")
    p.add_argument("--items", type=int, default=400, metavar="N", help="items (default: %(default)s)")
    p.add_argument("--shots", type=int, default=5, metavar="K", help="solved examples per context (default: %(default)s)")
    p.add_argument("--choices", type=int, default=4, metavar="C", help="choices per item (default: %(default)s)")
    p.add_argument("--context-tokens", type=int, default=None, metavar="T",
                   help="target mean context length in tokens (default: 631 on cuda, as in the baseline; 160 on cpu)")
    p.add_argument("--tokenizer-vocab", type=int, default=4096, metavar="V", help="BPE vocabulary to aim for; the corpus may give fewer (default: %(default)s)")
    p.add_argument("--hf-batch-size", type=int, default=32, metavar="B", help="HFLM requests per pass (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="mergeqa-hf contexts per pass (default: 64 on cuda, as in the baseline; 32 on cpu, "
                        "where the vocabulary is small and activations, not logits, set the peak)")
    p.add_argument("--repeats", type=int, default=1, metavar="R",
                   help="timed runs per scorer, alternating; medians reported (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--peak-tflops", type=float, default=None, metavar="F",
                   help="matrix rate for the FLOP floor (default: 800 bf16 on cuda, the H100 rate in "
                        "../shared/gpu/h100-baseline.md; on cpu a measured matmul rate per dtype)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed for model and task (default: %(default)s)")
    args = p.parse_args(argv)
    args.shape = args.shape or ("qwen2.5-0.5b" if args.device.startswith("cuda") else "small-llama")
    args.context_tokens = args.context_tokens or (631 if args.device.startswith("cuda") else 160)
    args.batch_size = args.batch_size or (64 if args.device.startswith("cuda") else 32)
    return args


# -- workload ---------------------------------------------------------------------------------------

def calibrated_items(args, tok):
    """Items whose mean context length is close to `args.context_tokens` (two-point linear fit)."""
    def mean_len(words, n=24):
        items = smc.make_items(n, n_shots=args.shots, n_choices=args.choices, question_words=words, seed=args.seed + 1)
        return statistics.mean(len(tok(i.context).input_ids) for i in items)

    lo, hi = mean_len(4), mean_len(24)
    words = max(1, round(4 + (args.context_tokens - lo) * 20 / (hi - lo)))
    return smc.make_items(args.items, n_shots=args.shots, n_choices=args.choices, question_words=words, seed=args.seed)


@dataclass
class Work:
    """What the task needs, whoever computes it: the basis of the FLOP floor."""

    contexts: int
    requests: int
    mean_context: float
    hf_tokens: int  # tokens in the distinct windows lm-eval runs (ctx + cont[:-1], truncated)
    shared_tokens: int  # each distinct prefix once, plus each distinct continuation's inputs
    scored_positions: int  # distinct positions whose logits are needed


def measure_work(lm, requests) -> Work:
    token_requests = lm.encode_requests([r.args for r in requests])
    plan = lm._plan(token_requests)
    windows = {tuple((c + x)[-(lm.max_length + 1):][:-1]) for _, c, x in token_requests}
    return Work(
        contexts=len({r.args[0] for r in requests}),
        requests=len(requests),
        mean_context=statistics.mean(len(c) for _, c, _ in token_requests),
        hf_tokens=sum(map(len, windows)),
        shared_tokens=sum(len(r.prefix) + r.tail for r in plan.rows),
        scored_positions=sum(1 + r.tail for r in plan.rows),
    )


def flop_floor(model, work: Work) -> float:
    """2 x trunk parameters per necessary token + the vocabulary projection at scored positions.

    Attention's own FLOPs are left out, as in ../shared/gpu/h100-baseline.md.
    """
    params = {id(p): p.numel() for p in model.parameters()}
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    trunk = sum(params.values()) - embed.numel() - (0 if head is embed else head.numel())
    return 2 * trunk * work.shared_tokens + 2 * head.numel() * work.scored_positions


def matmul_rate(device: str, dtype: torch.dtype, trials: int = 10) -> float:
    """FLOP/s of a 1024^3 matmul on this device and dtype, best of `trials` 0.2 s windows (used
    on CPU only; the best window is the least disturbed by other processes on a shared machine)."""
    n = 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


# -- measuring ---------------------------------------------------------------------------------------

class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or on CPU the peak RSS rise (sampled every 2 ms)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.peak_bytes = 0

    @property
    def label(self) -> str:
        return "peak GPU GiB (max_memory_allocated)" if self.cuda else "peak RSS rise GiB (sampled, after malloc_trim)"

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        proc = psutil.Process()
        self._base = proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak_bytes = max(self.peak_bytes, proc.memory_info().rss - self._base)
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


class TokenCounter:
    """Counts the token positions (padding included) that go through the model's forward."""

    def __init__(self, model):
        self.tokens = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        self.tokens += ids.numel()

    def close(self):
        self._handle.remove()


@dataclass
class Run:
    """One scorer at one dtype: all timed repeats (wall and process CPU seconds)."""

    scorer: str
    dtype: str
    walls: list[float]
    cpus: list[float]  # process CPU seconds (all threads): steadier than wall time when shared
    tokens: int
    peak_bytes: int
    scores: list = field(repr=False)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    def speedup_over(self, hf: Run, cpu: bool = False) -> tuple[float, float, float]:
        """Median, min, max over the repeats of hf's time / this time, repeat by repeat."""
        pairs = zip(hf.cpus, self.cpus) if cpu else zip(hf.walls, self.walls)
        ratios = [a / b for a, b in pairs]
        return statistics.median(ratios), min(ratios), max(ratios)


def timed(lms: dict, model, requests, warmup, args, dtype: str) -> list[Run]:
    """`args.repeats` runs per scorer, the scorers alternating, so each lm-eval run has a
    mergeqa-hf run right after it under about the same load (ratios are taken pair by pair)."""
    for lm in lms.values():
        lm.loglikelihood(warmup, disable_tqdm=True)
    runs = {scorer: Run(scorer, dtype, [], [], 0, 0, []) for scorer in lms}
    for _ in range(args.repeats):
        for scorer, lm in lms.items():
            counter = TokenCounter(model)
            with PeakMemory(args.device) as mem:
                t0, c0 = time.perf_counter(), time.process_time()
                scores = lm.loglikelihood(requests, disable_tqdm=True)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            counter.close()
            run = runs[scorer]
            run.walls.append(wall)
            run.cpus.append(cpu_s)
            run.tokens, run.scores = counter.tokens, scores
            run.peak_bytes = max(run.peak_bytes, mem.peak_bytes)
    return list(runs.values())


# -- report ------------------------------------------------------------------------------------------

def fp32_agreement(ref, new, items) -> str:
    diffs = [abs(a[0] - b[0]) for a, b in zip(ref, new, strict=True)]
    within = sum(d <= TOL for d in diffs)
    greedy = sum(a[1] == b[1] for a, b in zip(ref, new, strict=True))
    answers = sum(a == b for a, b in zip(smc.item_answers(ref, items), smc.item_answers(new, items), strict=True))
    return (
        f"max abs diff {max(diffs):.1e}; within {TOL:g}: {within}/{len(diffs)}; "
        f"is_greedy same: {greedy}/{len(diffs)}; answers same: {answers}/{len(items)}"
    )


def _ratio(r: Run, hf: Run, cpu: bool = False) -> str:
    med, lo, hi = r.speedup_over(hf, cpu)
    return f"{med:.2f}" if len(r.walls) == 1 else f"{med:.2f} ({lo:.2f}-{hi:.2f})"


def table(runs, truth, items, work, model, mem_label, rates) -> str:
    hf = {r.dtype: r for r in runs if r.scorer == "hf"}
    floor = flop_floor(model, work)
    head = (
        f"| scorer | dtype | wall s (median) | items/s | x lm-eval (median, range) | process CPU s | "
        f"x lm-eval by CPU s | {mem_label} | tokens through model (padded) | FLOP-floor fraction | agreement |\n"
        f"|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in runs:
        answers = smc.item_answers(r.scores, items)
        if r.dtype == "float32":
            ref = hf["float32"].scores
            agree = "reference (fp32 truth)" if r.scorer == "hf" else fp32_agreement(ref, r.scores, items)
        else:
            n = sum(a == t for a, t in zip(answers, truth, strict=True))
            agree = f"answers = fp32 answers: {n}/{len(items)} ({100 * n / len(items):.1f} %)"
        rate = rates.get(r.dtype)
        frac = f"{floor / rate / r.wall:.1%}" if rate else "n/a"
        lines.append(
            f"| {'lm-eval HFLM' if r.scorer == 'hf' else 'mergeqa-hf'} | {r.dtype} | {r.wall:.2f} | "
            f"{len(items) / r.wall:.1f} | {_ratio(r, hf[r.dtype])} | {statistics.median(r.cpus):.1f} | "
            f"{_ratio(r, hf[r.dtype], cpu=True)} | {r.peak_bytes / 2**30:.3f} | {r.tokens:,} | {frac} | {agree} |"
        )
    return head + "\n".join(lines)


def verdicts(runs, truth, items) -> list[str]:
    """Issue 8's bar per dtype: >= 4x lm-eval's items/s, answers as good, peak memory no higher."""
    out = []
    by = {(r.scorer, r.dtype): r for r in runs}
    for dtype in dict.fromkeys(r.dtype for r in runs):
        hf, mq = by.get(("hf", dtype)), by.get(("mergeqa-hf", dtype))
        if not (hf and mq):
            continue
        if dtype == "float32":
            answers_ok = all(
                abs(a[0] - b[0]) <= TOL and a[1] == b[1] for a, b in zip(hf.scores, mq.scores, strict=True)
            )
        else:
            def agree(run):
                return sum(a == t for a, t in zip(smc.item_answers(run.scores, items), truth, strict=True))
            answers_ok = agree(mq) >= agree(hf)
        ratio = mq.speedup_over(hf)[0]
        out.append(
            f"{dtype}: {ratio:.2f}x items/s ({'meets' if ratio >= 4 else 'below'} 4x); answers "
            f"{'as required' if answers_ok else 'NOT as required'}; peak memory "
            f"{'no higher than' if mq.peak_bytes <= hf.peak_bytes else 'HIGHER than'} lm-eval's"
        )
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # "pretrained is not a str" per instance
    dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]

    tok = smc.train_tokenizer(args.tokenizer_vocab, seed=args.seed)
    items = calibrated_items(args, tok)
    requests = smc.make_requests(items)
    warmup = requests[: 8 * args.choices]
    model = smc.build_model(args.shape, len(tok), seed=args.seed).to(args.device)
    n_params = sum({id(p): p.numel() for p in model.parameters()}.values())

    def lm(backend):
        bs = args.hf_batch_size if backend == "hf" else args.batch_size
        return make_lm(model, tok, backend=backend, batch_size=bs, device=args.device)

    work = measure_work(lm("mergeqa-hf"), requests)
    if args.peak_tflops:
        rates = {d: args.peak_tflops * 1e12 for d in ("bfloat16",)}
        rate_note = f"{args.peak_tflops:g} TFLOP/s (given)"
    elif args.device.startswith("cuda"):
        rates = {"bfloat16": 800e12}
        rate_note = "800 TFLOP/s bf16, the H100 matrix rate measured in ../shared/gpu/h100-baseline.md; fp32 rows n/a"
    else:
        rates = {d: matmul_rate("cpu", getattr(torch, d)) for d in dtypes + ["float32"]}
        measured = ", ".join(f"{d} {r / 1e9:.0f} GFLOP/s" for d, r in rates.items())
        rate_note = (
            "CPU-equivalent, not the bf16 GPU floor: floor FLOPs at this CPU's measured "
            f"1024^3 matmul rate ({measured})"
        )

    runs, truth = [], None
    for dtype in ["float32"] + [d for d in dtypes if d != "float32"]:
        model.to(getattr(torch, dtype))
        if dtype in dtypes:
            runs += timed({b: lm(b) for b in ("hf", "mergeqa-hf")}, model, requests, warmup, args, dtype)
        else:  # fp32 answers are the truth even when only bf16 is timed
            truth = smc.item_answers(lm("hf").loglikelihood(requests, disable_tqdm=True), items)
        if dtype == "float32" and truth is None:
            truth = smc.item_answers(runs[0].scores, items)
    mem_label = PeakMemory(args.device).label

    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"# bench_scorer: {args.shape} ({n_params / 1e6:.1f} M params, tokenizer {len(tok)} tokens), {device_name}")
    print(f"command: python bench/bench_scorer.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(
        f"task: {work.contexts} items x {args.choices} choices = {work.requests} requests, {args.shots}-shot-like, "
        f"mean context {work.mean_context:.0f} tokens; HFLM batch {args.hf_batch_size} requests, "
        f"mergeqa-hf batch {args.batch_size} contexts; {args.repeats} timed run(s) each, alternating, after a warm-up"
    )
    print(
        f"necessary work: {work.shared_tokens:,} tokens + head at {work.scored_positions:,} positions "
        f"(lm-eval's distinct windows: {work.hf_tokens:,} tokens); FLOP floor {flop_floor(model, work) / 1e12:.3f} TFLOP; "
        f"rate: {rate_note}"
    )
    print()
    print(table(runs, truth, items, work, model, mem_label, rates))
    print()
    for line in verdicts(runs, truth, items):
        print(line)
    if not args.device.startswith("cuda"):
        print("\nGPU figure pending: run with --device cuda --shape qwen2.5-0.5b on a lent GPU.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
