"""Training loop for the tiny family: a small Llama trained from scratch, then fine-tuned.

Plain torch on CPU, seeded and single-process, so a recipe gives the same weights on the same
software stack. It is not a general trainer; it exists to make the embedded default.

    train(model, tokenizer, {"grammar": (lines, 0.2), "arithmetic": (pairs, 0.6)}, steps=..., ...)

Each example of a batch comes from one of the named sources, drawn by weight. (Batches drawn
whole from one source run faster but learned the list skill at a third of the rate.) A parent is fine-tuned with
`token_ids` and `token_lr`: the embedding rows of its notation tokens learn at `token_lr`, every
other embedding row stays as it is, and the rest of the model learns at `lr`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence


def new_model(vocab_size: int, arch: dict, seed: int, tokenizer):
    """A randomly initialised LlamaForCausalLM of the recipe's shape."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **arch,
    )
    return LlamaForCausalLM(config)


def _encode(tokenizer, examples: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(token ids wrapped in bos ... eos, number of prompt tokens) per (prompt, completion)."""
    # two batched calls (the Rust tokenizer's batch path): one call per line took 13 s of the build
    full = tokenizer([prompt + completion for prompt, completion in examples])["input_ids"]
    prompts = tokenizer([prompt for prompt, _ in examples])["input_ids"]
    return [(ids + [tokenizer.eos_token_id], len(p_ids) if prompt else 1)  # bos is never a target
            for ids, p_ids, (prompt, _) in zip(full, prompts, examples)]


def _optimizer(model, lr: float, token_ids: Sequence[int] | None, token_lr: float | None):
    """AdamW over the whole model, or (token_ids given) the notation rows at token_lr, the other
    embedding rows frozen (their gradient is zeroed each step) and the rest at lr, no decay."""
    import torch

    betas = (0.9, 0.98)
    if token_ids is None:
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=betas), None
    embedding = model.get_input_embeddings().weight
    keep = torch.zeros_like(embedding)
    keep[list(token_ids)] = 1.0
    rest = [p for p in model.parameters() if p is not embedding]
    groups = [{"params": [embedding], "lr": token_lr}, {"params": rest, "lr": lr}]
    return torch.optim.AdamW(groups, weight_decay=0.0, betas=betas), (embedding, keep)


def train(model, tokenizer, sources: Mapping[str, tuple[Sequence[tuple[str, str]], float]], *,
          steps: int, batch_size: int, lr: float, seed: int, token_ids: Sequence[int] | None = None,
          token_lr: float | None = None, log=None) -> list[float]:
    """Train `model` in place on (prompt, completion) pairs, each wrapped in bos ... eos.

    `sources` maps a name to (pairs, weight): every example of a batch comes from a source drawn
    by weight. The loss covers the completion only (a plain text line is ("", line)). Returns the
    loss curve.
    """
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    names = sorted(sources)
    encoded = {name: _encode(tokenizer, sources[name][0]) for name in names}
    weights = [sources[name][1] for name in names]
    pad = tokenizer.pad_token_id
    opt, frozen_rows = _optimizer(model, lr, token_ids, token_lr)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))
    model.train()
    losses = []
    for step in range(steps):
        batch = []
        for name in rng.choices(names, weights=weights, k=batch_size):
            pool = encoded[name]
            batch.append(pool[rng.randrange(len(pool))])
        width = max(len(seq) for seq, _ in batch)
        ids = torch.full((batch_size, width), pad, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        for i, (seq, n_prompt) in enumerate(batch):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, n_prompt : len(seq)] = ids[i, n_prompt : len(seq)]
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if frozen_rows is not None:
            embedding, keep = frozen_rows
            embedding.grad.mul_(keep)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"step {step + 1}/{steps} loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses
