"""Behavioural sanity of a merged model, before any benchmark: greedy continuations of a small
prompt set ([sanity.prompts] in thresholds.toml), run twice, read by every generation check
(non-empty, coherent, instruction-following through the chat template, no degenerate repetition,
finite logits, identical across runs); and held-out perplexity against the parents', through the
engine. A prompt the merge fails is run on the parents too: one that every parent fails as well is
reported as "parents fail too", not blamed on the merge (`[sanity] parents_fail`).
A handful of prompts, seconds per model: not a benchmark (that is mergeqa.evaluate.engine's).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.decision.verdict import Verdict
from mergeqa.inspect.lint import _result

PROMPT_KEYS = {"prompt", "expect", "match", "chat"}


@dataclass(frozen=True)
class SanityPrompt:
    """A prompt and what its greedy continuation must contain: any of `expect` (substrings) or a
    match of `match` (a regular expression); `chat` renders it through the chat template."""

    name: str
    text: str
    chat: bool = False
    expect: tuple[str, ...] = ()
    match: str | None = None

    def accepts(self, output: str) -> bool:
        if self.match is not None and re.search(self.match, output):
            return True
        return any(e in output for e in self.expect)

    @property
    def expectation(self) -> str:
        parts = [f"contains {' or '.join(repr(e) for e in self.expect)}"] if self.expect else []
        parts += [f"matches /{self.match}/"] if self.match is not None else []
        return " or ".join(parts)


def parse_prompts(table: dict, where: str = "thresholds [sanity.prompts]") -> list[SanityPrompt]:
    """[sanity.prompts] -> SanityPrompts; a malformed entry is a usage error naming it."""
    out = []
    for name, spec in table.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("prompt"), str):
            raise MergeQAUsageError(f"{where}: {name} must be a table with prompt = \"...\", e.g. "
                                    f"{name} = {{ prompt = \"The capital of France is\", expect = [\"Paris\"] }}")
        unknown = set(spec) - PROMPT_KEYS
        if unknown:
            raise MergeQAUsageError(f"{where}: {name}: unknown key {sorted(unknown)[0]!r}; "
                                    f"known: {', '.join(sorted(PROMPT_KEYS))}")
        expect = spec.get("expect", [])
        expect = [expect] if isinstance(expect, str) else expect
        if not isinstance(expect, list) or not all(isinstance(e, str) for e in expect):
            raise MergeQAUsageError(f"{where}: {name}: expect must be a string or a list of strings")
        match = spec.get("match")
        if match is not None:
            try:
                re.compile(match)
            except (re.error, TypeError) as exc:
                raise MergeQAUsageError(f"{where}: {name}: match = {match!r} is not a regular "
                                        f"expression ({exc})") from None
        if not expect and match is None:
            raise MergeQAUsageError(f"{where}: {name}: give expect = [\"...\"] or match = '...' (what a "
                                    "coherent continuation contains)")
        out.append(SanityPrompt(name, spec["prompt"], bool(spec.get("chat", False)), tuple(expect), match))
    return out


# -- repetition metrics (pure functions of token ids) ------------------------------------------
def repetition_rate(tokens: list[int], n: int = 3) -> float:
    """Share of the continuation's n-grams that repeat an earlier one (0 when fewer than n+1 tokens)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if len(grams) > 1 else 0.0


def longest_repeated_span(tokens: list[int]) -> int:
    """Length of the longest token run that occurs twice (occurrences may overlap): a loop of
    period p over n tokens gives n - p."""
    best, prev = 0, [0] * (len(tokens) + 1)
    for i in range(1, len(tokens) + 1):
        cur = [0] * (len(tokens) + 1)
        for j in range(i + 1, len(tokens) + 1):
            if tokens[i - 1] == tokens[j - 1]:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


# -- generation --------------------------------------------------------------------------------
@dataclass
class Generation:
    prompt: SanityPrompt
    tokens: list[int] = field(default_factory=list)  # the continuation, eos excluded
    text: str = ""
    stopped: bool = False  # ended on eos before the token budget
    non_finite_logits: int = 0
    logits_checked: int = 0
    problem: str | None = None  # why it could not run (a token id past the embedding)
    skipped: str | None = None  # why it was not run (a chat prompt and no chat template)


def embedding_rows(model) -> int:
    return model.get_input_embeddings().num_embeddings


def vocabulary_problem(model, tokenizer) -> str | None:
    """Why this tokenizer cannot feed this model (ids past the embedding), or None."""
    rows, size = embedding_rows(model), len(tokenizer)
    if size <= rows:
        return None
    first = tokenizer.convert_ids_to_tokens(rows)
    return (f"the tokenizer has {size} tokens but the embedding {rows} rows: token {rows} ({first!r}) "
            f"and {size - rows - 1} more would index past it")


def _render(tokenizer, prompt: SanityPrompt) -> tuple[str, bool] | None:
    """(text, add_special_tokens), or None for a chat prompt when there is no chat template."""
    if not prompt.chat:
        return prompt.text, True
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}],
                                         add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token
    return text, not (bos and text.startswith(bos))  # a template that writes bos itself


def greedy(model, tokenizer, prompt: SanityPrompt, new_tokens: int) -> Generation:
    """One greedy continuation with its raw logits checked for NaN/Inf."""
    import torch
    from transformers import GenerationConfig

    rendered = _render(tokenizer, prompt)
    if rendered is None:
        return Generation(prompt, skipped="the tokenizer has no chat template")
    text, special = rendered
    ids = tokenizer(text, add_special_tokens=special, return_tensors="pt").input_ids
    rows = embedding_rows(model)
    if ids.numel() and int(ids.max()) >= rows:
        bad = int(ids.max())
        return Generation(prompt, problem=f"prompt {prompt.name!r} has token {bad} "
                          f"({tokenizer.convert_ids_to_tokens(bad)!r}) past the embedding's {rows} rows")
    eos = model.generation_config.eos_token_id
    eos = model.config.eos_token_id if eos is None else eos
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=sorted(eos_ids) or None, pad_token_id=pad,
                              output_logits=True, return_dict_in_generate=True)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                             generation_config=config)
    new = out.sequences[0, ids.shape[1]:].tolist()
    stopped = bool(new) and new[-1] in eos_ids
    tokens = new[:-1] if stopped else new
    logits = torch.stack(out.logits) if out.logits else torch.zeros(0)
    return Generation(prompt, tokens, tokenizer.decode(tokens, skip_special_tokens=True), stopped,
                      int((~torch.isfinite(logits)).sum()), logits.numel())


@dataclass
class SanityRun:
    """Two greedy runs of every prompt on one model: what every generation check reads."""

    model: str
    first: list[Generation]
    second: list[Generation]

    def ran(self, chat: bool | None = None) -> list[Generation]:
        """First-run generations that ran (optionally only chat or only plain prompts)."""
        return [g for g in self.first if g.skipped is None and (chat is None or g.prompt.chat == chat)]


def sanity_run(ref, device: str, dtype: str, prompts: list[SanityPrompt], new_tokens: int) -> SanityRun:
    """Two greedy runs of every prompt on a ModelRef (its model is loaded once per process)."""
    model, tokenizer = ref.model(device, dtype), ref.tokenizer()
    runs = [[greedy(model, tokenizer, p, new_tokens) for p in prompts] for _ in range(2)]
    return SanityRun(ref.name, *runs)


def rejected(run: SanityRun, chat: bool | None = None) -> list[SanityPrompt]:
    """The prompts whose continuation the model ran and the prompt's expectation rejects: the ones
    to ask the parents about (a prompt that could not run at all is the model's own problem)."""
    return [g.prompt for g in run.ran(chat) if not g.problem and not g.prompt.accepts(g.text)]


def parent_generations(parents: list, prompts: list[SanityPrompt], device: str, dtype: str,
                       new_tokens: int) -> dict[str, dict[str, Generation]]:
    """{parent name: {prompt name: one greedy Generation}} of `prompts` on each parent ModelRef."""
    out: dict[str, dict[str, Generation]] = {}
    for ref in parents:
        model, tokenizer = ref.model(device, dtype), ref.tokenizer()
        out[ref.name] = {p.name: greedy(model, tokenizer, p, new_tokens) for p in prompts}
    return out


def parents_fail_too(prompt: SanityPrompt, parents: dict[str, dict[str, Generation]] | None) -> bool:
    """True when there are parents and every one of them ran `prompt` and failed it too."""
    gens = [runs.get(prompt.name) for runs in (parents or {}).values()]
    return bool(gens) and all(g is not None and g.skipped is None and not g.problem
                              and not prompt.accepts(g.text) for g in gens)


def _parents_said(prompt: SanityPrompt, parents: dict[str, dict[str, Generation]] | None) -> str:
    """"arithmetic -> '19', lists -> '[1 2 3]'": what each parent continued the prompt with."""
    said = []
    for name, runs in (parents or {}).items():
        g = runs.get(prompt.name)
        said.append(f"{name} -> " + ("?" if g is None else g.skipped or g.problem or repr(g.text)))
    return ", ".join(said)


# -- perplexity --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Perplexity:
    task: str
    metric: str
    merged: float
    parents: dict[str, float]
    n: int

    @property
    def worst_parent(self) -> tuple[str, float]:
        name = max(self.parents, key=self.parents.get)
        return name, self.parents[name]

    @property
    def ratio(self) -> float:
        return self.merged / self.worst_parent[1]


def perplexity(merged, parents: list, settings, task: str, family_tasks: Path | None = None) -> Perplexity:
    """Held-out perplexity (lm-eval's word_perplexity of a loglikelihood_rolling task) of the merge
    and each parent, through the engine's cache. `family_tasks` is added to the task paths for the
    embedded family's tasks."""
    import dataclasses

    from mergeqa.evaluate.engine import evaluate

    if family_tasks is not None and str(family_tasks) not in settings.task_paths:
        settings = dataclasses.replace(settings, task_paths=(str(family_tasks), *settings.task_paths))
    ours = evaluate(merged, [task], settings).tasks[task]
    theirs = {p.name: evaluate(p, [task], settings).tasks[task] for p in parents}
    metric = "word_perplexity" if "word_perplexity" in ours.metrics else ours.main_metric
    return Perplexity(task, metric, ours.metrics[metric], {n: r.metrics[metric] for n, r in theirs.items()},
                      len(ours.items))


# -- verdicts: what each check concludes from the measurements -----------------------------------
PARENTS_FAIL = ("not_applicable", "fail")  # [sanity] parents_fail


def _failing(run: SanityRun, chat: bool | None, name: str, model_fix: str,
             parents: dict[str, dict[str, Generation]] | None = None,
             parents_fail: str = "not_applicable") -> Verdict:
    """Shared by the coherence and chat checks: every prompt that ran must be accepted. `parents`
    holds the parents' generations of the prompts the merge failed (`rejected`); a prompt every
    parent fails too is not the merge's doing: with parents_fail = "not_applicable" it is left out
    (no prompt left: not_applicable), with "fail" it still fails, saying so."""
    if parents_fail not in PARENTS_FAIL:
        raise ValueError(f"parents_fail={parents_fail!r}: expected one of {', '.join(PARENTS_FAIL)}")
    gens = run.ran(chat)
    bad = [g for g in gens if g.problem or not g.prompt.accepts(g.text)]
    shared = [g for g in bad if not g.problem and parents_fail_too(g.prompt, parents)]
    if parents_fail == "not_applicable":
        gens, bad = [g for g in gens if g not in shared], [g for g in bad if g not in shared]
    said = {g.prompt.name: _parents_said(g.prompt, parents) for g in bad + shared if parents}
    r = _result(f"sanity.{name}", run.model,
                {"obtained": len(bad), "threshold": 0, "n": len(gens), "parents_fail_too": len(shared),
                 **{f"output.{g.prompt.name}": g.text for g in run.ran(chat)},
                 **{f"parent_output.{p}.{prompt}": gen.text for p, runs in (parents or {}).items()
                    for prompt, gen in runs.items() if prompt in said}},
                [_line(g) + (f"; parents: {said[g.prompt.name]}" if g.prompt.name in said else "")
                 + ("; every parent fails it too" if g in shared else "") for g in bad],
                expected="every prompt's continuation as [sanity.prompts] expects")
    left_out = [g.prompt.name for g in shared] if parents_fail == "not_applicable" else []
    if left_out:
        r.figures["left_out"] = ", ".join(left_out)
    if not gens and shared:
        g = shared[0]
        r.reason = (f"parents fail too: every parent also fails {', '.join(repr(n) for n in left_out)} "
                    f"({g.prompt.text!r}: merge -> {g.text!r}, {said[g.prompt.name]}), so it tests nothing "
                    "the merge could have lost; no prompt left")
        r.fix = ("add [sanity.prompts] your parents answer, or set [sanity] parents_fail = \"fail\" to fail "
                 "on them anyway")
    elif not gens:
        why = [g.skipped for g in run.first if g.skipped and (chat is None or g.prompt.chat == chat)]
        r.reason = why[0] if why else "no such prompt in [sanity.prompts]"
    elif bad:
        g = bad[0]
        r.summary = (f"prompt {g.prompt.name!r} ({g.prompt.text!r}) gave {g.text!r}"
                     + (f" (parents: {said[g.prompt.name]})" if g.prompt.name in said else "")
                     + f"; {len(bad)} of {len(gens)} prompts fail"
                     + (f" ({len(left_out)} more that every parent fails too left out: {', '.join(left_out)})"
                        if left_out else ""))
        if all(x in shared for x in bad):
            r.cause = ("every parent fails these prompts too: they test something the parents never had, "
                       "not something the merge lost")
            r.fix = ("replace them in [sanity.prompts] with prompts your parents answer, or set [sanity] "
                     "parents_fail = \"not_applicable\" to leave such prompts out")
        else:
            r.cause = ("a tokenizer that does not match the weights, or a merge that lost the parents' skills "
                       "(gibberish, mergekit #169/#671)")
            r.fix = model_fix
    elif left_out:
        r.summary = (f"{len(gens)} prompts as expected; left out, every parent fails them too: "
                     f"{', '.join(left_out)}")
    return r.settle()


def _line(g: Generation) -> str:
    if g.problem:
        return g.problem
    return f"{g.prompt.name}: {g.prompt.text!r} -> {g.text!r}, expected: {g.prompt.expectation}"


def check_generates(run: SanityRun) -> Verdict:
    gens = run.ran()
    bad = [g for g in gens if g.problem or not g.text.strip()]
    r = _result("sanity.generates", run.model, {"obtained": len(bad), "threshold": 0, "n": len(gens),
                                             "mean_tokens": sum(len(g.tokens) for g in gens) / max(1, len(gens))},
                    [g.problem or f"{g.prompt.name}: {g.prompt.text!r} -> no text ({len(g.tokens)} tokens)"
                     for g in bad], expected="non-empty text for every prompt")
    if bad:
        g = bad[0]
        what = g.problem or f"prompt {g.prompt.name!r} ({g.prompt.text!r}) generated no text"
        r.summary = f"{what}; {len(bad)} of {len(gens)} prompts"
        r.cause = ("token ids past the embedding (a truncated vocabulary)" if g.problem else
                   "NaN/Inf logits (greedy then picks a special token), or an eos/special token emitted at once")
        r.fix = "see the lint's finite, vocab and special_tokens checks for this model first"
    return r.settle()


def check_coherent(run: SanityRun, parents: dict[str, dict[str, Generation]] | None = None,
                   parents_fail: str = "not_applicable") -> Verdict:
    """Plain prompts; `parents`: the parents' generations of `rejected(run, chat=False)`."""
    return _failing(run, False, "coherent", "look at the lint's tokenizer and norms findings first; else lower "
                    "the merge weights/density of the parent that lost its skill", parents, parents_fail)


def check_chat_instruction(run: SanityRun, parents: dict[str, dict[str, Generation]] | None = None,
                           parents_fail: str = "not_applicable") -> Verdict:
    """Chat prompts; `parents`: the parents' generations of `rejected(run, chat=True)`."""
    return _failing(run, True, "chat_instruction", "ship the chat template and special tokens of the parent "
                    "that was instruction-tuned, and give that parent more weight", parents, parents_fail)


def check_repetition(run: SanityRun, max_rate: float, max_span: int, n: int = 3) -> Verdict:
    gens = [g for g in run.ran() if not g.problem]
    rates = {g.prompt.name: round(repetition_rate(g.tokens, n), 4) for g in gens}
    spans = {g.prompt.name: longest_repeated_span(g.tokens) for g in gens}
    bad = [g for g in gens if rates[g.prompt.name] > max_rate or spans[g.prompt.name] > max_span]
    worst_rate, worst_span = max(rates.values(), default=0.0), max(spans.values(), default=0)
    r = _result("sanity.repetition", run.model,
                    {"obtained": worst_rate, "threshold": max_rate, "n": len(gens), "ngram": n,
                     "max_repeated_span": worst_span, "span_threshold": max_span},
                    [f"{g.prompt.name}: {n}-gram repetition {rates[g.prompt.name]:.2f}, repeated span "
                     f"{spans[g.prompt.name]} tokens: {g.text[:80]!r}" for g in bad],
                    expected=f"{n}-gram repetition rate <= {max_rate:g} and repeated span <= {max_span} tokens")
    if bad:
        g = bad[0]
        r.summary = (f"prompt {g.prompt.name!r} loops: {n}-gram repetition {rates[g.prompt.name]:.2f}, repeated "
                     f"span {spans[g.prompt.name]} tokens ({g.text[:40]!r}...)")
        r.cause = ("degenerate repetition (mergekit #671/#110): interfering task vectors (weights or density too "
                   "high), a zeroed layer, or NaN logits that make greedy repeat one token")
        r.fix = "lower the merge weights or use ties/dare with normalize; check the lint's norms and finite checks"
    return r.settle()


def check_logits_finite(run: SanityRun) -> Verdict:
    gens = [g for g in run.ran() if not g.problem]
    bad = [g for g in gens if g.non_finite_logits]
    r = _result("sanity.logits_finite", run.model,
                    {"obtained": sum(g.non_finite_logits for g in gens), "threshold": 0,
                     "n": sum(g.logits_checked for g in gens)},
                    [f"{g.prompt.name}: {g.non_finite_logits} of {g.logits_checked} logits NaN/Inf" for g in bad],
                    expected="every logit finite")
    if bad:
        g = bad[0]
        r.summary = f"prompt {g.prompt.name!r}: {g.non_finite_logits} of {g.logits_checked} logits are NaN/Inf"
        r.cause = "NaN/Inf weights (an fp16 overflow, mergekit #609/#704) or activations overflowing in fp16"
        r.fix = "see the lint's finite check; merge and run in bfloat16/float32 (--dtype float32)"
    return r.settle()


def check_deterministic(run: SanityRun) -> Verdict:
    pairs = [(a, b) for a, b in zip(run.first, run.second, strict=True) if a.skipped is None and not a.problem]
    bad = [(a, b) for a, b in pairs if a.tokens != b.tokens]
    r = _result("sanity.deterministic", run.model, {"obtained": len(bad), "threshold": 0, "n": len(pairs)},
                    [f"{a.prompt.name}: {a.text!r} then {b.text!r}" for a, b in bad],
                    expected="identical greedy output in two runs")
    if bad:
        a, b = bad[0]
        r.summary = f"prompt {a.prompt.name!r} gave {a.text!r}, then {b.text!r}"
        r.cause = "dropout left active, or non-deterministic kernels (GPU atomics) on near-tied logits"
        r.fix = "set attention/hidden dropout to 0 in config.json; on GPU use torch.use_deterministic_algorithms"
    return r.settle()


def check_perplexity(ppl: Perplexity | None, max_ratio: float, model: str, problem: str | None = None) -> Verdict:
    if problem is not None:
        return _result("sanity.perplexity", model, {"obtained": None, "threshold": max_ratio, "n": 0}, [problem],
                           summary=problem, expected=f"perplexity <= {max_ratio:g} x the worst parent's",
                           cause="token ids past the embedding: the vocabulary was truncated (mergekit #425/#428)",
                           fix="see the lint's vocab check").settle()
    worst, worst_value = ppl.worst_parent
    r = _result("sanity.perplexity", model,
                    {"obtained": ppl.ratio, "threshold": max_ratio, "n": ppl.n, "task": ppl.task,
                     "metric": ppl.metric, "merged": ppl.merged, "worst_parent": worst,
                     **{f"parent.{k}": v for k, v in ppl.parents.items()}},
                    expected=f"{ppl.metric} <= {max_ratio:g} x the worst parent's ({worst}: {worst_value:.4g})")
    # the reports' comparison shows perplexities side by side (not the ratio beside raw values)
    r.data = {"task": ppl.task, "scores": {model: ppl.merged, **ppl.parents}, "higher_is_better": False}
    if not ppl.ratio <= max_ratio:  # NaN fails too
        r.details = [f"{ppl.task}: {ppl.metric} {ppl.merged:.4g}, worst parent {worst} {worst_value:.4g}"]
        r.summary = (f"{ppl.metric} on {ppl.task} is {ppl.merged:.4g}, {ppl.ratio:.3g} x the worst parent's "
                     f"({worst}: {worst_value:.4g})")
        r.cause = ("NaN weights or logits" if math.isnan(ppl.merged) else
                   "the merge damaged the shared language model: interference between task vectors (weights "
                   "summing over 1 without normalize), or a tokenizer that does not match the weights")
        r.fix = "lower the weights or density, set normalize: true, or use ties/dare_ties with a base model"
    return r.settle()
