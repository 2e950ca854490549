"""The merge loads through transformers, agrees with its parents' architecture and is finite.

The cheapest checks run first: if these fail, nothing downstream is worth running.
"""

from __future__ import annotations

ARCH_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "intermediate_size", "vocab_size")


def test_loads(merged_model, mergeqa_session, record_figure):
    from mergeqa.models import resolve_device

    model = merged_model.model(resolve_device(mergeqa_session.device), mergeqa_session.dtype)
    n_params = sum(p.numel() for p in model.parameters())
    record_figure("load", "parameters", n_params)
    record_figure("load", "content_hash", merged_model.content_hash)
    assert n_params > 0, f"{merged_model.path}: the model loaded with no parameters"


def test_config_matches_parents(merged_model, parent_models, record_figure):
    merged = merged_model.config
    diffs = []
    for parent in parent_models:
        for key in ARCH_KEYS:
            if merged.get(key) != parent.config.get(key):
                diffs.append(f"  {key}: merged {merged.get(key)!r}, {parent.name} {parent.config.get(key)!r}")
    record_figure("config", "mismatches", len(diffs))
    assert not diffs, (
        f"{merged_model.path}/config.json disagrees with the parents':\n" + "\n".join(diffs)
        + "\nLikely cause: parents of different architectures, or a merge config with the wrong base_model.")


def test_weights_finite(merged_model, mergeqa_session, record_figure):
    import torch

    from mergeqa.models import resolve_device

    model = merged_model.model(resolve_device(mergeqa_session.device), mergeqa_session.dtype)
    bad = [(name, int((~torch.isfinite(p)).sum())) for name, p in model.named_parameters()
           if not torch.isfinite(p).all()]
    record_figure("weights", "non_finite_tensors", len(bad))
    assert not bad, (f"{merged_model.path}: {len(bad)} tensor(s) hold NaN/Inf, first {bad[0][0]} "
                     f"({bad[0][1]} values).\nLikely cause: an fp16 merge overflowed (merge in "
                     "float32/bfloat16) or a parent is already broken.")
