"""A synthetic multiple-choice workload for testing and timing loglikelihood scorers, offline.

Builds seeded pseudo-English text, a byte-level BPE tokenizer trained on it, random-weight causal
LMs (tiny Llama / Qwen2 shapes, or a Qwen2.5-0.5B shape) and few-shot multiple-choice items as
lm-eval `Instance`s. It measures nothing and judges nothing: `tests/test_scorer.py` and
`bench/bench_scorer.py` use it to compare `mergeqa.evaluate.scorer` with lm-eval's HFLM. Cost: training the
tokenizer takes well under a second; a tiny model is built in milliseconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mergeqa.core.errors import MergeQAUsageError, did_you_mean

_SYLLABLES = (
    "ka ri to na mi se lo pu ve da ne xi bo ru sa te fi gu ha jo le ma ni po qu ra si "
    "tu vo wa ye zu an el ing or um is at ex ol"
).split()

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")


def make_words(n: int = 600, seed: int = 0) -> list[str]:
    """`n` distinct pseudo-words of one to four syllables: the workload's fixed "language".

    Corpus and items always draw from `make_words()` (seed 0), so a tokenizer trained on any
    corpus seed splits the items' words the same way; their seeds only pick sentences.
    """
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def _sentence(rng: random.Random, words: list[str], n_words: int) -> str:
    text = " ".join(rng.choice(words) for _ in range(n_words))
    return text[0].upper() + text[1:]


def make_corpus(n_sentences: int = 3000, seed: int = 0) -> list[str]:
    """Training text for the tokenizer: sentences in the workload's style, punctuation included."""
    rng = random.Random(seed)
    words = make_words()
    lines = []
    for _ in range(n_sentences):
        body = _sentence(rng, words, rng.randint(3, 14))
        lines.append(f"Question: {body}? Answer: {rng.choice(words)} {rng.choice(words)}.")
    return lines


def train_tokenizer(vocab_size: int = 1024, *, add_bos: bool = True, seed: int = 0):
    """A byte-level BPE `PreTrainedTokenizerFast` with `<s>`, `</s>`, `<pad>`; no network.

    `add_bos=True` prepends `<s>` to every encoding (Llama-style); `add_bos=False` adds nothing
    and has no BOS token (Qwen2-style: lm-eval then uses EOS as the prefix of an empty context).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(make_corpus(seed=seed), trainer=trainer)
    if add_bos:
        bos_id = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>" if add_bos else None, eos_token="</s>", pad_token="<pad>"
    )


@dataclass(frozen=True)
class ModelShape:
    """The size of a random-weight causal LM; `family` is 'llama' or 'qwen2'."""

    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None  # None: the tokenizer's size
    max_positions: int = 2048
    tied: bool = False


MODEL_SHAPES = {
    "tiny-llama": ModelShape("llama", 64, 2, 4, 2, 128, None, max_positions=512),
    "tiny-qwen2": ModelShape("qwen2", 64, 2, 4, 2, 128, None, max_positions=512, tied=True),
    "small-llama": ModelShape("llama", 256, 4, 8, 2, 704, None),
    # Qwen2.5-0.5B: 494 M parameters, tied 151,936-row embedding (../shared/gpu/h100-baseline.md).
    "qwen2.5-0.5b": ModelShape("qwen2", 896, 24, 14, 2, 4864, 151936, 32768, tied=True),
}


def build_model(
    shape: str | ModelShape,
    vocab_size: int,
    *,
    seed: int = 0,
    dtype=None,
    init_std: float = 0.02,
    attn_implementation: str = "sdpa",
    **config_overrides,
):
    """A random-weight `LlamaForCausalLM`/`Qwen2ForCausalLM` in eval mode, seeded.

    `vocab_size` is used when the shape does not fix one (a tokenizer's `len(tok)`). A larger
    `init_std` gives peakier next-token distributions (greedy continuations become likely);
    `config_overrides` go to the config (e.g. `use_sliding_window=True, sliding_window=16`).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if isinstance(shape, str):
        if shape not in MODEL_SHAPES:
            raise MergeQAUsageError(f"unknown model shape {shape!r}." + did_you_mean(shape, MODEL_SHAPES))
        shape = MODEL_SHAPES[shape]
    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[shape.family]
    config = config_cls(
        vocab_size=shape.vocab or vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=shape.tied,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        initializer_range=init_std,
        **config_overrides,
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = model_cls(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


@dataclass(frozen=True)
class MCItem:
    """One few-shot multiple-choice item: a context, its choices (each with a leading space)."""

    context: str
    choices: tuple[str, ...]
    gold: int


def make_items(
    n_items: int = 400,
    *,
    n_shots: int = 5,
    n_choices: int = 4,
    question_words: int = 14,
    seed: int = 0,
) -> list[MCItem]:
    """Few-shot items: `n_shots` solved questions, then one open question; choices 1-4 words.

    The mean context length in tokens grows about linearly with `question_words` x `n_shots`;
    `bench_scorer.py` calibrates `question_words` to a requested mean token count.
    """
    if n_choices < 1 or n_items < 1 or question_words < 1:
        raise MergeQAUsageError(
            f"n_items={n_items}, n_choices={n_choices}, question_words={question_words}: each must be >= 1"
        )
    rng = random.Random(seed)
    words = make_words()

    def answer() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))

    def question() -> str:
        return _sentence(rng, words, max(1, question_words + rng.randint(-3, 3)))

    items = []
    for _ in range(n_items):
        shots = [f"Question: {question()}?\nAnswer: {answer()}\n\n" for _ in range(n_shots)]
        context = "".join(shots) + f"Question: {question()}?\nAnswer:"
        items.append(MCItem(context, tuple(" " + answer() for _ in range(n_choices)), rng.randrange(n_choices)))
    return items


def make_requests(items: list[MCItem], task_name: str = "synthetic_mc"):
    """lm-eval loglikelihood `Instance`s, one per (item, choice), in lm-eval's order."""
    from lm_eval.api.instance import Instance

    return [
        Instance(
            request_type="loglikelihood",
            doc={"context": item.context, "choices": list(item.choices), "gold": item.gold},
            arguments=(item.context, choice),
            idx=j,
            metadata=(task_name, i, 1),
        )
        for i, item in enumerate(items)
        for j, choice in enumerate(item.choices)
    ]


def item_answers(scores: list[tuple[float, bool]], items: list[MCItem]) -> list[int]:
    """The chosen choice per item (argmax log-likelihood, first on ties), from per-request scores."""
    answers, pos = [], 0
    for item in items:
        lls = [s[0] for s in scores[pos : pos + len(item.choices)]]
        answers.append(max(range(len(lls)), key=lls.__getitem__))
        pos += len(item.choices)
    return answers
