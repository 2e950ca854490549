"""Greedy, batched, content-cached answers of a model to conversations, through its chat template.

    settings = GenerationSettings(max_new_tokens=16)
    answers = generate(ref, [["23 + 14 ="], ["sort [5 4 9] =", "reverse [4 5 9] ="]], settings, cache_dir)
    answers.turns[1]          # ["[4 5 9]", "[9 5 4]"]: the model's answer to each user turn

Turn k of every conversation is generated in one batch (left-padded), with the model's own earlier
answers in the history, as MT-Bench does. An entry is keyed by the model's content hash x the hash
of the conversations (the prompt set's content) x the settings, written atomically under a lock, so
a parent is answered once across runs, merges and xdist workers. Used by the conflict and judge
checks (and by a local judge model); not a sampler: decoding is greedy only.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from mergeqa.core import progress
from mergeqa.core.cache import digest, log_event, write_json

ANSWERS_VERSION = 1  # bump when the entry format or the decoding changes


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated; every field is part of the cache key.

    `chat`: "auto" renders through the tokenizer's chat template when it has one, "template"
    requires one, "plain" feeds the user turns as raw text (turns joined by newlines).
    `device` is a resolved device type ("cpu", "cuda"), `dtype` a torch dtype name.
    """

    max_new_tokens: int = 24
    batch_size: int = 16
    chat: str = "auto"
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        if self.chat not in ("auto", "template", "plain"):
            raise ValueError(f"chat={self.chat!r}: expected 'auto', 'template' or 'plain'")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}, batch_size={self.batch_size}: both must be >= 1")

    def key(self) -> dict:
        return {**asdict(self), "device": self.device.split(":")[0], "version": ANSWERS_VERSION}


@dataclass
class Answers:
    """One model's answers: `turns[i][k]` answers user turn k of conversation i.

    `truncated` counts prompts cut from the left to fit the model's context; `seconds` and
    `new_tokens` are those of the run that generated them (kept in the cache entry).
    """

    model: str
    model_hash: str
    prompts_hash: str
    turns: list[list[str]]
    settings: dict
    seconds: float = 0.0
    new_tokens: int = 0
    truncated: int = 0
    rendering: str = "template"  # how prompts were rendered: "template" or "plain"
    cached: bool = False

    def first(self) -> list[str]:
        """The answer to each conversation's first turn."""
        return [t[0] for t in self.turns]


def prompts_hash(conversations: Sequence[Sequence[str]]) -> str:
    """The content hash of a prompt set: the user turns exactly as they are sent."""
    return digest([list(c) for c in conversations])


# -- the cache -----------------------------------------------------------------------------------
def entry_path(cache_dir: Path, model_hash: str, p_hash: str, settings: GenerationSettings) -> Path:
    key = digest(model_hash, p_hash, settings.key())
    return Path(cache_dir) / "answers" / model_hash[:16] / f"{p_hash[:12]}-{key[:16]}.json"


def _read(path: Path) -> Answers | None:
    try:
        raw = json.loads(path.read_text())
        return Answers(**raw, cached=True)
    except (OSError, ValueError, TypeError):
        return None  # absent or unreadable: generate again and overwrite


def _write(path: Path, answers: Answers) -> None:
    data = asdict(answers)
    data.pop("cached")
    write_json(path, data)


def generate(ref, conversations: Sequence[Sequence[str]], settings: GenerationSettings, cache_dir: Path,
             *, cached_only: bool = False) -> Answers | None:
    """`ref`'s (a ModelRef) answers to every turn of `conversations` (lists of user turns),
    generating only when the cache lacks them. cached_only=True returns None instead."""
    conversations = [list(c) for c in conversations]
    if not conversations:
        raise ValueError("no conversations to answer")
    for i, c in enumerate(conversations):
        if not c or not all(isinstance(t, str) for t in c):
            raise ValueError(f"conversation {i}: expected a non-empty list of user turns (strings), got {c!r}")
    model_hash, p_hash = ref.content_hash, prompts_hash(conversations)
    path = entry_path(cache_dir, model_hash, p_hash, settings)
    found = _read(path)
    if found is not None or cached_only:
        return found
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # two workers on one model: the second reads the first's
        found = _read(path)
        if found is not None:
            return found
        started = time.perf_counter()
        n_turns = sum(len(c) for c in conversations)
        progress.say(f"answering with {ref.name}: {len(conversations)} conversations, {n_turns} turns, "
                     f"up to {settings.max_new_tokens} new tokens each...")
        model = ref.model(settings.device, settings.dtype)
        turns, new_tokens, truncated, rendering = answer_conversations(model, ref.tokenizer(), conversations, settings)
        answers = Answers(ref.name, model_hash, p_hash, turns, settings.key(),
                          round(time.perf_counter() - started, 3), new_tokens, truncated, rendering)
        _write(path, answers)
        progress.say(f"answered with {ref.name} in {progress.duration(answers.seconds)}")
    log_event(Path(cache_dir), "answered", model=ref.name, model_hash=model_hash[:16], prompts=p_hash[:12],
              conversations=len(turns), turns=sum(len(t) for t in turns), seconds=answers.seconds)
    return answers


# -- decoding ------------------------------------------------------------------------------------
def _rendering(tokenizer, chat: str) -> str:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat == "template" and not has_template:
        from mergeqa.core.errors import MergeQAUsageError

        raise MergeQAUsageError(f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')}: no chat template; "
                                "ship one in tokenizer_config.json (chat_template) or generate with chat = \"plain\"")
    return "template" if has_template and chat != "plain" else "plain"


def render(tokenizer, history: list[dict], rendering: str) -> list[int]:
    """Token ids of a conversation ending with a user turn, ready for the assistant's answer."""
    if rendering == "template":
        text = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
        bos = tokenizer.bos_token
        special = not (bos and text.startswith(bos))  # a template that writes bos itself
    else:
        text, special = "\n".join(m["content"] for m in history), True
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = model.config.eos_token_id if eos is None else eos
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def context_length(model) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def answer_conversations(model, tokenizer, conversations: list[list[str]],
                         settings: GenerationSettings) -> tuple[list[list[str]], int, int, str]:
    """(answers per conversation and turn, new tokens, truncated prompts, rendering): turn k of all
    conversations in batches of `settings.batch_size`, each history holding the earlier answers."""
    from mergeqa.core.threads import torch_threads

    rendering = _rendering(tokenizer, settings.chat)
    answers: list[list[str]] = [[] for _ in conversations]
    histories: list[list[dict]] = [[] for _ in conversations]
    new_tokens = truncated = 0
    # one torch thread on CPU: tiny batches gain nothing from more, and on a busy 2-core machine
    # more threads make greedy generation many times slower (oversubscribed OpenMP barriers)
    with torch_threads(1) if settings.device.startswith("cpu") else contextlib.nullcontext():
        for turn in range(max(len(c) for c in conversations)):
            active = [i for i, c in enumerate(conversations) if turn < len(c)]
            for i in active:
                histories[i].append({"role": "user", "content": conversations[i][turn]})
            prompts = [render(tokenizer, histories[i], rendering) for i in active]
            for start in range(0, len(active), settings.batch_size):
                texts, n_new, n_cut = greedy_batch(model, tokenizer, prompts[start:start + settings.batch_size],
                                                   settings.max_new_tokens)
                new_tokens, truncated = new_tokens + n_new, truncated + n_cut
                for i, text in zip(active[start:start + settings.batch_size], texts):
                    answers[i].append(text)
                    histories[i].append({"role": "assistant", "content": text})
    return answers, new_tokens, truncated, rendering


def greedy_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[str], int, int]:
    """Greedy continuations of token-id prompts, left-padded into one batch: (texts, new tokens,
    prompts cut from the left to fit the context). A continuation ends at eos (not included)."""
    import torch

    limit = context_length(model)
    keep = None if limit is None else max(1, limit - max_new_tokens)
    cut = sum(1 for p in prompts if keep is not None and len(p) > keep)
    prompts = [p[-keep:] if keep is not None else p for p in prompts]
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    device = next(model.parameters()).device
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=eos or None, pad_token_id=pad)
    with torch.no_grad():
        out = model.generate(ids.to(device), attention_mask=mask.to(device), generation_config=config)
    texts, n_new = [], 0
    for row in out[:, width:].tolist():
        end = next((j for j, t in enumerate(row) if t in eos), len(row))
        n_new += end
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return texts, n_new, cut

