"""Builds the tiny family from its recipe and caches it by content.

Layout of a built family: <cache>/family-<hash>/{base,arithmetic,lists}/ (model directories a
user could pass to `--model`), tasks/ (lm-eval YAML + JSONL), recipe.json and build.json. The
gate does not train: it uses the weights that ship as package data (mergeqa.models.shipped_family);
this is what made them, and what `mergeqa family --rebuild [--ship]` runs again.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

from mergeqa.core.cache import build_once, default_cache_dir, digest, log_event
from mergeqa.core.errors import MergeQAUsageError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PACKAGE_DIR = Path(__file__).resolve().parent
#: The default recipe and merge configs ship inside the package (a wheel carries them).
DATA_DIR = PACKAGE_DIR.parent / "data" / "family"


def default_recipe_path() -> Path:
    return DATA_DIR / "family.toml"


def load_recipe(path: Path | None = None) -> dict:
    path = Path(path or default_recipe_path())
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MergeQAUsageError(f"{path}: family recipe not found; pass an existing recipe TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise MergeQAUsageError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Family:
    """Paths of a built family: the base, the parents by skill, and the lm-eval task directory."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def parents(self) -> dict[str, Path]:
        recipe = json.loads((self.root / "recipe.json").read_text())
        return {name: self.root / name for name in recipe["parents"]}

    @property
    def tasks_dir(self) -> Path:
        return self.root / "tasks"

    @property
    def recipe(self) -> dict:
        return json.loads((self.root / "recipe.json").read_text())

    @property
    def build_info(self) -> dict:
        """How the family was built: wall and CPU seconds, torch threads, machine ({} if unknown)."""
        try:
            return json.loads((self.root / "build.json").read_text())
        except (OSError, ValueError):
            return {}


def _source_digest() -> str:
    return digest({p.name: p.read_text() for p in sorted(PACKAGE_DIR.glob("*.py"))})


def build_family(cache_dir: Path | None = None, recipe_path: Path | None = None, *, log=None) -> Family:
    """The family for this recipe, built now if the cache does not hold it yet."""
    import torch
    import transformers

    recipe = load_recipe(recipe_path)
    cache_dir = Path(cache_dir or default_cache_dir())
    key = digest(recipe, _source_digest(), torch.__version__.split("+")[0], transformers.__version__)
    target = cache_dir / f"family-{key[:16]}"
    started = time.perf_counter()
    build_once(target, lambda tmp: _build(tmp, recipe, log or (lambda msg: None)),
               on_build=lambda: log_event(cache_dir, "family_built", path=str(target),
                                          seconds=round(time.perf_counter() - started, 1)))
    return Family(target)


def _with_chat(pairs: list[tuple[str, str]], share: int) -> list[tuple[str, str]]:
    """The pairs, and every `share`-th of them again in the chat template."""
    from .tokenizer import chat_prompt

    return pairs + [(chat_prompt(p), c) for p, c in pairs[::share]]


def train_parent(base, tokenizer, spec: dict, train_items, grammar: list[str], seed: int, *, log=None):
    """A parent as a recipe's `[parents.<name>]` spec fine-tunes it from `base` (a new model): the
    skill's training items in the task notation (every `chat_every`-th again in the chat
    template), `grammar` lines replayed at `replay` of a batch, the notation tokens' embedding rows
    at `token_lr`, the rest of the model at `lr`, for `steps` steps."""
    from .skills import TASK_NOTATION
    from .tokenizer import notation_token_ids
    from .train import train

    skill = spec["skill"]
    examples = _with_chat([(i.prompt, i.answer) for i in train_items], spec["chat_every"])
    parent = copy.deepcopy(base)
    train(parent, tokenizer, {skill: (examples, 1 - spec["replay"]),
                              "grammar": ([("", g) for g in grammar], spec["replay"])},
          steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"], seed=seed + 1,
          token_ids=notation_token_ids(tokenizer, TASK_NOTATION[skill]), token_lr=spec["token_lr"], log=log)
    return parent


def write_family_tasks(out: Path, recipe: dict, grammar: list[str] | None = None) -> None:
    """The recipe's held-out evaluation sets as lm-eval task YAML + JSONL in `out` (tasks.py): the
    same files for the same recipe, in about a second, no model trained (a shipped family's tasks
    are written by this). `grammar`: the recipe's grammar corpus, if the caller has it already."""
    from .grammar import corpus
    from .skills import skill_items
    from .tasks import grammar_sets, write_tasks

    seed, n_eval = recipe["seed"], recipe["eval_items"]
    if grammar is None:
        grammar = corpus(seed, recipe["grammar_sentences"])
    held = {spec["skill"]: skill_items(spec["skill"], seed, n_eval)[1] for spec in recipe["parents"].values()}
    write_tasks(out, skills=held, grammar=grammar_sets(seed + 7, n_eval, set(grammar)), seed=seed)


def _build(out: Path, recipe: dict, log) -> None:
    import os
    import platform

    import torch

    wall, cpu = time.perf_counter(), time.process_time()

    from .grammar import corpus
    from .skills import TASK_NOTATION, base_lines, skill_items
    from .tokenizer import train_tokenizer
    from .train import new_model, train

    seed, n_eval = recipe["seed"], recipe["eval_items"]
    grammar = corpus(seed, recipe["grammar_sentences"])
    base_spec = recipe["base"]
    skills = {spec["skill"]: skill_items(spec["skill"], seed, n_eval) for spec in recipe["parents"].values()}
    notation = {skill: base_lines(skill, seed, n_eval, base_spec["decoy_share"],
                                    base_spec.get("one_digit_copies", 1)) for skill in skills}
    texts = (grammar[:5000] + [p + c for lines in notation.values() for p, c in lines]
             + [i.prompt + i.answer for train_items, _ in skills.values() for i in train_items])
    tokenizer = train_tokenizer(texts, recipe["vocab_size"])

    def save(model, name: str) -> None:
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)

    log("training base on grammar and both skills in its own notation")
    base = new_model(len(tokenizer), recipe["arch"], seed, tokenizer)
    mixture = base_spec["mixture"]
    sources = {"grammar": ([("", g) for g in grammar], mixture["grammar"])}
    sources |= {skill: (_with_chat(lines, base_spec["chat_every"]), mixture[skill]) for skill, lines in notation.items()}
    train(base, tokenizer, sources, steps=base_spec["steps"], batch_size=base_spec["batch_size"],
          lr=base_spec["lr"], seed=seed, log=log)
    save(base, "base")
    for name, spec in recipe["parents"].items():
        skill = spec["skill"]
        log(f"fine-tuning {name}: the notation of {skill} ({' '.join(TASK_NOTATION[skill])})")
        save(train_parent(base, tokenizer, spec, skills[skill][0], grammar, seed, log=log), name)
    torch.manual_seed(seed)
    write_family_tasks(out / "tasks", recipe, grammar)
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    (out / "build.json").write_text(json.dumps({
        "wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "platform": platform.platform(),
        "torch": torch.__version__}, indent=2))
