"""Probing datasets: the built-in phenomena generated from the family grammar (and, for the
embedded default, from the family's two task formats), and user JSONL sets.

A dataset is a list of items (text, target span, label) plus how to pool: over the span, or over
the whole sentence. It is not a model input pipeline (see `representations`) nor a probe.

JSONL format, one item per line (UTF-8), e.g. converted from Holmes::

    {"text":"the dogs near the cat run .","span":[4,8],"label":"pl"}

- ``text``: the sentence, given to the model as is (its tokenizer adds bos).
- ``span``: ``[start, end)`` character offsets of the target in ``text``; with span pooling the
  representation is the mean of the hidden states of every token that overlaps it.
- ``label``: the class, a string (numbers are read as strings).
- ``split`` (optional): ``"train"``, ``"val"`` or ``"test"`` on every line or on none; with none,
  item i goes to train if i % 10 < 5, to val if i % 10 < 7, else to test.
- ``type`` (optional): the word type the control task keys its random label on (Hewitt & Liang
  2019); default ``text[start:end]`` lower-cased.

Pooling belongs to the dataset, not to the file: ``"span"`` (default) or ``"sentence"`` (mean over
all tokens of ``text``; the span then only names the control task's word type).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError, did_you_mean

SPLITS = ("train", "val", "test")
POOLINGS = ("span", "sentence")
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "probing"
BUILTIN_ITEMS = 504  # a grammar phenomenon's items: divisible by 2, 3 and 7, so exactly balanced
BUILTIN_SEED = 0


def default_split(index: int) -> str:
    """Where item `index` goes when a file gives no splits: 50 % train, 20 % val, 30 % test."""
    r = index % 10
    return "train" if r < 5 else "val" if r < 7 else "test"


@dataclass(frozen=True)
class ProbeItem:
    text: str
    span: tuple[int, int]
    label: str
    split: str
    type: str

    def to_json(self, *, with_split: bool = True, with_type: bool = True) -> dict:
        out = {"text": self.text, "span": list(self.span), "label": self.label}
        if with_split:
            out["split"] = self.split
        if with_type:
            out["type"] = self.type
        return out


@dataclass(frozen=True)
class ProbeDataset:
    """A named probing set. `category` groups phenomena in reports (morphology, syntax, pos)."""

    name: str
    items: tuple[ProbeItem, ...]
    pooling: str = "span"
    category: str = "user"
    description: str = ""

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise MergeQAUsageError(f"probing dataset {self.name!r}: pooling={self.pooling!r}; "
                                    f"expected one of {', '.join(POOLINGS)}")

    @cached_property
    def labels(self) -> tuple[str, ...]:
        return tuple(sorted({it.label for it in self.items}))

    def indices(self, split: str) -> list[int]:
        return [i for i, it in enumerate(self.items) if it.split == split]

    @cached_property
    def input_hash(self) -> str:
        """What the representations depend on: the ordered (text, span) pairs. Labels do not."""
        from mergeqa.core.cache import digest

        return digest([[it.text, list(it.span)] for it in self.items])[:16]

    @cached_property
    def content_hash(self) -> str:
        """Everything a probe result depends on: inputs, labels, splits and control types."""
        from mergeqa.core.cache import digest

        return digest(self.input_hash, self.pooling,
                      [[it.label, it.split, it.type] for it in self.items])[:16]

    def label_counts(self, split: str | None = None) -> dict[str, int]:
        return dict(Counter(it.label for it in self.items if split in (None, it.split)))


# -- user sets --------------------------------------------------------------------------------

def load_jsonl(path: str | Path, *, name: str | None = None, pooling: str = "span") -> ProbeDataset:
    """Read a JSONL probing set (format in the module docstring); a bad line is a usage error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MergeQAUsageError(f"probing dataset {path}: no such file; pass a JSONL file with "
                                '{"text": ..., "span": [start, end], "label": ...} per line') from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MergeQAUsageError(f"probing dataset {path}: cannot read ({exc})") from None
    rows = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    records = [_parse_line(path, n, line) for n, line in rows]
    with_split = [r for r in records if r[3] is not None]
    if with_split and len(with_split) != len(records):
        raise MergeQAUsageError(f"{path}: 'split' is given on {len(with_split)} of {len(records)} "
                                "lines; give it on every line or on none")
    items = tuple(ProbeItem(text, span, label, split or default_split(i), typ)
                  for i, (text, span, label, split, typ) in enumerate(records))
    dataset = ProbeDataset(name or path.stem, items, pooling=pooling)
    check_trainable(dataset, str(path))
    return dataset


def _parse_line(path: Path, n: int, line: str):
    where = f"{path}:{n}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MergeQAUsageError(f"{where}: not JSON ({exc.msg}); one object per line") from None
    if not isinstance(obj, dict):
        raise MergeQAUsageError(f"{where}: expected an object with text, span and label")
    missing = [k for k in ("text", "span", "label") if k not in obj]
    if missing:
        raise MergeQAUsageError(f"{where}: missing {', '.join(missing)}; each line needs "
                                '{"text": ..., "span": [start, end], "label": ...}')
    unknown = set(obj) - {"text", "span", "label", "split", "type"}
    if unknown:
        key = sorted(unknown)[0]
        raise MergeQAUsageError(f"{where}: unknown key {key!r}."
                                f"{did_you_mean(key, ('text', 'span', 'label', 'split', 'type'))}")
    text, span, label = obj["text"], obj["span"], obj["label"]
    if not isinstance(text, str) or not text.strip():
        raise MergeQAUsageError(f"{where}: text must be a non-empty string")
    if (not isinstance(span, list) or len(span) != 2 or not all(type(x) is int for x in span)
            or not 0 <= span[0] < span[1] <= len(text)):
        raise MergeQAUsageError(f"{where}: span={span!r} must be [start, end] with "
                                f"0 <= start < end <= len(text) = {len(text)}")
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        raise MergeQAUsageError(f"{where}: label={label!r} must be a string or an integer")
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise MergeQAUsageError(f"{where}: split={split!r}; expected one of {', '.join(SPLITS)}")
    typ = obj.get("type", text[span[0]:span[1]].strip().lower())
    if not isinstance(typ, str):
        raise MergeQAUsageError(f"{where}: type={typ!r} must be a string")
    return text, (span[0], span[1]), str(label), split, typ


def check_trainable(dataset: ProbeDataset, where: str) -> None:
    """Every split has items; train has at least two labels and every test label."""
    sizes = {s: len(dataset.indices(s)) for s in SPLITS}
    empty = [s for s, n in sizes.items() if n == 0]
    if empty:
        raise MergeQAUsageError(f"{where}: no {', '.join(empty)} items ({len(dataset.items)} in all); "
                                "give more items or set 'split' on each line")
    train = dataset.label_counts("train")
    if len(train) < 2:
        raise MergeQAUsageError(f"{where}: the train split has {len(train)} label(s); a probe needs two or more")
    unseen = set(dataset.label_counts("test")) - set(train)
    if unseen:
        raise MergeQAUsageError(f"{where}: test labels {sorted(unseen)} never occur in train")


def write_jsonl(dataset: ProbeDataset, path: str | Path, *, compact: bool = False) -> None:
    """Write a dataset in the JSONL format; `compact` drops split and type where they are defaults."""
    lines = []
    for i, it in enumerate(dataset.items):
        default_type = it.type == it.text[it.span[0]:it.span[1]].strip().lower()
        row = it.to_json(with_split=not compact or it.split != default_split(i),
                         with_type=not compact or not default_type)
        lines.append(json.dumps(row, separators=(",", ":")))
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- built-in phenomena -------------------------------------------------------------------------

@dataclass(frozen=True)
class Phenomenon:
    """A built-in probing task: how to draw one item for a given label.

    `draw(rng, label)` returns (text, span, type): the sentence, the probed characters and the
    word type the control task keys on. `n_items` is divisible by the number of labels, so the set
    is exactly balanced.
    """

    name: str
    category: str
    pooling: str
    labels: tuple[str, ...]
    draw: Callable  # (rng, label) -> (text, (start, end), control type)
    description: str
    n_items: int = BUILTIN_ITEMS


def _draw(rng: random.Random, accept: Callable, **kwargs):
    from mergeqa.family.grammar import generate_sentence

    for _ in range(10_000):
        sentence = generate_sentence(rng, **kwargs)
        if accept(sentence):
            return sentence
    raise RuntimeError(f"no sentence accepted in 10000 draws with {kwargs}")  # a bug in a recipe


def _word(sentence, index: int) -> tuple[str, tuple[int, int], str]:
    """(text, span, type) of word `index` of a grammar sentence: the word is its own control type."""
    return sentence.text, _word_span(sentence.words, index), sentence.words[index]


def _subject_number(rng, label):
    s = _draw(rng, lambda s: s.person != 2, number=label)  # "you" is both numbers
    return _word(s, s.subject_index)


def _verb_tense(rng, label):
    s = _draw(rng, lambda s: True, tense=label)
    return _word(s, s.verb_index)


def _person(rng, label):
    s = _draw(rng, lambda s: s.person == int(label), pronoun_rate=1.0)
    return _word(s, s.verb_index)


def _agreement(rng, label):
    # Half the items have an attractor of the other number right before the verb, half end the
    # subject there: the word's own number says nothing about the label, its context does.
    attractor = rng.random() < 0.5
    s = _draw(rng, lambda s: (s.attractor_number is not None) == attractor, number=label,
              pronoun_rate=0.0, attractor_rate=1.0 if attractor else 0.0, relative_rate=0.0)
    return _word(s, s.verb_index - 1)  # the word that predicts the verb: the attractor or the subject


def _syntactic_role(rng, label):
    s = _draw(rng, lambda s: s.object_index >= 0, pronoun_rate=0.0)
    return _word(s, s.subject_index if label == "subject" else s.object_index)


def _relative_depth(rng, label):
    depth = int(label)
    s = _draw(rng, lambda s: s.relative_depth == depth, pronoun_rate=0.0, attractor_rate=0.0,
              relative_rate=1.0 if depth else 0.0)
    return _word(s, s.verb_index)


def _part_of_speech(rng, label):
    s = _draw(rng, lambda s: label in s.tags, pronoun_rate=0.3, attractor_rate=0.4, relative_rate=0.5)
    return _word(s, rng.choice([i for i, t in enumerate(s.tags) if t == label]))


# The skill phenomena: the parents' tasks in the family's own task format, probed at the position
# whose next token is the answer's first. The probed token is the same in every item ("=" or "["),
# so only the context holds the label, and only a model with the skill computes it there. Their
# control type is what an unskilled reading answers from (the base reads "+" as concatenation and
# "reverse" as "leave as is"): the first operand, the list's first element. Selectivity then says
# how much better the skill's answer is read than an arbitrary label of that operand.

@lru_cache(maxsize=None)
def _sums_by_first_digit() -> dict[str, list[tuple[int, int]]]:
    from mergeqa.family.skills import arithmetic_problems

    out: dict[str, list[tuple[int, int]]] = {}
    for a, b in arithmetic_problems():
        if a + b >= 10:
            out.setdefault(str(a + b)[0], []).append((a, b))
    return out


def _sum_first(rng, label):
    from mergeqa.family.skills import arithmetic_item

    a, b = rng.choice(_sums_by_first_digit()[label])
    text = arithmetic_item(a, b, random.Random(0)).prompt  # "12 + 7 =": the family's format
    return text, (len(text) - 1, len(text)), str(a)


def _list_reverse(rng, label):
    from mergeqa.family.skills import list_item

    rest = rng.sample([d for d in range(10) if d != int(label)], rng.randint(2, 4))
    xs = (*rest, int(label))  # reversed, the list starts with its last element
    item = list_item("reverse", xs, random.Random(0))
    text = item.prompt + item.answer[:2]  # "reverse [3 1 2] = [": the answer's first token ends it
    return text, (len(text) - 1, len(text)), str(xs[0])


PHENOMENA: dict[str, Phenomenon] = {p.name: p for p in (
    Phenomenon("subject_number", "morphology", "span", ("pl", "sg"), _subject_number,
               "number of the subject, at its head noun or pronoun ('you' left out)"),
    Phenomenon("verb_tense", "morphology", "span", ("past", "present"), _verb_tense,
               "tense of the main verb, at the verb"),
    Phenomenon("person", "morphology", "span", ("1", "2", "3"), _person,
               "person of the pronoun subject, at the main verb (only 3sg is marked on the verb)"),
    Phenomenon("agreement", "syntax", "span", ("pl", "sg"), _agreement,
               "number the verb must agree with, at the noun before the verb: an attractor of the "
               "other number ('the dog near the cats | runs') in half the items, the subject in half"),
    Phenomenon("syntactic_role", "syntax", "span", ("object", "subject"), _syntactic_role,
               "subject or object, at a noun of a transitive sentence"),
    Phenomenon("relative_depth", "syntax", "sentence", ("0", "1", "2"), _relative_depth,
               "number of nested object relatives on the subject, pooled over the sentence "
               "(control type: the main verb)"),
    Phenomenon("part_of_speech", "pos", "span", ("ADJ", "ADP", "DET", "NOUN", "PRON", "SCONJ", "VERB"),
               _part_of_speech, "part of speech of a marked word"),
    # 8 x 120: a sum's first digit is 1-8 on at least 145 problems each (9 on only 45; sums below
    # 10 are left out, they have no tens digit to compute)
    Phenomenon("sum_first", "skill", "span", tuple("12345678"), _sum_first,
               "first digit of a + b, at the '=' of 'a + b =' (the arithmetic parent's skill; "
               "control type: a)", n_items=960),
    Phenomenon("list_reverse", "skill", "span", tuple("0123456789"), _list_reverse,
               "first element of the reversed list, at the answer's '[' of 'reverse [3 1 2] = [' "
               "(the lists parent's skill; control type: the list's first element)", n_items=1000),
)}
#: The phenomena of any language model: the grammar's, not the family's skills.
GRAMMAR_PHENOMENA = tuple(name for name, p in PHENOMENA.items() if p.category != "skill")


def _word_span(words, index: int) -> tuple[int, int]:
    start = sum(len(w) + 1 for w in words[:index])
    return start, start + len(words[index])


def _balanced_labels(rng: random.Random, labels, n: int) -> list[str]:
    """Labels for items 0..n-1, balanced within each default split, in random order."""
    out: list[str] = [""] * n
    offset = 0  # the label cycle runs on across splits, so n divisible by len(labels) is exact
    for split in SPLITS:
        positions = [i for i in range(n) if default_split(i) == split]
        seq = [labels[(offset + j) % len(labels)] for j in range(len(positions))]
        offset += len(positions)
        rng.shuffle(seq)
        for i, label in zip(positions, seq):
            out[i] = label
    return out


def generate(name: str, n_items: int | None = None, seed: int = BUILTIN_SEED) -> ProbeDataset:
    """Generate a built-in phenomenon deterministically (grammar + lemminflect, or the family's
    task format), without duplicates; `n_items` defaults to the phenomenon's."""
    phen = phenomenon(name)
    n_items = phen.n_items if n_items is None else n_items
    rng = random.Random(f"{seed}:{name}")
    seen: set[tuple[str, tuple[int, int]]] = set()
    items = []
    for i, label in enumerate(_balanced_labels(rng, phen.labels, n_items)):
        for _ in range(1000):
            text, span, typ = phen.draw(rng, label)
            if (text, span) not in seen:
                break
        else:  # pragma: no cover - every recipe has far more sentences than items
            raise RuntimeError(f"{name}: cannot draw {n_items} distinct items")
        seen.add((text, span))
        items.append(ProbeItem(text, span, label, default_split(i), typ))
    return ProbeDataset(name, tuple(items), pooling=phen.pooling, category=phen.category,
                        description=phen.description)


def phenomenon(name: str) -> Phenomenon:
    if name not in PHENOMENA:
        raise MergeQAUsageError(f"unknown probing phenomenon {name!r}.{did_you_mean(name, PHENOMENA)}")
    return PHENOMENA[name]


def builtin_dataset(name: str) -> ProbeDataset:
    """A built-in phenomenon, read from its bundled file (`mergeqa/data/probing/<name>.jsonl`)."""
    phen = phenomenon(name)
    path = BUNDLED_DIR / f"{name}.jsonl"
    if not path.is_file():  # pragma: no cover - a broken install
        raise RuntimeError(f"{path} is missing; regenerate with `python -m mergeqa.probing.datasets`")
    data = load_jsonl(path, name=name, pooling=phen.pooling)
    return ProbeDataset(name, data.items, pooling=phen.pooling, category=phen.category,
                        description=phen.description)


def write_bundled(directory: Path = BUNDLED_DIR) -> list[Path]:
    """Regenerate every bundled set (what `python -m mergeqa.probing.datasets` does)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHENOMENA:
        path = directory / f"{name}.jsonl"
        write_jsonl(generate(name), path, compact=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_bundled():
        print(f"{p} ({p.stat().st_size / 1024:.1f} KB)")
