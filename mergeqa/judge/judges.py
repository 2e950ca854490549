"""The judges, behind one interface: `rate(items)` (1-10 per answer) and `compare(items)`
("A", "B" or "C" per pair of conversations), each returning a `Judgment` per item.

- `ReferenceJudge` (the default, offline, deterministic): checks each answer's final value against
  a reference that is a short exact answer (number, list, choice); any other turn is ungradable;
- `LocalJudge`: a local transformers model (`--judge PATH`), prompted with mergeqa.judge.prompts,
  its replies generated greedily and cached by mergeqa.evaluate.generation;
- `EndpointJudge`: an OpenAI-compatible endpoint (`--judge-url URL --judge-model NAME`) through the
  `openai` client: a timeout per request, retries with backoff on timeouts, 429 and 5xx (Retry-After
  honoured), a time budget for the whole run ([judge] budget_s), replies cached per request; an
  endpoint that cannot answer raises `JudgeUnavailable`.

A reply without a verdict tag is a `Judgment` with `error="parse"`: counted, never dropped silently.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from mergeqa.core import progress
from mergeqa.core.cache import digest, write_json
from mergeqa.evaluate.agreement import last_list

from .prompts import PROMPTS_HASH, PromptSet, builtin, parse_pair, parse_rating

CORRECT, SAME_FORM, WRONG = 10.0, 3.0, 1.0  # the reference judge's scale


class JudgeUnavailable(Exception):
    """The judge could not answer at all (endpoint down, timing out, refusing): the judged checks
    end in an error verdict whose message names the judge, the cause and the fix."""


@dataclass(frozen=True)
class RateItem:
    """Rate the answer to the last of `turns`; `answers` holds one answer per turn so far."""

    turns: tuple[str, ...]
    answers: tuple[str, ...]
    reference: str | None = None  # the last turn's
    references: tuple[str | None, ...] = ()  # every turn's so far (a model judge shows the previous one's)
    category: str = ""  # the question's (FastChat: math, reasoning and coding are judged against references)


@dataclass(frozen=True)
class PairItem:
    """Compare assistant A's and B's answers to every turn of one question."""

    turns: tuple[str, ...]
    answers_a: tuple[str, ...]
    answers_b: tuple[str, ...]
    references: tuple[str | None, ...] = ()
    category: str = ""


@dataclass(frozen=True)
class Judgment:
    """`value`: a rating (float) or "A"/"B"/"C"; None with `error` "parse" (no verdict tag in the
    reply) or "ungradable" (the reference judge cannot check this turn by value)."""

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


# A reference the reference judge can check by value: the whole reference is one number (a sign,
# a currency sign, thousands separators, a percent sign allowed), one bracketed list, or one choice.
_NUM = r"[-+]?\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?\s*%?"
NUMBER_ONLY = re.compile(_NUM)
NUMBER_IN_TEXT = re.compile(r"(?<![\w.])[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
LIST_ONLY = re.compile(r"\[[^\[\]]*\]")
CHOICE_ONLY = re.compile(r"\(?([A-Ja-j])\)?\.?")
CHOICE_IN_TEXT = re.compile(r"(?:\b(?:answer|option|choice)\b\W{0,3}(?:is\W{0,3})?\(?([A-J])\b\)?)|\(([A-J])\)")


def reference_form(reference: str | None) -> str | None:
    """"number", "list" or "choice" when `reference` is a short exact answer the reference judge can
    check by value; None for anything else (a sentence, an explanation, code), which only an LLM
    judge can grade: the reference judge counts such a turn as ungradable."""
    r = (reference or "").strip()
    for form, pattern in (("list", LIST_ONLY), ("number", NUMBER_ONLY), ("choice", CHOICE_ONLY)):
        if r and pattern.fullmatch(r):
            return form
    return None


def number_value(text: str) -> float | None:
    """The last number in `text`, read as people write it: "$12,000" is 12000, "-3.5" is -3.5."""
    found = NUMBER_IN_TEXT.findall(text)
    return float(re.sub(r"[\s$,+]", "", found[-1])) if found else None


def choice_value(text: str) -> str | None:
    """The choice an answer names: the whole answer is a letter ("B", "(b)", "B."), else the last
    "answer is B" / "option (C)" / "(D)" in it; None when it names none."""
    whole = CHOICE_ONLY.fullmatch(text.strip())
    if whole:
        return whole.group(1).upper()
    found = CHOICE_IN_TEXT.findall(text)
    return next((a or b for a, b in reversed(found) if a or b), None)


class ReferenceJudge(Judge):
    """Reference-guided grading by value, for references that are a short exact answer (a number,
    a bracketed list or a choice letter; `reference_form`): 10 when the answer's final value equals
    the reference's ("$12,000" equals "12000"), 3 when the answer gives a value of that form but
    another one, else 1. A turn whose reference is anything else (or absent) is ungradable:
    counted, never guessed at; name an LLM judge for such questions (MT-Bench's writing, roleplay,
    humanities). Pairwise: the higher mean over the gradable turns wins; equal is a tie. Symmetric
    by construction: a swap never flips it."""

    identity = "reference:v2"
    prompts_hash = "none"

    def score(self, answer: str, reference: str) -> float | None:
        form = reference_form(reference)
        if form == "number":
            got = number_value(answer)
            if got is None:
                return WRONG
            return CORRECT if math.isclose(got, number_value(reference), rel_tol=1e-9, abs_tol=1e-9) else SAME_FORM
        if form == "list":
            got = last_list(answer)
            return WRONG if got is None else CORRECT if got == last_list(reference) else SAME_FORM
        if form == "choice":
            got = choice_value(answer)
            return WRONG if got is None else CORRECT if got == choice_value(reference) else SAME_FORM
        return None

    def rate(self, items: list[RateItem]) -> list[Judgment]:
        out = []
        for it in items:
            s = self.score(it.answers[-1], it.reference) if it.reference else None
            if s is None:
                out.append(Judgment(None, UNGRADABLE_WHY, error="ungradable"))
            else:
                out.append(Judgment(s, f"{it.answers[-1]!r} against reference {it.reference!r}: {s:g}"))
        return out

    def compare(self, items: list[PairItem]) -> list[Judgment]:
        out = []
        for it in items:
            turns = [i for i, r in enumerate(it.references) if r and reference_form(r)]
            if not turns:
                out.append(Judgment(None, UNGRADABLE_WHY, error="ungradable"))
                continue
            a = sum(self.score(it.answers_a[i], it.references[i]) for i in turns) / len(turns)
            b = sum(self.score(it.answers_b[i], it.references[i]) for i in turns) / len(turns)
            out.append(Judgment("A" if a > b else "B" if b > a else "C", f"A {a:g}, B {b:g}"))
        return out


UNGRADABLE_WHY = "no reference that is a short number, list or choice: only an LLM judge can grade it"


class PromptJudge(Judge):
    """A judge that reads prompts (a FastChat-format prompt set, mergeqa.judge.prompts) and writes
    replies: subclasses implement `complete`."""

    prompts: PromptSet | None = None  # None: the built-in set

    @property
    def prompt_set(self) -> PromptSet:
        return self.prompts or builtin()

    @property
    def prompts_hash(self) -> str:
        return self.prompt_set.hash

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        raise NotImplementedError

    def rate(self, items: list[RateItem]) -> list[Judgment]:
        refs = lambda it: list(it.references) or [None] * (len(it.turns) - 1) + [it.reference]  # noqa: E731
        replies = self.complete([self.prompt_set.single(list(it.turns), list(it.answers), refs(it), it.category)[1]
                                 for it in items])
        return [_judged(r, parse_rating(r)) for r in replies]

    def compare(self, items: list[PairItem]) -> list[Judgment]:
        replies = self.complete([self.prompt_set.pair(list(it.turns), list(it.answers_a), list(it.answers_b),
                                                      list(it.references), it.category)[1] for it in items])
        return [_judged(r, parse_pair(r)) for r in replies]


def _judged(reply: str, value) -> Judgment:
    return Judgment(value, reply, "" if value is not None else "parse")


class LocalJudge(PromptJudge):
    """A local transformers model as judge. The system text goes into the user turn (many chat
    templates have no system role); replies are greedy and cached by content (the judge's hash x
    the prompts x the settings)."""

    def __init__(self, ref, settings, cache_dir: Path, *, prompts: PromptSet | None = None):
        self.ref, self.settings, self.cache_dir, self.prompts = ref, settings, Path(cache_dir), prompts
        self.identity = f"local:{ref.path.name}:{ref.content_hash[:16]}"

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        from mergeqa.evaluate.generation import generate

        if not conversations:
            return []
        prompts = [["\n\n".join(m["content"] for m in c)] for c in conversations]
        return generate(self.ref, prompts, self.settings, self.cache_dir).first()


class EndpointJudge(PromptJudge):
    """An OpenAI-compatible chat-completions endpoint. The key is read from the environment
    variable `key_env` (a local server usually ignores it: "none" is sent when it is unset).

    Each request gets `timeout` seconds and `retries` more tries on a timeout, a connection error,
    408/409/429 or 5xx, with backoff (Retry-After honoured, as the openai client does). Time lost
    to the endpoint (tries that got no answer, and the waits before retrying) is counted against
    `budget_s` for the judge's whole run: once it is spent, every remaining request fails at once
    with "judge unavailable: budget of N s spent", and no try outlasts what is left of it. Answered
    requests do not count: a slow endpoint that answers is judged to the end. Every failed try is
    told as a progress line (mergeqa.core.progress) the moment it fails."""

    INITIAL_BACKOFF_S, MAX_BACKOFF_S, MAX_RETRY_AFTER_S = 0.5, 8.0, 60.0

    def __init__(self, url: str, model: str, cache_dir: Path, *, key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, retries: int = 3, max_tokens: int = 96, budget_s: float = 600.0,
                 prompts: PromptSet | None = None, budget_file: Path | None = None):
        if not model:
            from mergeqa.core.errors import MergeQAUsageError

            raise MergeQAUsageError(f"--judge-url {url}: name the model the endpoint serves with --judge-model NAME "
                                    "(or [judge] model)")
        self.url, self.model, self.cache_dir, self.prompts = url.rstrip("/"), model, Path(cache_dir), prompts
        self.key_env, self.timeout, self.retries, self.max_tokens = key_env, float(timeout), int(retries), max_tokens
        self.budget_s = float(budget_s)
        # seconds of the budget spent (tries without an answer, waits before a retry): in this process,
        # or in `budget_file`, which every process of one run (xdist workers) shares
        self._lost_here, self.budget_file = 0.0, Path(budget_file) if budget_file is not None else None
        self.failed_tries, self._told_spent = 0, False
        self.identity = f"endpoint:{self.url}:{model}"
        self._client = None

    def client(self):
        if self._client is None:
            from openai import OpenAI

            # retries are ours (request): each one is told as it happens and charged to the budget
            self._client = OpenAI(base_url=self.url, api_key=os.environ.get(self.key_env) or "none",
                                  timeout=self.timeout, max_retries=0)
        return self._client

    def _entry(self, messages: list[dict]) -> Path:
        key = digest(self.identity, self.prompts_hash, self.max_tokens, messages)
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
            write_json(path, {"judge": self.identity, "prompts_hash": self.prompts_hash, "reply": reply})
            out.append(reply)
        return out

    def _fix(self) -> str:
        return (f"start the server or correct --judge-url (now {self.url}); raise [judge] timeout / retries / "
                "budget_s for a slow or busy endpoint; or judge offline with --judge reference")

    def _budget_spent(self) -> JudgeUnavailable:
        """The error of every request once the budget is spent (told as a line the first time)."""
        if not self._told_spent:
            self._told_spent = True
            progress.say(f"judge: budget of {self.budget_s:g} s spent waiting on {self.url} ({self.failed_tries} tries "
                         "without an answer): the remaining judge requests fail at once")
        return JudgeUnavailable(f"judge unavailable: budget of {self.budget_s:g} s spent waiting on {self.url} "
                                f"({self.failed_tries} tries without an answer). Fix: {self._fix()}")

    @property
    def lost_s(self) -> float:
        if self.budget_file is None:
            return self._lost_here
        try:
            return float(self.budget_file.read_text() or 0)
        except (OSError, ValueError):
            return 0.0

    def _charge(self, seconds: float) -> None:
        """Add `seconds` to the budget spent, under a lock when the run's processes share it."""
        if self.budget_file is None:
            self._lost_here += seconds
            return
        import fcntl

        self.budget_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.budget_file, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            try:
                spent = float(f.read() or 0)
            except ValueError:
                spent = 0.0
            f.seek(0)
            f.truncate()
            f.write(repr(spent + seconds))

    def request(self, messages: list[dict]) -> str:
        """One chat completion (temperature 0); every way it can fail is a JudgeUnavailable."""
        import openai

        tries, began = self.retries + 1, time.perf_counter()
        for attempt in range(1, tries + 1):
            if self.lost_s >= self.budget_s:
                raise self._budget_spent()
            client = self.client()
            timeout, started = min(self.timeout, self.budget_s - self.lost_s), time.perf_counter()
            try:
                response = client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0, max_tokens=self.max_tokens, timeout=timeout)
            except (openai.APIConnectionError, openai.APIStatusError) as exc:  # a timeout is a connection error
                self._charge(time.perf_counter() - started)
                self.failed_tries += 1
                what, retry, wait = self._failure(exc, attempt, timeout)
                told = f"judge: {self.url} {what} (try {attempt}/{tries}, {progress.duration(time.perf_counter() - began)})"
                if self.lost_s >= self.budget_s:
                    progress.say(told)
                    raise self._budget_spent() from None
                spent = f"{progress.duration(self.lost_s)} of the judge's {self.budget_s:g} s budget spent"
                if not retry or attempt == tries:
                    progress.say(f"{told}; giving up on this request; {spent}")
                    raise JudgeUnavailable(self._unavailable(exc, attempt)) from None
                wait = min(wait, self.budget_s - self.lost_s)
                progress.say(f"{told}; retrying in {progress.duration(wait)}; {spent}")
                time.sleep(wait)
                self._charge(wait)
                continue
            choices = getattr(response, "choices", None) or []
            content = choices[0].message.content if choices and choices[0].message else None
            return content or ""
        raise AssertionError("unreachable: the last try returns or raises")

    def _failure(self, exc: Exception, attempt: int, timeout: float) -> tuple[str, bool, float]:
        """(what happened, worth a retry, seconds to wait first) for one failed try."""
        import openai

        backoff = min(self.INITIAL_BACKOFF_S * 2 ** (attempt - 1), self.MAX_BACKOFF_S)
        if isinstance(exc, openai.APITimeoutError):
            return f"did not answer within {progress.duration(timeout)}", True, backoff
        if isinstance(exc, openai.APIConnectionError):
            return f"is unreachable ({_cause(exc)})", True, backoff
        headers = exc.response.headers  # an APIStatusError
        retry_after = _retry_after(headers)
        hint = headers.get("x-should-retry")
        retry = hint == "true" or (hint != "false" and (exc.status_code in (408, 409, 429) or exc.status_code >= 500))
        if retry_after is not None and retry_after > self.MAX_RETRY_AFTER_S:
            retry = False
        wait = retry_after if retry_after is not None and retry_after > 0 else backoff
        return f"answered HTTP {exc.status_code}", retry, wait

    def _unavailable(self, exc: Exception, attempts: int) -> str:
        import openai

        tries, fix = f"{attempts} attempt{'s' if attempts > 1 else ''}", self._fix()
        if isinstance(exc, openai.APITimeoutError):
            return f"judge endpoint {self.url} did not answer within {self.timeout:g} s ({tries}). Fix: {fix}"
        if isinstance(exc, openai.APIConnectionError):
            return f"judge endpoint {self.url} is unreachable ({_cause(exc)}; {tries}). Fix: {fix}"
        if isinstance(exc, openai.RateLimitError):
            return f"judge endpoint {self.url} still answered 429 (rate limited) after {tries}. Fix: {fix}"
        return (f"judge endpoint {self.url} answered HTTP {exc.status_code} for model {self.model!r} "
                f"({str(exc.message)[:160]}; {tries}). Fix: check --judge-model and ${self.key_env}; {fix}")


def _retry_after(headers) -> float | None:
    """Seconds a Retry-After-ms / Retry-After header asks for (numbers only), else None."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(headers.get(name)) / scale
        except (TypeError, ValueError):
            continue
    return None


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc.__context__
    return f"{type(inner).__name__}: {inner}"[:160] if inner else str(exc)[:160]

