"""A small English grammar with number, person and tense agreement, inflected with lemminflect.

It generates the tiny family's base-training text, its grammar evaluation sets and the probing
sets, so every sentence comes with the features it was built from. Not a parser, not a corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

NOUNS = ("dog", "cat", "bird", "horse", "teacher", "farmer", "child", "doctor", "student",
         "king", "girl", "boy", "mouse", "friend", "baker", "pilot")
INTRANSITIVE = ("run", "sleep", "jump", "walk", "sing", "smile", "laugh", "wait", "swim", "fall")
TRANSITIVE = ("see", "like", "chase", "help", "know", "find", "follow", "call", "love", "watch")
ADJECTIVES = ("old", "young", "small", "big", "happy", "quiet", "red", "tall")
PREPOSITIONS = ("near", "behind", "with", "beside")
# person/number -> (pronoun, present-tense tag)
PRONOUNS = {(1, "sg"): "i", (2, "sg"): "you", (3, "sg"): "she",
            (1, "pl"): "we", (2, "pl"): "you", (3, "pl"): "they"}


@lru_cache(maxsize=None)
def inflect(lemma: str, tag: str) -> str:
    """The lemminflect inflection of `lemma` for a Penn tag (VBZ, VBP, VBD, NNS, ...)."""
    from lemminflect import getInflection

    if tag in ("NN", "VB"):
        return lemma
    forms = getInflection(lemma, tag)
    if not forms:  # pragma: no cover - every lemma above is in lemminflect's tables
        raise ValueError(f"lemminflect has no {tag} form of {lemma!r}")
    return forms[0]


def verb_form(lemma: str, *, tense: str, person: int, number: str) -> str:
    """The finite verb form agreeing with a subject of this person and number."""
    if tense == "past":
        return inflect(lemma, "VBD")
    return inflect(lemma, "VBZ" if (person == 3 and number == "sg") else "VBP")


@dataclass(frozen=True)
class Sentence:
    """One generated sentence and the features it was built from.

    `verb_index` is the word index of the main verb; `subject_index` the subject's head word;
    `object_index` the object's head word (or -1). Word lists are space-separated in `text`.
    """

    words: tuple[str, ...]
    subject_number: str
    person: int
    tense: str
    verb_lemma: str
    verb_index: int
    subject_index: int
    object_index: int = -1
    attractor_number: str | None = None
    relative_depth: int = 0
    tags: tuple[str, ...] = field(default=())

    @property
    def text(self) -> str:
        return " ".join(self.words) + " ."

    def with_verb(self, form: str) -> "Sentence":
        words = list(self.words)
        words[self.verb_index] = form
        return Sentence(**{**self.__dict__, "words": tuple(words)})

    def wrong_number_verb(self) -> str:
        """The main verb inflected for the other number (the minimal-pair foil)."""
        other = "pl" if self.subject_number == "sg" else "sg"
        return verb_form(self.verb_lemma, tense="present", person=self.person, number=other)


def _noun_phrase(rng: random.Random, number: str) -> list[tuple[str, str]]:
    """[(word, pos)] for 'the (adj) noun'; the head noun is last."""
    words = [("the", "DET")]
    if rng.random() < 0.3:
        words.append((rng.choice(ADJECTIVES), "ADJ"))
    noun = rng.choice(NOUNS)
    words.append((inflect(noun, "NNS") if number == "pl" else noun, "NOUN"))
    return words


def generate_sentence(rng: random.Random, *, tense: str | None = None, number: str | None = None,
                      pronoun_rate: float = 0.2, attractor_rate: float = 0.3,
                      relative_rate: float = 0.2, max_depth: int = 2) -> Sentence:
    """Draw one sentence; keyword arguments pin features, rates set how often each construction occurs."""
    tense = tense or rng.choice(("present", "present", "past"))
    number = number or rng.choice(("sg", "pl"))
    words: list[tuple[str, str]] = []
    attractor = None
    depth = 0
    if rng.random() < pronoun_rate:
        person = rng.choice((1, 2, 3))
        words.append((PRONOUNS[(person, number)], "PRON"))
        subject_index = 0
    else:
        person = 3
        words += _noun_phrase(rng, number)
        subject_index = len(words) - 1
        if rng.random() < attractor_rate:
            attractor = "pl" if number == "sg" else "sg"
            words.append((rng.choice(PREPOSITIONS), "ADP"))
            words += _noun_phrase(rng, attractor)
        elif rng.random() < relative_rate:
            depth = rng.randint(1, max_depth)
            for _ in range(depth):  # "that the cats see" (object relatives nest)
                inner = rng.choice(("sg", "pl"))
                words.append(("that", "SCONJ"))
                words += _noun_phrase(rng, inner)
                words.append((verb_form(rng.choice(TRANSITIVE), tense=tense, person=3, number=inner), "VERB"))
    transitive = rng.random() < 0.5
    lemma = rng.choice(TRANSITIVE if transitive else INTRANSITIVE)
    verb_index = len(words)
    words.append((verb_form(lemma, tense=tense, person=person, number=number), "VERB"))
    object_index = -1
    if transitive:
        words += _noun_phrase(rng, rng.choice(("sg", "pl")))
        object_index = len(words) - 1
    return Sentence(words=tuple(w for w, _ in words), subject_number=number, person=person,
                    tense=tense, verb_lemma=lemma, verb_index=verb_index,
                    subject_index=subject_index, object_index=object_index,
                    attractor_number=attractor, relative_depth=depth,
                    tags=tuple(t for _, t in words))


def corpus(seed: int, n: int) -> list[str]:
    """n sentences of base-training text, deterministic in `seed`."""
    rng = random.Random(seed)
    return [generate_sentence(rng).text for _ in range(n)]
