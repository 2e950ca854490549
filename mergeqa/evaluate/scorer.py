"""`mergeqa-hf`: an lm-eval backend that gives HFLM's loglikelihood answers, running each context once.

`MergeQAHFLM` subclasses lm-eval's `HFLM`, so tokenisation, truncation, request semantics,
`loglikelihood_rolling` and `generate_until` stay lm-eval's; only the way loglikelihood requests go
through the model changes (see `MergeQAHFLM`). `make_lm` is what the engine calls. Not for
seq2seq models (they take HFLM's path unchanged) nor for attention kernels that cannot take a
custom mask (flash-attention: use backend "hf" or load with attn_implementation="sdpa").

Registration: importing this module registers nothing (STYLE.md: no registration by import side
effect). `register()` adds the name "mergeqa-hf" to lm-eval's model registry, is idempotent, and
is only needed to select the backend by name (`simple_evaluate(model="mergeqa-hf", ...)`);
`make_lm` builds the object directly and needs no registry.
"""

from __future__ import annotations

import bisect
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

from mergeqa.core.errors import MergeQAUsageError, did_you_mean

log = logging.getLogger(__name__)

REGISTRY_NAME = "mergeqa-hf"
BACKENDS = ("mergeqa-hf", "hf")
_MASKABLE_ATTENTION = ("sdpa", "eager")
# Upper bound on the fp32 log-softmax buffer (positions x vocabulary), to keep peak memory low.
_SOFTMAX_CHUNK_ELEMENTS = 1 << 26

# (cache key, context tokens, continuation tokens): what TemplateLM hands to _loglikelihood_tokens.
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]


@dataclass
class _Row:
    """One sequence of a batch: a shared prefix, then the input tokens of several continuations."""

    prefix: tuple[int, ...]
    units: list[int]  # indices into the plan's distinct (prefix, continuation) pairs
    tail: int = 0  # number of continuation input tokens packed after the prefix


@dataclass
class _Plan:
    """Requests reduced to distinct (prefix, continuation) units, packed into rows."""

    unit_of_request: list[int]  # -1: delegated to HFLM's own path
    unit_conts: list[tuple[int, ...]]
    rows: list[_Row]
    delegated: list[int]  # request indices scored by HFLM._loglikelihood_tokens
    truncated: int


class MergeQAHFLM(HFLM):
    """HFLM whose loglikelihood scores every continuation of a context against one pass over it.

    How a batch is built: lm-eval feeds a causal model the window
    `(context + continuation)[-(max_length + 1):][:-1]` and reads the continuation's log-probs
    from its last `len(continuation)` positions. That window is a *prefix* (everything before the
    continuation's own input tokens `continuation[:-1]`) followed by `continuation[:-1]`. Requests
    with the same prefix form a group: one row holds the prefix once, then each continuation's
    input tokens one after the other. Position ids restart at `len(prefix)` for each continuation,
    and a 4-D attention mask lets each continuation token see the whole prefix and the earlier
    tokens of its own continuation only (a tree-shaped mask). Every scored token therefore sees
    exactly the keys, at exactly the positions, that it sees in HFLM's separate sequence: the
    answers are the same function of the weights, and the prefix is computed once for all of its
    continuations without copying its keys and values. The last prefix position predicts every
    continuation's first token, so one-token choices cost nothing beyond the prefix. In fp32 the
    prefix positions' logits are bit-identical to HFLM's on CPU; at continuation positions the
    attention kernels sum over keys laid out differently (other continuations masked in between,
    padding), which moves logits by about one ulp: per-request differences are ~1e-6 relative,
    e.g. 1.2e-4 on a log-likelihood of -146 over 11 tokens (the tiny family's lists task).

    Rows are left-padded to a common prefix end, so all scored positions lie in the last columns
    and the vocabulary projection runs only there (`logits_to_keep`). Rows are sorted by length
    (bucketing) and `batch_size` rows (distinct contexts, not requests) go through the model
    together; `max_batch_tokens` optionally caps rows x width. Padding tokens attend only to
    themselves and nothing attends to them. Log-softmax runs in fp32 (or `softmax_dtype`) on the
    scored positions only; results stay on the device until one transfer at the end.

    Truncation is lm-eval's: the window is cut on the left per request, so a truncated request's
    prefix depends on its continuation's length and it only shares with requests whose window
    starts at the same token. Models with sliding-window layers score requests longer than the
    window through HFLM's own path (same answers, no sharing).
    """

    def __init__(self, *args, max_batch_tokens: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise MergeQAUsageError(f"max_batch_tokens={max_batch_tokens} must be a positive token count or None")
        self.max_batch_tokens = max_batch_tokens
        if self.backend == "causal":
            impl = getattr(self.model.config, "_attn_implementation", None)
            if impl not in _MASKABLE_ATTENTION:
                raise MergeQAUsageError(
                    f"backend {REGISTRY_NAME!r} needs an attention implementation that takes a custom "
                    f"mask ({', '.join(_MASKABLE_ATTENTION)}); this model uses {impl!r}. Load it with "
                    f"attn_implementation='sdpa', or use backend='hf'."
                )
            self._additive_mask = impl == "eager"
            forward_params = inspect.signature(self.model.forward).parameters
            self._can_keep_logits = "logits_to_keep" in forward_params
            self._window = _sliding_window(self.model.config)

    # -- tokenisation: lm-eval's encodings, each distinct string encoded once, in batches ----------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self.enable_thinking or self.backend != "causal":
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        token_requests = self.encode_requests([req.args for req in requests])
        return self._loglikelihood_tokens(token_requests, disable_tqdm=disable_tqdm)

    def encode_requests(self, pairs: Sequence[tuple[str, str]]) -> list[TokenRequest]:
        """TemplateLM.loglikelihood's tokenisation of (context, continuation) pairs, token for token.

        Each distinct context and context+continuation string is encoded once, in batched
        tokenizer calls, with exactly the special-token arguments `HFLM.tok_encode` would use.
        """
        split = []
        strings: dict[str, None] = {}
        for context, continuation in pairs:
            if context == "":
                split.append(None)
                continue
            n_spaces = len(context) - len(context.rstrip())
            ctx, cont = context, continuation
            if n_spaces:  # trailing spaces move to the continuation, as in TemplateLM._encode_pair
                ctx, cont = context[:-n_spaces], context[-n_spaces:] + continuation
            split.append((ctx, ctx + cont))
            strings[ctx] = None
            strings[ctx + cont] = None
        encoded = self._encode_many(list(strings))

        out: list[TokenRequest] = []
        for (context, continuation), parts in zip(pairs, split, strict=True):
            if parts is None:  # empty context: TemplateLM.loglikelihood's rule, verbatim
                cont_enc = self.tok_encode(continuation, add_special_tokens=False)
                ctx_enc, cont_enc = (
                    ([self.prefix_token_id], cont_enc)
                    if self.prefix_token_id != cont_enc[0]
                    else (cont_enc[:1], cont_enc[1:])
                )
            else:
                ctx_enc = encoded[parts[0]]
                cont_enc = encoded[parts[1]][len(ctx_enc) :]
            out.append(((context, continuation), ctx_enc, cont_enc))
        return out

    def _encode_many(self, strings: list[str]) -> dict[str, list[int]]:
        """`{s: self.tok_encode(s)}` for all strings, with one tokenizer call per kwargs variant."""
        bos_str = self.tokenizer.decode(self.prefix_token_id)
        base = _add_special_kwargs(None, self.add_bos_token)
        plain = [s for s in strings if not has_bos_prefix(s, bos_str)]
        prefixed = [s for s in strings if has_bos_prefix(s, bos_str)]
        encoded: dict[str, list[int]] = {}
        for group, kwargs in ((plain, base), (prefixed, {**base, "add_special_tokens": False})):
            if group:
                ids = self.tokenizer(group, **kwargs)["input_ids"]
                encoded.update(zip(group, ids, strict=True))
        return encoded

    # -- scoring -------------------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self,
        requests: list[TokenRequest],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        if self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        plan = self._plan(requests)
        if plan.truncated:
            log.warning(
                "%d of %d requests exceed max_length=%d and were left-truncated, as lm-eval does.",
                plan.truncated, len(requests), self.max_length,
            )
        unit_scores = self._score_rows(plan, override_bs, disable_tqdm)

        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for i, unit in enumerate(plan.unit_of_request):
            if unit >= 0:
                results[i] = unit_scores[unit]
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        if plan.delegated:
            log.info("%d requests exceed the sliding window; scoring them with HFLM's path.", len(plan.delegated))
            hf_scores = super()._loglikelihood_tokens(
                [requests[i] for i in plan.delegated], disable_tqdm=True, override_bs=override_bs
            )
            for i, score in zip(plan.delegated, hf_scores, strict=True):
                results[i] = score
        return results  # type: ignore[return-value]

    def _plan(self, requests: list[TokenRequest]) -> _Plan:
        """Distinct (prefix, continuation) units, grouped by prefix and packed into sorted rows."""
        max_length = self.max_length
        unit_index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        unit_conts: list[tuple[int, ...]] = []
        groups: dict[tuple[int, ...], list[int]] = {}
        unit_of_request, delegated, truncated = [], [], 0
        for i, (_, context_enc, continuation_enc) in enumerate(requests):
            if not context_enc or not continuation_enc or len(continuation_enc) > max_length:
                raise ValueError(
                    f"request {i}: context has {len(context_enc)} tokens and continuation "
                    f"{len(continuation_enc)}; lm-eval needs both non-empty and the continuation "
                    f"at most max_length={max_length}"
                )
            total = len(context_enc) + len(continuation_enc)
            truncated += total > max_length + 1
            window = (context_enc + continuation_enc)[-(max_length + 1) :][:-1]
            if self._window is not None and len(window) > self._window:
                unit_of_request.append(-1)
                delegated.append(i)
                continue
            prefix = tuple(window[: len(window) - (len(continuation_enc) - 1)])
            key = (prefix, tuple(continuation_enc))
            if key not in unit_index:
                unit_index[key] = len(unit_conts)
                unit_conts.append(key[1])
                groups.setdefault(prefix, []).append(unit_index[key])
            unit_of_request.append(unit_index[key])

        rows = []
        for prefix, units in groups.items():
            row = _Row(prefix, [])
            for unit in units:  # a prefix plus one continuation always fits in max_length
                extra = len(unit_conts[unit]) - 1
                if row.units and len(prefix) + row.tail + extra > max_length:
                    rows.append(row)
                    row = _Row(prefix, [])
                row.units.append(unit)
                row.tail += extra
            rows.append(row)
        rows.sort(key=lambda r: (-len(r.prefix), -r.tail))
        return _Plan(unit_of_request, unit_conts, rows, delegated, truncated)

    def _batches(self, rows: list[_Row], override_bs: int | None):
        """Consecutive runs of the sorted rows: at most `batch_size` rows and `max_batch_tokens`."""
        if not rows:
            return
        if self.batch_size == "auto":
            longest = max(len(r.prefix) + r.tail for r in rows)
            # HFLM's own probe, for `longest`-token sequences with full-vocabulary logits: a bound
            # on what a batch of our rows, at most that wide, needs.
            size = override_bs or self._detect_batch_size([(None, [0] * longest, [0])], 0)
        else:
            size = int(self.batch_size)
        start = 0
        while start < len(rows):
            pmax, tmax = len(rows[start].prefix), rows[start].tail  # longest prefix comes first
            stop = start + 1
            while stop < len(rows) and stop - start < size:
                tail = max(tmax, rows[stop].tail)
                if self.max_batch_tokens and (stop - start + 1) * (pmax + tail) > self.max_batch_tokens:
                    break
                tmax, stop = tail, stop + 1
            yield rows[start:stop]
            start = stop

    def _score_rows(self, plan: _Plan, override_bs: int | None, disable_tqdm: bool) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        n_units = len(plan.unit_conts)
        pbar = tqdm(total=n_units, disable=(disable_tqdm or self.rank != 0), desc="Scoring shared contexts")
        chunks = []
        for batch in self._batches(plan.rows, override_bs):
            chunks.append(self._score_batch(batch, plan.unit_conts))
            pbar.update(sum(len(r.units) for r in batch))
        pbar.close()
        if not chunks:
            return []
        units = torch.cat([c[0] for c in chunks]).cpu()
        lls = torch.cat([c[1] for c in chunks]).cpu()
        misses = torch.cat([c[2] for c in chunks]).cpu()
        scores: list[tuple[float, bool] | None] = [None] * n_units
        for unit, ll, miss in zip(units.tolist(), lls.tolist(), misses.tolist(), strict=True):
            scores[unit] = (ll, miss == 0)
        return scores  # type: ignore[return-value]

    def _score_batch(self, batch: list[_Row], unit_conts: list[tuple[int, ...]]):
        """One forward pass over `batch`; per unit: (unit ids, log-likelihood, # non-greedy tokens)."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = self.device
        # On CUDA a width that is a multiple of 8 lets SDPA's efficient kernels take the mask as is.
        lay = _Layout.build(batch, unit_conts, pad_id, align=8 if device.type == "cuda" else 1)
        host = (lay.input_ids, lay.positions, lay.segments, lay.pos_row, lay.pos_k)
        host += (lay.tgt_pos, lay.tgt_tok, lay.tgt_unit)
        input_ids, positions, segments, pos_row, pos_k, tgt_pos, tgt_tok, tgt_unit = _to_device(host, device)
        mask = self._tree_mask(positions, segments)
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            kwargs = {"logits_to_keep": lay.keep} if self._can_keep_logits else {}
            logits = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False, **kwargs
            ).logits[:, -lay.keep :]

        token_lp = torch.empty(len(lay.tgt_tok), dtype=torch.float32, device=device)
        token_miss = torch.empty(len(lay.tgt_tok), dtype=torch.int32, device=device)
        softmax_dtype = self.softmax_dtype or torch.float32
        step = max(1, _SOFTMAX_CHUNK_ELEMENTS // logits.shape[-1])
        for lo in range(0, len(lay.pos_row), step):
            hi = min(lo + step, len(lay.pos_row))
            logprobs = F.log_softmax(logits[pos_row[lo:hi], pos_k[lo:hi]], dim=-1, dtype=softmax_dtype)
            # targets are sorted by position, so this chunk's targets are one slice
            t0, t1 = bisect.bisect_left(lay.tgt_pos_list, lo), bisect.bisect_left(lay.tgt_pos_list, hi)
            local, tok = tgt_pos[t0:t1] - lo, tgt_tok[t0:t1]
            token_lp[t0:t1] = logprobs[local, tok].float()
            token_miss[t0:t1] = (logprobs.argmax(dim=-1)[local] != tok).int()
        n = len(lay.unit_ids)
        acc = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        lls = torch.zeros(n, dtype=acc, device=device).index_add_(0, tgt_unit, token_lp.to(acc))
        misses = torch.zeros(n, dtype=torch.int32, device=device).index_add_(0, tgt_unit, token_miss)
        return torch.tensor(lay.unit_ids), lls, misses

    def _tree_mask(self, positions: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """[batch, 1, width, width] mask: prefix causal; a continuation sees the prefix and itself.

        Key j is visible from query i when j is not padding, pos[j] <= pos[i], and j is in the
        prefix (segment 0) or in i's own continuation. Every token also sees itself, so padding
        rows never softmax over nothing (no NaN anywhere).
        """
        seg_q, seg_k = segments[:, :, None], segments[:, None, :]
        visible = (seg_k >= 0) & (positions[:, None, :] <= positions[:, :, None]) & ((seg_k == 0) | (seg_k == seg_q))
        visible |= torch.eye(segments.shape[1], dtype=torch.bool, device=segments.device)
        visible = visible[:, None]
        if not self._additive_mask:
            return visible
        dtype = self.mixed_precision_dtype or self.model.dtype
        return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
            ~visible, torch.finfo(dtype).min
        )


@dataclass
class _Layout:
    """Host-side tensors for one batch of rows (built before anything touches the device).

    Row b is `[pad...] prefix | cont_1[:-1] | cont_2[:-1] | ... [pad...]`, with every prefix
    ending at column pmax-1. Logits are kept for columns pmax-1 .. width-1 (`keep` of them);
    index k = column - (pmax-1). A continuation's token 0 is predicted at k=0, its token t at the
    column of its input token t-1.
    """

    input_ids: torch.Tensor  # [rows, width]
    positions: torch.Tensor  # [rows, width]; 0 on padding
    segments: torch.Tensor  # [rows, width]; -1 padding, 0 prefix, s >= 1 the s-th continuation
    pos_row: torch.Tensor  # [P] distinct scored positions (row, k)
    pos_k: torch.Tensor
    tgt_pos: torch.Tensor  # [T] per scored token: index into the P positions (sorted), token, unit slot
    tgt_tok: torch.Tensor
    tgt_unit: torch.Tensor
    tgt_pos_list: list[int]
    unit_ids: list[int]
    keep: int

    @classmethod
    def build(cls, batch: list[_Row], unit_conts: list[tuple[int, ...]], pad_id: int, align: int = 1) -> _Layout:
        pmax = len(batch[0].prefix)
        width = -(-(pmax + max(r.tail for r in batch)) // align) * align
        shape = (len(batch), width)
        input_ids = torch.full(shape, pad_id, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        segments = torch.full(shape, -1, dtype=torch.long)
        pos_row, pos_k, targets, unit_ids = [], [], [], []
        for b, row in enumerate(batch):
            p = len(row.prefix)
            input_ids[b, pmax - p : pmax] = torch.tensor(row.prefix)
            positions[b, pmax - p : pmax] = torch.arange(p)
            segments[b, pmax - p : pmax] = 0
            first = len(pos_row)
            pos_row += [b] * (1 + row.tail)
            pos_k += range(1 + row.tail)
            offset = 0
            for seg, unit in enumerate(row.units, start=1):
                cont = unit_conts[unit]
                n_in, col = len(cont) - 1, pmax + offset
                if n_in:
                    input_ids[b, col : col + n_in] = torch.tensor(cont[:-1])
                    positions[b, col : col + n_in] = torch.arange(p, p + n_in)
                    segments[b, col : col + n_in] = seg
                slot = len(unit_ids)
                targets += [(first if t == 0 else first + offset + t, tok, slot) for t, tok in enumerate(cont)]
                unit_ids.append(unit)
                offset += n_in
        targets.sort()
        tgt_pos, tgt_tok, tgt_unit = (list(col) for col in zip(*targets, strict=True))
        return cls(
            input_ids, positions, segments,
            torch.tensor(pos_row), torch.tensor(pos_k),
            torch.tensor(tgt_pos), torch.tensor(tgt_tok), torch.tensor(tgt_unit),
            tgt_pos, unit_ids, width - pmax + 1,
        )


def _to_device(tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Move int64 CPU tensors in one (pinned, non-blocking on CUDA) copy; returns device views."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view(t.shape))
        start += t.numel()
    return out


def _sliding_window(config) -> int | None:
    """The smallest sliding-attention window of the model's layers, or None if all are full."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if layer_types is not None:
        kinds = set(layer_types) - {"full_attention"}
        unsupported = kinds - {"sliding_attention"}
        if unsupported:
            raise MergeQAUsageError(
                f"backend {REGISTRY_NAME!r} supports full and sliding attention layers; this model "
                f"has {sorted(unsupported)}. Use backend='hf'."
            )
        return window if kinds else None
    if window is not None and getattr(config, "use_sliding_window", True):
        return window
    return None


def register() -> type[MergeQAHFLM]:
    """Register `MergeQAHFLM` as lm-eval model "mergeqa-hf"; calling it again is a no-op."""
    try:
        current = model_registry.get(REGISTRY_NAME)
    except KeyError:
        current = None
    if current is not MergeQAHFLM:
        register_model(REGISTRY_NAME)(MergeQAHFLM)
    return MergeQAHFLM


def make_lm(
    model,
    tokenizer,
    *,
    backend: str = "mergeqa-hf",
    batch_size: int | str = 64,
    device: str | torch.device | None = None,
    **hflm_kwargs,
) -> HFLM:
    """An lm-eval LM around an already-loaded model: `MergeQAHFLM` ("mergeqa-hf") or `HFLM` ("hf").

    `batch_size` counts sequences per forward pass: requests for "hf", distinct contexts (each
    with all of its continuations) for "mergeqa-hf". `device`, when given, moves the model there
    first (HFLM itself ignores `device` for a loaded model). Other keywords go to HFLM, e.g.
    `max_length`, `softmax_dtype`, `add_bos_token`.

        lm = make_lm(model, tok, backend="mergeqa-hf", batch_size=64, device="cuda")
        results = lm_eval.simple_evaluate(model=lm, tasks=[...])
    """
    if backend not in BACKENDS:
        raise MergeQAUsageError(f"unknown scoring backend {backend!r}." + did_you_mean(backend, BACKENDS))
    if device is not None and model.device != torch.device(device):
        model = model.to(device)
    cls = MergeQAHFLM if backend == "mergeqa-hf" else HFLM
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **hflm_kwargs)
