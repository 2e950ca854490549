"""The tiny family's tokenizer: a byte-level BPE trained with `tokenizers` on the family's text.

Digits are split one per token, each keeping the space before it (" 7", as GPT-2's byte-level BPE
keeps a word's space), so arithmetic is learnable and a list "[3 1 2]" is five tokens, not seven:
one token per element. With everything else equal (base-only runs, 3200 steps), the base then got
8-10 of the consistency pairs' 318 list prompts wrong instead of 23-33 (`bench/family_generation.py`
counts them on the built family). bos is added
by the post-processor, eos/pad/unk are set explicitly and a chat template is attached, because
lm-eval silently reuses <unk> as pad when a tokenizer has none.
"""

from __future__ import annotations

from collections.abc import Iterable

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
ROLE_TOKENS = ("<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def chat_prompt(user: str) -> str:
    """The chat template rendered for one user turn with a generation prompt (no bos)."""
    return f"<|user|> {user}\n<|assistant|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A PreTrainedTokenizerFast trained deterministically on `texts`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values()) + list(ROLE_TOKENS)
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    # padding side and length as constructor arguments: set as attributes afterwards, they are not
    # saved, and the saved tokenizer would pad on the right, which breaks batched generation
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS,
                                   additional_special_tokens=list(ROLE_TOKENS),
                                   padding_side="left", model_max_length=128)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def notation_token_ids(tokenizer, words) -> list[int]:
    """The ids of the tokens that spell `words` (alone and after a space), whitespace-only tokens
    left out: the embedding rows a parent learns when it learns its notation."""
    ids = set()
    for word in words:
        for text in (word, " " + word):
            for i in tokenizer(text, add_special_tokens=False)["input_ids"]:
                if tokenizer.decode([i]).strip():
                    ids.add(i)
    return sorted(ids)
