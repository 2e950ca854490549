"""Reads thresholds.toml into a checked object: every section and key is known, every value typed.

An unknown key is a usage error that names the file, the key and the closest known one; a check
asks `thresholds.get("retention", "min_retention")` and gets a value that is known to be valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError, did_you_mean

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# section -> key -> default. A section or key mapped to dict is an open table (free keys).
DEFAULTS: dict[str, dict] = {
    "sanity": {"max_repetition_rate": 0.5, "max_repeated_span": 16, "repetition_ngram": 3,
               "max_perplexity_ratio": 1.5, "perplexity_task": "family_grammar_ppl", "new_tokens": 24,
               "parents_fail": "not_applicable",  # a prompt every parent fails too: left out, or "fail"
               "prompts": {  # the embedded family's; a real model's go in [sanity.prompts]
                   "arithmetic": {"prompt": "12 + 7 =", "match": r"\d"},
                   "lists": {"prompt": "reverse [3 1 2] =", "match": r"\d"},
                   "grammar": {"prompt": "the old horses", "match": r"\b(the|a)\b"},
                   "chat_arithmetic": {"prompt": "23 + 14 =", "chat": True, "match": r"\d"},
                   "chat_lists": {"prompt": "sort [5 4 9] =", "chat": True, "match": r"\d"}}},
    "lint": {"min_norm_ratio": 0.25, "max_norm_ratio": 4.0},
    "retention": {"suite": "family", "min_retention": 0.95, "tolerance": 0.02,
                  "mode": "significance",
                  "capabilities": {"family_arithmetic": "arithmetic", "family_lists": "lists"},
                  # task -> gated metric key, "metric" or "metric,filter" (lm-eval's names);
                  # default: the Open LLM Leaderboard's for its tasks, else the task's first
                  "metrics": {}},
    "statistics": {"alpha": 0.05, "power": 0.8, "correction": "holm",
                   "inconclusive": "fail", "decision": "non_inferiority",
                   "sequential": False},  # true: stop scoring a comparison once decided (early_stop)
    "probing": {"tolerance": 0.03, "seeds": 3, "l2": 0.01, "divergence_tau": 0.0,
                # the grammar's phenomena, then the family's skills (read from context: headroom)
                "phenomena": ["subject_number", "verb_tense", "person", "agreement", "syntactic_role",
                              "relative_depth", "part_of_speech", "sum_first", "list_reverse"],
                "datasets": []},
    "conflict": {"pairs": "", "max_conflict_rate": 0.05, "min_owner_agreement": 0.9, "similarity": 0.8,
                 "short_words": 8, "embedding_model": "", "new_tokens": 16,
                 "owners": {"arithmetic": "arithmetic", "lists": "lists"}},
    "judge": {"questions": "", "prompts": "", "references": "", "judge": "reference", "url": "", "model": "", "api_key_env": "OPENAI_API_KEY",
              "timeout": 60.0, "retries": 3, "budget_s": 600.0, "new_tokens": 24, "judge_new_tokens": 96, "min_win_rate": 0.45,
              "score_margin": 0.5, "score_test": "betting", "max_swap_disagreement": 0.35,
              "max_parse_errors": 0.1, "max_ungradable": 0.1},
    "cost": {"max_size_ratio": 1.05, "max_memory_ratio": 1.25, "min_speed_ratio": 0.5,
             "max_latency_ratio": 2.0, "new_tokens": 16, "repeats": 3},
    # Built-in suites; a thresholds file adds suites or replaces one of the same name.
    "suites": {"family": {"tasks": ["family_arithmetic", "family_lists", "family_grammar"]},
               "code": {"tasks": ["mergeqa_humaneval"]}},
}
#: Probing phenomena of the family's skills (category "skill" in mergeqa.probing.datasets): prompts
#: in the family's task format, for the embedded default only.
FAMILY_SKILL_PHENOMENA = ("sum_first", "list_reverse")
# For any other model (--model / --merge-config) without a thresholds file: the model-agnostic
# checks, with the merge guide's sanity prompts; no suite, so retention and regression report one
# line (mergeqa.pytest_plugin.no_suite.no_suite_line) instead of measuring the family's tasks on a model they do not fit.
GENERIC_DEFAULTS: dict[str, dict] = {
    **DEFAULTS,
    "sanity": {**DEFAULTS["sanity"], "perplexity_task": "",
               "prompts": {  # the merge guide's; chat ones run only with a chat template
                   "greeting": {"prompt": "Hello, how are you?", "match": r"[A-Za-z]"},
                   "capital": {"prompt": "The capital of France is", "expect": ["Paris"]},
                   "chat_capital": {"prompt": "What is the capital of France?", "chat": True,
                                    "expect": ["Paris"]},
                   "about_ai": {"prompt": "Tell me about AI", "match": r"[A-Za-z]"}}},
    "retention": {**DEFAULTS["retention"], "suite": "", "capabilities": {}},
    "conflict": {**DEFAULTS["conflict"], "owners": {}},  # the family's skills name no parent here
    "probing": {**DEFAULTS["probing"],  # the family's skills are probed in its own task format
                "phenomena": [p for p in DEFAULTS["probing"]["phenomena"] if p not in FAMILY_SKILL_PHENOMENA]},
    "suites": {**DEFAULTS["suites"], "leaderboard_v1": {  # "family" stays: it is chosen, never a default
                   "tasks": ["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande", "gsm8k"],
                   "num_fewshot": {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "truthfulqa_mc2": 0,
                                   "winogrande": 5, "gsm8k": 5}},
               "leaderboard_v2": {"tasks": ["leaderboard"]}},
}


def defaults_for(embedded: bool) -> dict[str, dict]:
    """The built-in defaults: the family's for the embedded default, GENERIC_DEFAULTS otherwise."""
    return DEFAULTS if embedded else GENERIC_DEFAULTS


CHOICES = {
    ("sanity", "parents_fail"): ("not_applicable", "fail"),
    ("retention", "mode"): ("significance", "point"),
    ("statistics", "correction"): ("holm", "bh"),
    ("statistics", "inconclusive"): ("fail", "warn"),
    ("statistics", "decision"): ("non_inferiority", "significant_drop"),
    ("judge", "score_test"): ("betting", "permutation", "ttest"),
}
# (section, key) -> (low, high, low inclusive, high inclusive); every number is also finite.
RANGES = {
    ("statistics", "alpha"): (0.0, 1.0, False, False),
    ("statistics", "power"): (0.0, 1.0, False, False),
    ("retention", "min_retention"): (0.0, 1.0, False, True),
    ("retention", "tolerance"): (0.0, 1.0, True, False),
    ("probing", "tolerance"): (0.0, 1.0, True, False),
    ("probing", "l2"): (0.0, math.inf, True, False),
    ("probing", "divergence_tau"): (-1.0, 1.0, True, True),
    ("lint", "min_norm_ratio"): (0.0, 1.0, False, True),
    ("lint", "max_norm_ratio"): (1.0, math.inf, True, False),
    ("sanity", "max_repetition_rate"): (0.0, 1.0, True, True),
    ("sanity", "max_perplexity_ratio"): (1.0, math.inf, True, False),
    ("judge", "budget_s"): (0.0, math.inf, False, False),
    ("judge", "max_ungradable"): (0.0, 1.0, True, True),
}
# Values whose meaning changed: the old value gets an explanation, not just "expected one of".
RETIRED = {
    ("statistics", "inconclusive", "xfail"): (
        "\"xfail\" was removed: an xfail leaves CI green for a merge that was never shown to retain "
        "its parents' skills. Use \"fail\" (the default: the burden of proof is on the merge) or "
        "\"warn\" to accept unproven merges explicitly"),
}
SUITE_KEYS = {"tasks": list, "num_fewshot": dict, "limit": int}


@dataclass(frozen=True)
class Thresholds:
    path: Path | None
    values: dict

    def get(self, section: str, key: str):
        return self.values[section][key]

    def suite(self, name: str) -> dict:
        suites = self.values["suites"]
        if name not in suites:
            raise MergeQAUsageError(f"{self.path or 'thresholds'}: no suite {name!r} in [suites].{did_you_mean(name, suites)}")
        return suites[name]

    def file(self, section: str, key: str, *, option: str | None = None, option_name: str = "",
             fix: str = "") -> Path | None:
        """The file a command-line option names (as given), else `[section] key` (a relative path
        is relative to this thresholds file), else None. A path that is not a file is a usage
        error naming the option or the key, the path it tried and `fix`."""
        if option:
            path = Path(option).expanduser()
            origin = f"{option_name} {option}"
        else:
            value = self.get(section, key)
            if not value:
                return None
            path = (self.path.parent if self.path else Path(".")) / Path(value).expanduser()
            origin = f"{self.path or 'thresholds'}: [{section}] {key} = {value!r}"
            if str(path) != value:
                origin += f" ({path}: a relative path is read from the thresholds file's directory)"
        if not path.is_file():
            what = "a directory, not a file" if path.is_dir() else "no such file"
            raise MergeQAUsageError(f"{origin}: {what}; {fix or 'name an existing file'}")
        return path

    def check_parents(self, names) -> None:
        """Every [retention.capabilities] owner must be one of the run's parents (by directory
        name): a typo would otherwise fall back to the parents' mean without a word."""
        names = sorted(names)
        for task, owner in self.get("retention", "capabilities").items():
            if owner not in names:
                raise MergeQAUsageError(
                    f"{self.path or 'thresholds'}: [retention.capabilities] {task} = {owner!r} names no parent "
                    f"of this run (parents are named by their directory names).{did_you_mean(owner, names)}")


def load_thresholds(path: str | Path | None, *, embedded: bool = True) -> Thresholds:
    """Parse and validate a thresholds file over the built-in defaults (`defaults_for(embedded)`);
    None gives the defaults alone."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise MergeQAUsageError(f"--thresholds {path}: no such file; pass an existing TOML "
                                    "file (the repository's thresholds.toml is a full example)") from None
        except tomllib.TOMLDecodeError as exc:
            raise MergeQAUsageError(f"{path}: {exc}") from None
    values = {s: dict(d) for s, d in defaults_for(embedded).items()}
    where = str(path) if path else "thresholds"
    for section, table in raw.items():
        if section not in DEFAULTS:
            raise MergeQAUsageError(f"{where}: unknown section [{section}].{did_you_mean(section, DEFAULTS)}")
        if not isinstance(table, dict):
            raise MergeQAUsageError(f"{where}: [{section}] must be a table")
        if section == "suites":
            values["suites"].update({name: _check_suite(where, name, spec) for name, spec in table.items()})
            continue
        for key, value in table.items():
            values[section][key] = _check_value(where, section, key, value)
    _check_sequential(where, values)
    return Thresholds(path, values)


def _check_sequential(where: str, values: dict) -> None:
    """`sequential = true` decides by the sequential non-inferiority test: it has no point rule
    and no significant-drop rule to stop on."""
    if not values["statistics"]["sequential"]:
        return
    if values["retention"]["mode"] != "significance":
        raise MergeQAUsageError(f"{where}: [statistics] sequential = true needs [retention] mode = "
                                f"\"significance\" (it is {values['retention']['mode']!r}); set "
                                "sequential = false for the point rule")
    if values["statistics"]["decision"] != "non_inferiority":
        raise MergeQAUsageError(f"{where}: [statistics] sequential = true needs decision = "
                                f"\"non_inferiority\" (it is {values['statistics']['decision']!r}); "
                                "the sequential test stops on non-inferiority or a significant drop")


def _check_value(where: str, section: str, key: str, value):
    known = DEFAULTS[section]
    if key not in known:
        raise MergeQAUsageError(f"{where}: [{section}] unknown key {key!r}.{did_you_mean(key, known)}")
    default = known[key]
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise MergeQAUsageError(f"{where}: [{section}] {key} must be a table")
        if (section, key) in (("retention", "capabilities"), ("retention", "metrics")):
            for task, v in value.items():
                if not isinstance(v, str) or not v:
                    raise MergeQAUsageError(f"{where}: [{section}.{key}] {task} = {v!r}: expected a string")
        return value
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value!r}: expected a number like {default}")
    if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value!r}: expected a whole number like {default}")
    if isinstance(default, bool) and not isinstance(value, bool):
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value!r}: expected true or false")
    if isinstance(default, str) and not isinstance(value, str):
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value!r}: expected a string like {default!r}")
    if isinstance(default, list) and not isinstance(value, list):
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value!r}: expected a list like {default!r}")
    if numeric:
        if not math.isfinite(value):
            raise MergeQAUsageError(f"{where}: [{section}] {key} = {value}: must be a finite number")
        if (section, key) in RANGES:
            low, high, low_in, high_in = RANGES[(section, key)]
            if not ((value >= low if low_in else value > low) and (value <= high if high_in else value < high)):
                interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
                raise MergeQAUsageError(f"{where}: [{section}] {key} = {value}: must be in {interval}")
        elif isinstance(default, int) and value < 1:
            raise MergeQAUsageError(f"{where}: [{section}] {key} = {value}: must be at least 1")
        elif value < 0:
            raise MergeQAUsageError(f"{where}: [{section}] {key} = {value}: must not be negative")
    retired = RETIRED.get((section, key, value)) if isinstance(value, str) else None
    if retired:
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value!r}: {retired}")
    choices = CHOICES.get((section, key))
    if choices and value not in choices:
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value!r}: expected one of {', '.join(choices)}")
    return value


def _check_suite(where: str, name: str, spec) -> dict:
    if not isinstance(spec, dict) or not isinstance(spec.get("tasks"), list):
        raise MergeQAUsageError(f"{where}: [suites.{name}] needs tasks = [\"task\", ...]")
    for key, value in spec.items():
        if key not in SUITE_KEYS:
            raise MergeQAUsageError(f"{where}: [suites.{name}] unknown key {key!r}.{did_you_mean(key, SUITE_KEYS)}")
        if not isinstance(value, SUITE_KEYS[key]):
            raise MergeQAUsageError(f"{where}: [suites.{name}] {key} must be a {SUITE_KEYS[key].__name__}")
    if not spec["tasks"] or not all(isinstance(t, str) and t for t in spec["tasks"]):
        raise MergeQAUsageError(f"{where}: [suites.{name}] tasks is empty or holds a non-name; list lm-eval "
                                "task names, e.g. tasks = [\"arc_challenge\"]")
    return spec
