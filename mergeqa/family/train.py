"""Training loop for the tiny family: a small Llama trained from scratch, then fine-tuned.

Plain torch on CPU, seeded and single-process, so a recipe gives the same weights on the same
software stack. It is not a general trainer; it exists to make the embedded default.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


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


def train(model, tokenizer, examples: Sequence[tuple[str, str]], *, steps: int, batch_size: int,
          lr: float, seed: int, log=None) -> list[float]:
    """Train `model` in place on (prompt, completion) pairs, each wrapped in bos ... eos.

    The loss covers the completion only (a plain text line is ("", line)). Returns the loss curve.
    """
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    encoded = []
    for prompt, completion in examples:
        ids = tokenizer(prompt + completion)["input_ids"] + [tokenizer.eos_token_id]
        n_prompt = len(tokenizer(prompt)["input_ids"]) if prompt else 1  # bos is never a target
        encoded.append((ids, n_prompt))
    pad = tokenizer.pad_token_id
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))
    model.train()
    losses = []
    for step in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
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
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"step {step + 1}/{steps} loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return losses
