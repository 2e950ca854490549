"""Inference cost of a merge and its parents: size on disk, parameter count, peak memory while
scoring, prefill and decode tokens/s and latency on a fixed prompt set ([sanity.prompts]), all
measured in one call so the ratios compare like with like. Measuring only: which ratio passes
is `[cost]` in thresholds.toml, decided in mergeqa/checks/test_cost.py.

    merged_cost, *parent_costs = measure_costs([merged, *parents], prompts, device="cpu", dtype="float32")
    merged_cost.decode_tokens_per_s

Timings are, per prompt, the fastest of `repeats` interleaved rounds (merge, parent, parent,
merge, ...), so a load spike on a shared machine slows one round of every model, not one model. Peak memory is the
model's resident tensors plus the peak of tensors allocated while it generates: on CUDA from the
allocator's high-water mark, on CPU from a dispatch mode that counts every op's new storages
(deterministic, unlike process RSS), while generating the longest prompt of the set.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mergeqa.models.refs import weight_files

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


# -- static: read from the checkpoint, no forward pass -----------------------------------------
@dataclass(frozen=True)
class CheckpointSize:
    """What a checkpoint's weight files hold: bytes on disk, parameters, and how much of both
    sits in the repeated transformer blocks (what a depth up-scaled merge multiplies)."""

    bytes_on_disk: int
    parameters: int
    layers: int  # transformer blocks, from config.json (0 when unknown)
    layer_bytes: int  # tensor bytes inside blocks (names like model.layers.3.)
    other_bytes: int  # embeddings, norms, lm_head
    dtypes: tuple[str, ...]
    tensors: int = 0
    layer_tensors: int = 0

    @property
    def bytes_per_layer(self) -> float:
        return self.layer_bytes / self.layers if self.layers else 0.0

    def scaled_to(self, layers: int) -> float:
        """The size this checkpoint would have with `layers` blocks of the same shape and dtype."""
        if not self.layers or not layers:
            return float(self.bytes_on_disk)
        tensors = self.tensors - self.layer_tensors + self.layer_tensors * layers / self.layers
        header = self.bytes_on_disk - self.layer_bytes - self.other_bytes  # one entry per tensor
        header_scaled = header * tensors / self.tensors if self.tensors else header
        return self.other_bytes + self.bytes_per_layer * layers + header_scaled


def layer_count(config: dict) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    return 0


def checkpoint_size(path: Path, config: dict) -> CheckpointSize:
    """Sizes from the safetensors headers (no tensor data read); *.bin files count on disk only."""
    from safetensors import safe_open

    files = weight_files(Path(path))
    params = layer_bytes = other_bytes = tensors = layer_tensors = 0
    dtypes: set[str] = set()
    for f in files:
        if f.suffix != ".safetensors":
            continue
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                piece = st.get_slice(name)
                numel = 1
                for d in piece.get_shape():
                    numel *= d
                dtype = piece.get_dtype()
                nbytes = numel * _DTYPE_BYTES.get(dtype, 4)
                dtypes.add(dtype)
                params += numel
                tensors += 1
                if LAYER_RE.search(name):
                    layer_bytes += nbytes
                    layer_tensors += 1
                else:
                    other_bytes += nbytes
    return CheckpointSize(sum(f.stat().st_size for f in files), params, layer_count(config),
                          layer_bytes, other_bytes, tuple(sorted(dtypes)), tensors, layer_tensors)


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


# -- dynamic: generate on the fixed prompt set -------------------------------------------------
def live_tensor_bytes():
    """A torch dispatch mode counting the bytes of storages created by ops while it is active
    (freed ones subtracted); `.peak` is the high-water mark. CPU or CUDA alike; slow, so used for
    one memory pass, never while timing."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveTensorBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0
            self._seen: set[int] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._count(t.untyped_storage())
            return out

        def _count(self, storage):
            key, n = storage.data_ptr(), storage.nbytes()
            if not n or key in self._seen:
                return  # an in-place op or a view: no new memory
            self._seen.add(key)
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, n)

        def _free(self, key, n):
            self._seen.discard(key)
            self.live -= n

    return LiveTensorBytes()


@dataclass
class CostMeasurement:
    """One model's cost on the prompt set. Speeds in tokens/s, latency in ms per prompt (prefill +
    `new_tokens` greedy tokens, forced to that length so every model does the same work)."""

    model: str
    role: str
    size: CheckpointSize
    peak_memory_bytes: int
    memory_method: str
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    latency_ms: float
    prompt_tokens: int
    new_tokens: int
    prompts: int
    device: str
    samples: dict[str, str] = field(default_factory=dict)  # prompt name -> greedy continuation
    problem: str | None = None  # why it could not generate (speeds and memory are then 0)

    def figures(self) -> dict[str, float | int | str]:
        return {"size_bytes": self.size.bytes_on_disk, "parameters": self.size.parameters,
                "layers": self.size.layers, "peak_memory_bytes": self.peak_memory_bytes,
                "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 1),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 1),
                "latency_ms": round(self.latency_ms, 2)}

    def to_dict(self) -> dict:
        return {**asdict(self), "size": asdict(self.size)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _encode(tokenizer, prompt, device):
    import torch

    ids = tokenizer(prompt.text, return_tensors="pt").input_ids
    return ids.to(device), torch.ones_like(ids).to(device)


def _generate(model, ids, mask, new_tokens: int, pad: int):
    import torch

    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad)


def _timed_round(model, encoded, new_tokens: int, pad: int, device: str) -> list[tuple[float, float]]:
    """(prefill seconds, generate seconds) per prompt; prefill is the fastest of 3 forward passes
    (it takes milliseconds, so one scheduler hiccup would otherwise dominate it)."""
    import torch

    out = []
    for ids, mask in encoded:
        prefill = math.inf
        for _ in range(3):
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                model(ids, attention_mask=mask)
            _sync(device)
            prefill = min(prefill, time.perf_counter() - t0)
        t1 = time.perf_counter()
        _generate(model, ids, mask, new_tokens, pad)
        _sync(device)
        out.append((prefill, time.perf_counter() - t1))
    return out


def _peak_memory(model, encoded, new_tokens: int, pad: int, device: str) -> tuple[int, str]:
    import torch

    resident = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for ids, mask in encoded:
            _generate(model, ids, mask, new_tokens, pad)
        torch.cuda.synchronize()
        return resident + torch.cuda.max_memory_allocated() - before, "weights + cuda allocator peak"
    mode = live_tensor_bytes()
    with mode:
        for ids, mask in encoded:
            _generate(model, ids, mask, new_tokens, pad)
    return resident + mode.peak, "weights + peak of tensors allocated (dispatch mode)"


_DETERMINISTIC: dict[tuple, tuple] = {}  # (model hash, device, dtype, prompts, tokens) -> samples, memory


def measure_costs(refs: Sequence, prompts: Sequence, *, device: str, dtype: str, new_tokens: int = 16,
                  repeats: int = 3) -> list[CostMeasurement]:
    """Measure every ModelRef of `refs` on `prompts` (sanity.SanityPrompt) in one go: samples and
    memory per model, then `repeats` interleaved timing rounds; per prompt the fastest counts.
    On CPU everything runs on one thread: on a shared machine more threads made a tiny model's
    generation 70x slower and the ratios noise (absolute CPU speeds are then single-thread)."""
    from mergeqa.core.threads import torch_threads

    with torch_threads(1) if device == "cpu" else contextlib.nullcontext():
        return _measure_costs(refs, prompts, device, dtype, new_tokens, repeats)


def _measure_costs(refs, prompts, device, dtype, new_tokens, repeats) -> list[CostMeasurement]:
    from mergeqa.inspect.sanity import greedy, vocabulary_problem

    setup, broken = {}, {}
    for i, ref in enumerate(refs):  # keyed by position: a merge may share a parent's name
        model, tok = ref.model(device, dtype), ref.tokenizer()
        problem = vocabulary_problem(model, tok)
        if problem:  # generating would index past the embedding: measure what is static only
            broken[i] = CostMeasurement(ref.name, ref.role, checkpoint_size(ref.path, ref.config), 0,
                                        "-", 0.0, 0.0, 0.0, 0, new_tokens, 0, device, problem=problem)
            continue
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        encoded = [_encode(tok, p, device) for p in prompts]
        key = (ref.content_hash, device, dtype, tuple(p.text for p in prompts), new_tokens)
        if key not in _DETERMINISTIC:  # a parent measured for the previous merge: not again
            samples = {p.name: greedy(model, tok, p, new_tokens).text for p in prompts}  # also a warm-up
            longest = max(encoded, key=lambda e: e[0].shape[1])
            _DETERMINISTIC[key] = samples, _peak_memory(model, [longest], new_tokens, pad, device)
        samples, memory = _DETERMINISTIC[key]
        setup[i] = (ref, model, encoded, pad, samples, memory)
    rounds: dict[int, list[list[tuple[float, float]]]] = {i: [] for i in setup}
    for _ in range(max(1, repeats)):  # interleaved: a load spike slows one round of every model
        for i, (ref, model, encoded, pad, _, _) in setup.items():
            rounds[i].append(_timed_round(model, encoded, new_tokens, pad, device))
    out = dict(broken)
    for i, (ref, model, encoded, pad, samples, (peak, method)) in setup.items():
        per_prompt = list(zip(*rounds[i]))  # prompt -> its rounds; the fastest round counts
        prefill_s = sum(min(r[0] for r in runs) for runs in per_prompt)
        generate_s = sum(min(r[1] for r in runs) for runs in per_prompt)
        decode_s = max(generate_s - prefill_s, 1e-9)  # generate = one prefill + the decode steps
        tokens = sum(ids.shape[1] for ids, _ in encoded)
        out[i] = CostMeasurement(
            ref.name, ref.role, checkpoint_size(ref.path, ref.config), int(peak), method,
            prefill_tokens_per_s=tokens / max(prefill_s, 1e-9),
            decode_tokens_per_s=len(encoded) * (new_tokens - 1) / decode_s,
            latency_ms=1000 * generate_s / max(1, len(encoded)), prompt_tokens=tokens,
            new_tokens=new_tokens, prompts=len(encoded), device=device, samples=samples)
    return [out[i] for i in range(len(refs))]


# -- the ratios the gate reads -----------------------------------------------------------------
@dataclass(frozen=True)
class CostScale:
    """How much bigger and slower the merge may be by design: 1.0 for a merge as deep as its
    parents; merge layers / parent layers for a depth up-scaled (passthrough) merge."""

    merge_layers: int
    parent_layers: int
    expected_bytes: float  # the largest parent's size rescaled to the merge's layer count

    @property
    def depth(self) -> float:
        return self.merge_layers / self.parent_layers if self.merge_layers and self.parent_layers else 1.0

    @property
    def upscaled(self) -> bool:
        return self.depth != 1.0

    def describe(self) -> str:
        if not self.upscaled:
            return "same depth as the parents: expected cost = the parents'"
        return (f"depth up-scaled ({self.merge_layers} layers vs the parents' {self.parent_layers}): "
                f"bigger and slower by design, so the expected size is the largest parent's rescaled "
                f"to {self.merge_layers} layers and speed expectations are divided by {self.depth:.3g}")


def cost_scale(merged: CostMeasurement, parents: Sequence[CostMeasurement]) -> CostScale:
    biggest = max(parents, key=lambda p: p.size.bytes_on_disk)
    return CostScale(merged.size.layers, biggest.size.layers, biggest.size.scaled_to(merged.size.layers))


def _mb(n: float) -> str:
    return f"{n / 2**20:.3g} MB"


def _table(merged: CostMeasurement, parents: Sequence[CostMeasurement]) -> dict:
    """The data every cost verdict carries for the reports: each model's measurement."""
    return {"models": {m.model: {k: v for k, v in m.to_dict().items() if k != "samples"}
                       for m in [merged, *parents]}}


def _unmeasured(checks: Sequence[str], merged: CostMeasurement, parents: Sequence[CostMeasurement]) -> list:
    """error verdicts when a model could not generate (its tokenizer indexes past its embedding)."""
    from mergeqa.decision.verdict import Verdict

    bad = next(m for m in [merged, *parents] if m.problem)
    return [Verdict(c, merged.model, "error", reason=f"{bad.model} cannot generate: {bad.problem}",
                    fix="the lint and sanity checks name the broken tensor; fix the merge first")
            for c in checks]


def size_verdicts(merged: CostMeasurement, parents: Sequence[CostMeasurement], *, max_size_ratio: float,
                  max_memory_ratio: float) -> list:
    """cost.size (bytes on disk against the expected size) and cost.memory (peak while generating
    against the largest parent's, rescaled the same way)."""
    from mergeqa.decision.verdict import Verdict

    scale = cost_scale(merged, parents)
    biggest = max(parents, key=lambda p: p.size.bytes_on_disk)
    size_ratio = merged.size.bytes_on_disk / scale.expected_bytes
    wider = sorted(set(merged.size.dtypes) - {d for p in parents for d in p.size.dtypes})
    size = Verdict.threshold(
        "cost.size", merged.model, obtained=round(size_ratio, 4), threshold=max_size_ratio, op="<=",
        summary=f"size on disk {_mb(merged.size.bytes_on_disk)} / expected {_mb(scale.expected_bytes)}",
        cause=(f"the merge is saved as {', '.join(wider)} while the parents are "
               f"{', '.join(biggest.size.dtypes)}" if wider else
               "the merge holds more tensors than its parents (extra layers or a wider vocabulary)"),
        fix=("set `dtype:` in the merge config to the parents' dtype" if wider else
             "check the merge's slices and tokenizer_source; or raise [cost] max_size_ratio"),
        size_bytes=merged.size.bytes_on_disk, expected_bytes=int(scale.expected_bytes),
        parameters=merged.size.parameters, layers=merged.size.layers,
        parent_layers=scale.parent_layers, depth_ratio=round(scale.depth, 4), dtypes=",".join(merged.size.dtypes),
        **{f"parent.{p.model}.size_bytes": p.size.bytes_on_disk for p in parents},
        **{f"parent.{p.model}.parameters": p.size.parameters for p in parents})
    size.details = [scale.describe()] if scale.upscaled else []
    size.data = {**_table(merged, parents), "scale": scale.describe()}
    byte_scale = scale.expected_bytes / biggest.size.bytes_on_disk
    top = max(p.peak_memory_bytes for p in parents)
    memory = Verdict.threshold(
        "cost.memory", merged.model, obtained=round(merged.peak_memory_bytes / (top * byte_scale), 4),
        threshold=max_memory_ratio, op="<=",
        summary=f"peak memory while generating {_mb(merged.peak_memory_bytes)} / the largest parent's "
                f"{_mb(top)}" + (f" x {byte_scale:.3g} (depth)" if scale.upscaled else ""),
        cause="larger tensors (dtype, vocabulary) or a longer KV cache than the parents'",
        fix="load and save the merge in the parents' dtype; or raise [cost] max_memory_ratio",
        peak_memory_bytes=merged.peak_memory_bytes, method=merged.memory_method,
        **{f"parent.{p.model}.peak_memory_bytes": p.peak_memory_bytes for p in parents})
    memory.data = size.data
    if any(m.problem for m in [merged, *parents]):
        memory = _unmeasured(["cost.memory"], merged, parents)[0]
    return [size, memory]


def speed_verdicts(merged: CostMeasurement, parents: Sequence[CostMeasurement], *, min_speed_ratio: float,
                   max_latency_ratio: float) -> list:
    """cost.prefill and cost.decode (tokens/s against the slowest parent's, allowing the depth
    ratio) and cost.latency (ms per prompt against the slowest parent's x depth ratio)."""
    from mergeqa.decision.verdict import Verdict

    if any(m.problem for m in [merged, *parents]):
        return _unmeasured(["cost.prefill", "cost.decode", "cost.latency"], merged, parents)
    depth = cost_scale(merged, parents).depth
    by_depth = f", allowing x{depth:.3g} for depth" if depth != 1.0 else ""
    out = []
    for kind in ("prefill", "decode"):
        attr = f"{kind}_tokens_per_s"
        slowest = min(parents, key=lambda p: getattr(p, attr))
        ratio = getattr(merged, attr) * depth / getattr(slowest, attr)
        out.append(Verdict.threshold(
            f"cost.{kind}", merged.model, obtained=round(ratio, 4), threshold=min_speed_ratio, op=">=",
            summary=f"{kind} {getattr(merged, attr):.4g} tok/s / {slowest.model}'s {getattr(slowest, attr):.4g}{by_depth}",
            cause="a bigger or differently shaped model than its parents, or a loaded machine "
                  "(timings are the best of interleaved rounds)",
            fix="compare the merge's config.json with the parents'; rerun on an idle machine; or "
                "lower [cost] min_speed_ratio",
            tokens_per_s=round(getattr(merged, attr), 1),
            **{f"parent.{p.model}.tokens_per_s": round(getattr(p, attr), 1) for p in parents}))
    slowest = max(parents, key=lambda p: p.latency_ms)
    out.append(Verdict.threshold(
        "cost.latency", merged.model, obtained=round(merged.latency_ms / (slowest.latency_ms * depth), 4),
        threshold=max_latency_ratio, op="<=",
        summary=f"latency {merged.latency_ms:.4g} ms per prompt ({merged.new_tokens} tokens) / "
                f"{slowest.model}'s {slowest.latency_ms:.4g} ms{by_depth}",
        cause="a bigger or differently shaped model than its parents, or a loaded machine",
        fix="compare the merge's config.json with the parents'; or raise [cost] max_latency_ratio",
        latency_ms=round(merged.latency_ms, 2), prompts=merged.prompts, new_tokens=merged.new_tokens,
        **{f"parent.{p.model}.latency_ms": round(p.latency_ms, 2) for p in parents}))
    for v in out:
        v.data = _table(merged, parents)
    out[-1].data["samples"] = {name: {m.model: m.samples.get(name, "") for m in [merged, *parents]}
                               for name in merged.samples}
    return out
