"""The judges, behind one interface: `rate(items)` (1-10 per answer) and `compare(items)`
("A", "B" or "C" per pair of conversations), each returning a `Judgment` per item.

- `ReferenceJudge` (the default, offline, deterministic): checks each answer against the
  question's reference, as MT-Bench's reference-guided grading does for math, reasoning, coding;
- `LocalJudge`: a local transformers model (`--judge PATH`), prompted with mergeqa.judge.prompts,
  its replies generated greedily and cached by mergeqa.evaluate.generation;
- `EndpointJudge`: an OpenAI-compatible endpoint (`--judge-url URL --judge-model NAME`) through the
  `openai` client: a timeout per request, retries with backoff on 429/5xx (the client's, honouring
  Retry-After), replies cached per request; an endpoint that cannot answer raises `JudgeUnavailable`.

A reply without a verdict tag is a `Judgment` with `error="parse"`: counted, never dropped silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mergeqa.core.cache import digest, write_json
from mergeqa.evaluate.agreement import Agreement, last_list, last_number, normalise

from .prompts import PROMPTS_HASH, pair_messages, parse_pair, parse_rating, single_messages

CORRECT, SAME_FORM, WRONG = 10.0, 3.0, 1.0  # the reference judge's scale


class JudgeUnavailable(Exception):
    """The judge could not answer at all (endpoint down, timing out, refusing): the judged checks
    end in an error verdict whose message names the judge, the cause and the fix."""


@dataclass(frozen=True)
class RateItem:
    """Rate the answer to the last of `turns`; `answers` holds one answer per turn so far."""

    turns: tuple[str, ...]
    answers: tuple[str, ...]
    reference: str | None = None


@dataclass(frozen=True)
class PairItem:
    """Compare assistant A's and B's answers to every turn of one question."""

    turns: tuple[str, ...]
    answers_a: tuple[str, ...]
    answers_b: tuple[str, ...]
    references: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Judgment:
    """`value`: a rating (float) or "A"/"B"/"C"; None with `error` "parse" (no verdict tag in the
    reply) or "no_reference" (the reference judge has nothing to check against)."""

    value: float | str | None
    reply: str = ""
    error: str = ""


class Judge:
    """The interface. `identity` names the judge in cache keys and junit (with `prompts_hash`)."""

    identity = "judge"
    prompts_hash = PROMPTS_HASH

    def rate(self, items: list[RateItem]) -> list[Judgment]:
        raise NotImplementedError

    def compare(self, items: list[PairItem]) -> list[Judgment]:
        raise NotImplementedError


class ReferenceJudge(Judge):
    """10 when the answer agrees with the reference (the same number, the same list, the same short
    text, or the reference contained in a long answer), 3 when it has the reference's form but
    not its value (another number, another list), else 1. Pairwise: the higher mean over the turns
    with a reference wins; equal is a tie. Symmetric by construction: a swap never flips it."""

    identity = "reference:v1"
    prompts_hash = "none"

    def __init__(self):
        self.rule = Agreement(short_words=8, embedder=None)

    def score(self, answer: str, reference: str) -> float:
        match = self.rule.short_match(answer, reference)
        if match is None:  # a long answer: does it contain the reference?
            return CORRECT if normalise(reference) in normalise(answer) else WRONG
        if match.agree:
            return CORRECT
        same_form = ((last_list(reference) is not None and last_list(answer) is not None)
                     or (last_number(reference) is not None and last_number(answer) is not None))
        return SAME_FORM if same_form else WRONG

    def rate(self, items: list[RateItem]) -> list[Judgment]:
        out = []
        for it in items:
            if not it.reference:
                out.append(Judgment(None, error="no_reference"))
            else:
                s = self.score(it.answers[-1], it.reference)
                out.append(Judgment(s, f"{it.answers[-1]!r} against reference {it.reference!r}: {s:g}"))
        return out

    def compare(self, items: list[PairItem]) -> list[Judgment]:
        out = []
        for it in items:
            turns = [i for i, r in enumerate(it.references) if r]
            if not turns:
                out.append(Judgment(None, error="no_reference"))
                continue
            a = sum(self.score(it.answers_a[i], it.references[i]) for i in turns) / len(turns)
            b = sum(self.score(it.answers_b[i], it.references[i]) for i in turns) / len(turns)
            out.append(Judgment("A" if a > b else "B" if b > a else "C", f"A {a:g}, B {b:g}"))
        return out


class PromptJudge(Judge):
    """A judge that reads prompts and writes replies: subclasses implement `complete`."""

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        raise NotImplementedError

    def rate(self, items: list[RateItem]) -> list[Judgment]:
        replies = self.complete([single_messages(list(it.turns), list(it.answers), it.reference) for it in items])
        return [_judged(r, parse_rating(r)) for r in replies]

    def compare(self, items: list[PairItem]) -> list[Judgment]:
        replies = self.complete([pair_messages(list(it.turns), list(it.answers_a), list(it.answers_b),
                                               list(it.references)) for it in items])
        return [_judged(r, parse_pair(r)) for r in replies]


def _judged(reply: str, value) -> Judgment:
    return Judgment(value, reply, "" if value is not None else "parse")


class LocalJudge(PromptJudge):
    """A local transformers model as judge. The system text goes into the user turn (many chat
    templates have no system role); replies are greedy and cached by content (the judge's hash x
    the prompts x the settings)."""

    def __init__(self, ref, settings, cache_dir: Path):
        self.ref, self.settings, self.cache_dir = ref, settings, Path(cache_dir)
        self.identity = f"local:{ref.path.name}:{ref.content_hash[:16]}"

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        from mergeqa.evaluate.generation import generate

        if not conversations:
            return []
        prompts = [["\n\n".join(m["content"] for m in c)] for c in conversations]
        return generate(self.ref, prompts, self.settings, self.cache_dir).first()


class EndpointJudge(PromptJudge):
    """An OpenAI-compatible chat-completions endpoint. The key is read from the environment
    variable `key_env` (a local server usually ignores it: "none" is sent when it is unset)."""

    def __init__(self, url: str, model: str, cache_dir: Path, *, key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, retries: int = 3, max_tokens: int = 96):
        if not model:
            from mergeqa.core.errors import MergeQAUsageError

            raise MergeQAUsageError(f"--judge-url {url}: name the model the endpoint serves with --judge-model NAME "
                                    "(or [judge] model)")
        self.url, self.model, self.cache_dir = url.rstrip("/"), model, Path(cache_dir)
        self.key_env, self.timeout, self.retries, self.max_tokens = key_env, float(timeout), int(retries), max_tokens
        self.identity = f"endpoint:{self.url}:{model}"
        self._client = None

    def client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(base_url=self.url, api_key=os.environ.get(self.key_env) or "none",
                                  timeout=self.timeout, max_retries=self.retries)
        return self._client

    def _entry(self, messages: list[dict]) -> Path:
        key = digest(self.identity, PROMPTS_HASH, self.max_tokens, messages)
        return self.cache_dir / "judgments" / digest(self.identity)[:16] / f"{key[:24]}.json"

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        out = []
        for messages in conversations:
            path = self._entry(messages)
            try:
                out.append(json.loads(path.read_text())["reply"])
                continue
            except (OSError, ValueError, KeyError):
                pass
            reply = self.request(messages)
            write_json(path, {"judge": self.identity, "prompts_hash": PROMPTS_HASH, "reply": reply})
            out.append(reply)
        return out

    def request(self, messages: list[dict]) -> str:
        """One chat completion (temperature 0); every way it can fail is a JudgeUnavailable."""
        import openai

        tries = f"{self.retries + 1} attempt{'s' if self.retries else ''}"
        fix = (f"start the server or correct --judge-url (now {self.url}); raise [judge] timeout / retries for a "
               "slow or busy endpoint; or judge offline with --judge reference")
        try:
            response = self.client().chat.completions.create(model=self.model, messages=messages, temperature=0,
                                                             max_tokens=self.max_tokens)
        except openai.APITimeoutError:
            raise JudgeUnavailable(f"judge endpoint {self.url} did not answer within {self.timeout:g} s "
                                   f"({tries}). Fix: {fix}") from None
        except openai.APIConnectionError as exc:
            raise JudgeUnavailable(f"judge endpoint {self.url} is unreachable ({_cause(exc)}; {tries}). "
                                   f"Fix: {fix}") from None
        except openai.RateLimitError:
            raise JudgeUnavailable(f"judge endpoint {self.url} still answered 429 (rate limited) after {tries}. "
                                   f"Fix: {fix}") from None
        except openai.APIStatusError as exc:
            raise JudgeUnavailable(f"judge endpoint {self.url} answered HTTP {exc.status_code} for model "
                                   f"{self.model!r} ({str(exc.message)[:160]}; {tries}). Fix: check --judge-model and "
                                   f"${self.key_env}; {fix}") from None
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message else None
        return content or ""


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc.__context__
    return f"{type(inner).__name__}: {inner}"[:160] if inner else str(exc)[:160]

