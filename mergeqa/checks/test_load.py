"""The merge loads through transformers, agrees with its parents' architecture and is finite.

The cheapest checks run first: if these fail, nothing downstream is worth running.
"""

from __future__ import annotations

from mergeqa.verdict import Verdict, decide

ARCH_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "intermediate_size", "vocab_size")


def test_loads(merged_model, mergeqa_session, request):
    from mergeqa.models import resolve_device

    model = merged_model.model(resolve_device(mergeqa_session.device), mergeqa_session.dtype)
    n_params = sum(p.numel() for p in model.parameters())
    decide(request, Verdict.threshold(
        "load", merged_model.name, obtained=n_params, threshold=0, op=">", summary="parameters loaded",
        content_hash=merged_model.content_hash, cause="the checkpoint holds no weights transformers recognises",
        fix="re-save it with save_pretrained, or re-run the merge"))


def test_config_matches_parents(merged_model, parent_models, request):
    merged = merged_model.config
    diffs = []
    for parent in parent_models:
        for key in ARCH_KEYS:
            if merged.get(key) != parent.config.get(key):
                diffs.append(f"{key}: merged {merged.get(key)!r}, {parent.name} {parent.config.get(key)!r}")
    verdict = Verdict("config", merged_model.name, figures={"obtained": len(diffs), "threshold": 0,
                                                             "n": len(ARCH_KEYS) * len(parent_models)},
                      details=diffs, summary=f"config.json disagrees with the parents' ({diffs[0]})" if diffs else "",
                      expected="the parents' architecture keys",
                      cause="parents of different architectures, or a merge config with the wrong base_model",
                      fix="merge parents of one architecture and check base_model").settle()
    decide(request, verdict)


def test_weights_finite(merged_model, mergeqa_session, request):
    import torch

    from mergeqa.models import resolve_device

    model = merged_model.model(resolve_device(mergeqa_session.device), mergeqa_session.dtype)
    bad = [(name, int((~torch.isfinite(p)).sum())) for name, p in model.named_parameters()
           if not torch.isfinite(p).all()]
    decide(request, Verdict(
        "weights", merged_model.name, figures={"obtained": len(bad), "threshold": 0},
        details=[f"{name}: {count} NaN/Inf values" for name, count in bad],
        summary=f"{len(bad)} tensor(s) hold NaN/Inf" + (f", first {bad[0][0]}" if bad else ""),
        expected="0 tensors with NaN/Inf",
        cause="an fp16 merge overflowed, or a parent is already broken",
        fix="merge in float32/bfloat16 (dtype and out_dtype), or repair the parent").settle())
