"""The merge loads through transformers, agrees with its parents' architecture and is finite.

The cheapest checks run first: if these fail, nothing downstream is worth running.
"""

from __future__ import annotations

from mergeqa.decision.verdict import Verdict, decide

ARCH_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "intermediate_size", "vocab_size")


def test_loads(merged_model, mergeqa_session, request):
    from mergeqa.models.refs import resolve_device

    model = merged_model.model(resolve_device(mergeqa_session.device), mergeqa_session.dtype)
    n_params = sum(p.numel() for p in model.parameters())
    decide(request, Verdict.threshold(
        "load", merged_model.name, obtained=n_params, threshold=0, op=">", summary="parameters loaded",
        content_hash=merged_model.content_hash, cause="the checkpoint holds no weights transformers recognises",
        fix="re-save it with save_pretrained, or re-run the merge"))


def test_config_matches_parents(merged_model, parent_models, base_model, request):
    """The parents' architecture keys; num_hidden_layers as the merge config builds it (a
    passthrough stacks slices), not comparable when a layer count changed and no config says how."""
    from mergeqa.models.provenance import provenance_for

    merged = merged_model.config
    given = [p.path for p in parent_models] + ([base_model.path] if base_model is not None else [])
    prov = provenance_for(merged_model.path, given, merged_model.merge_config)
    layers = "num_hidden_layers"
    diffs, reason = [], ""
    for parent in parent_models:
        for key in ARCH_KEYS:
            if key == layers and (prov is not None or merged.get(key) != parent.config.get(key)):
                continue
            if merged.get(key) != parent.config.get(key):
                diffs.append(f"{key}: merged {merged.get(key)!r}, {parent.name} {parent.config.get(key)!r}")
    if prov is not None and prov.num_layers is not None:
        if merged.get(layers) != prov.num_layers:
            diffs.append(f"{layers}: merged {merged.get(layers)!r}, {prov.num_layers} built by {prov.origin} "
                         f"({prov.layer_plan() or 'its slices'})")
    elif prov is not None:
        reason = f"{layers} not compared: {prov.problem()}"
    elif any(merged.get(layers) != p.config.get(layers) for p in parent_models):
        theirs = " / ".join(sorted({str(p.config.get(layers)) for p in parent_models}))
        reason = (f"{layers} {merged.get(layers)!r} here, {theirs} in the parents, and no merge config "
                  "(mergekit_config.yml in the merged directory, or --merge-config) says how the layers were built: "
                  "not comparable; the other keys compared")
    verdict = Verdict("config", merged_model.name, figures={"obtained": len(diffs), "threshold": 0,
                                                             "n": len(ARCH_KEYS) * len(parent_models)},
                      details=diffs, summary=f"config.json disagrees with the parents' ({diffs[0]})" if diffs else "",
                      expected="the parents' architecture keys" + (f", {layers} from {prov.origin}" if prov else ""),
                      reason=reason,
                      cause="parents of different architectures, or a merge config with the wrong base_model",
                      fix="merge parents of one architecture and check base_model").settle()
    decide(request, verdict)


def test_weights_finite(merged_model, mergeqa_session, request):
    import torch

    from mergeqa.models.refs import resolve_device

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
