"""Every layer's hidden states, mean-pooled per probing item: what the probes are trained on.

One forward pass per distinct sentence per model (sentences shared by several sets run once),
batched with right padding, no lm_head. Cached under `<cache>/representations/` by model content
hash x dataset inputs (text, span) x pooling x dtype, so a re-run loads no model at all.
Not a probe and not a general feature extractor: the pooling is mean over a span or the sentence.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mergeqa.core.errors import MergeQAUsageError

from .datasets import ProbeDataset

HIDDEN_FILE = "hidden.npy"


def cache_entry(cache_dir: Path, model_hash: str, dataset: ProbeDataset, dtype: str) -> Path:
    key = f"{model_hash[:16]}-{dataset.input_hash}-{dataset.pooling}-{dtype}"
    return Path(cache_dir) / "representations" / key


def representations(ref, datasets: Sequence[ProbeDataset], *, device: str, dtype: str,
                    cache_dir: Path, batch_size: int = 64) -> dict[str, np.ndarray]:
    """name -> float32 array [items, layers + 1, hidden] (index 0: the embeddings) for `ref`.

    Only sets missing from the cache are encoded, all in one pass over their distinct sentences.
    """
    from mergeqa.core.cache import build_once, log_event

    entries = {d.name: cache_entry(cache_dir, ref.content_hash, d, dtype) for d in datasets}
    missing = [d for d in datasets if not entries[d.name].is_dir()]
    if missing:
        start = time.perf_counter()
        encoded = encode(ref.model(device, dtype), ref.tokenizer(), missing, device=device,
                         batch_size=batch_size)
        for d in missing:
            meta = {"model": str(ref.path), "dataset": d.name, "items": len(d.items),
                    "pooling": d.pooling, "dtype": dtype, "shape": list(encoded[d.name].shape)}

            def write(tmp: Path, array=encoded[d.name], meta=meta) -> None:
                np.save(tmp / HIDDEN_FILE, array)
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

            build_once(entries[d.name], write)
        log_event(Path(cache_dir), "representations_built", model=ref.name,
                  datasets=[d.name for d in missing], seconds=round(time.perf_counter() - start, 2))
    return {d.name: np.load(entries[d.name] / HIDDEN_FILE) for d in datasets}


def encode(model, tokenizer, datasets: Sequence[ProbeDataset], *, device: str,
           batch_size: int = 64) -> dict[str, np.ndarray]:
    """Pool every layer's hidden states for each item of `datasets` (no cache)."""
    import torch

    texts = sorted({it.text for d in datasets for it in d.items}, key=lambda t: (len(t), t))
    # text -> [(dataset name, item index, span or None for the whole sentence)]
    wanted: dict[str, list] = {t: [] for t in texts}
    for d in datasets:
        for i, it in enumerate(d.items):
            wanted[it.text].append((d.name, i, it.span if d.pooling == "span" else None))
    out: dict[str, np.ndarray | None] = {d.name: None for d in datasets}
    base = model.base_model  # the decoder without lm_head: no logits over the vocabulary
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            enc = tokenizer(batch, return_offsets_mapping=True, padding=True, padding_side="right",
                            return_tensors="pt")
            offsets, attention = enc.pop("offset_mapping"), enc["attention_mask"]
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            hidden = base(**enc, output_hidden_states=True).hidden_states
            stacked = torch.stack(hidden, dim=1).float()  # [batch, layers + 1, tokens, hidden]
            rows, weights, keys = [], [], []
            for b, text in enumerate(batch):
                for name, index, span in wanted[text]:
                    w = _token_weights(offsets[b], attention[b], span)
                    if w.sum() == 0:
                        raise MergeQAUsageError(f"probing dataset {name!r} item {index}: span {span} "
                                                f"covers no token of {text!r}; fix the span offsets")
                    rows.append(b)
                    weights.append(w / w.sum())
                    keys.append((name, index))
            pooled = torch.einsum("mt,mlth->mlh", torch.stack(weights).to(stacked.device),
                                  stacked[torch.tensor(rows, device=stacked.device)]).cpu().numpy()
            for (name, index), vector in zip(keys, pooled):
                if out[name] is None:
                    n = len(next(d for d in datasets if d.name == name).items)
                    out[name] = np.zeros((n, *vector.shape), dtype=np.float32)
                out[name][index] = vector
    return out  # type: ignore[return-value]


def _token_weights(offsets, attention, span):
    """1 for each real token overlapping `span` (every real token when span is None), else 0."""
    starts, ends = offsets[:, 0], offsets[:, 1]
    real = (ends > starts) & (attention > 0)  # special tokens (bos, pad) have empty offsets
    if span is not None:
        real &= (starts < span[1]) & (ends > span[0])
    return real.float()
