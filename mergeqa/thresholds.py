"""Reads thresholds.toml into a checked object: every section and key is known, every value typed.

An unknown key is a usage error that names the file, the key and the closest known one; a check
asks `thresholds.get("retention", "min_retention")` and gets a value that is known to be valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import MergeQAUsageError, did_you_mean

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# section -> key -> default. A section or key mapped to dict is an open table (free keys).
DEFAULTS: dict[str, dict] = {
    "sanity": {"max_repetition_rate": 0.5, "max_repeated_span": 16, "repetition_ngram": 3,
               "max_perplexity_ratio": 1.5, "perplexity_task": "family_grammar_ppl", "new_tokens": 24,
               "prompts": {  # the embedded family's; a real model's go in [sanity.prompts]
                   "arithmetic": {"prompt": "12 + 7 =", "match": r"\d"},
                   "lists": {"prompt": "reverse [3 1 2] =", "match": r"\d"},
                   "grammar": {"prompt": "the old horses", "match": r"\b(the|a)\b"},
                   "chat_arithmetic": {"prompt": "23 + 14 =", "chat": True, "match": r"\d"},
                   "chat_lists": {"prompt": "sort [5 4 9] =", "chat": True, "match": r"\d"}}},
    "lint": {"min_norm_ratio": 0.25, "max_norm_ratio": 4.0},
    "retention": {"suite": "family", "min_retention": 0.95, "tolerance": 0.02,
                  "mode": "significance",
                  "capabilities": {"family_arithmetic": "arithmetic", "family_lists": "lists"}},
    "statistics": {"alpha": 0.05, "power": 0.8, "correction": "holm",
                   "inconclusive": "xfail"},
    "probing": {"tolerance": 0.03, "seeds": 3, "l2": 0.01, "divergence_tau": 0.0,
                "phenomena": ["subject_number", "verb_tense", "person", "agreement", "syntactic_role",
                              "relative_depth", "part_of_speech"],
                "datasets": []},
    "cost": {"max_size_ratio": 1.05, "max_memory_ratio": 1.25, "min_speed_ratio": 0.5,
             "max_latency_ratio": 2.0, "new_tokens": 16, "repeats": 3},
    # Built-in suites; a thresholds file adds suites or replaces one of the same name.
    "suites": {"family": {"tasks": ["family_arithmetic", "family_lists", "family_grammar"]},
               "code": {"tasks": ["mergeqa_humaneval"]}},
}
CHOICES = {
    ("retention", "mode"): ("significance", "point"),
    ("statistics", "correction"): ("holm", "bh"),
    ("statistics", "inconclusive"): ("fail", "xfail", "warn"),
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
            raise MergeQAUsageError(f"{self.path}: no suite {name!r} in [suites].{did_you_mean(name, suites)}")
        return suites[name]


def load_thresholds(path: str | Path | None) -> Thresholds:
    """Parse and validate a thresholds file; None gives the built-in defaults."""
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
    values = {s: dict(d) for s, d in DEFAULTS.items()}
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
    return Thresholds(path, values)


def _check_value(where: str, section: str, key: str, value):
    known = DEFAULTS[section]
    if key not in known:
        raise MergeQAUsageError(f"{where}: [{section}] unknown key {key!r}.{did_you_mean(key, known)}")
    default = known[key]
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise MergeQAUsageError(f"{where}: [{section}] {key} must be a table")
        return value
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value!r}: expected a number like {default}")
    if isinstance(default, str) and not isinstance(value, str):
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value!r}: expected a string like {default!r}")
    if numeric and value < 0:
        raise MergeQAUsageError(f"{where}: [{section}] {key} = {value}: must not be negative")
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
    return spec
