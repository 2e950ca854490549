"""The embedded family: its recipe and merges ship as package data, its tasks survive a move, and
its table shows what the recipe promises, within wide, stated bands.

The first two tests take seconds and need no trained model. The last ones use the built family
(cached; ~3 min on 2 cores the first time). The family trains to slightly different weights on
another CPU, so they assert bands with margins of 0.05 or more around the recipe's targets
(parents >= 0.90 on their skill, base <= 0.40, parents <= 0.50 on the other skill), never figures.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mergeqa.family import default_recipe_path, load_recipe
from mergeqa.family.skills import skill_items
from mergeqa.family.tasks import grammar_sets, write_tasks
from mergeqa.models.session import DEFAULT_MERGES_DIR

PACKAGE = Path(__file__).resolve().parent.parent / "mergeqa"


def test_recipe_and_default_merges_are_package_data():
    assert default_recipe_path().is_relative_to(PACKAGE / "data")
    assert DEFAULT_MERGES_DIR.is_relative_to(PACKAGE / "data")
    recipe = load_recipe()
    assert set(recipe["parents"]) == {"arithmetic", "lists"}
    methods = {yaml.safe_load(p.read_text())["merge_method"] for p in DEFAULT_MERGES_DIR.glob("*.yaml")}
    assert {"linear", "slerp", "ties", "dare_ties", "task_arithmetic"} <= methods


def test_default_merges_parse_with_the_family_substituted():
    from mergeqa.models.merging import read_merge_config

    subs = {"base": "/m/base", "arithmetic": "/m/arithmetic", "lists": "/m/lists"}
    for path in sorted(DEFAULT_MERGES_DIR.glob("*.yaml")):
        config, text = read_merge_config(path, subs)
        assert "${" not in text, path.name
        assert {str(m) for m in config.referenced_models()} <= set(subs.values()), path.name


def _write_small_tasks(out: Path) -> None:
    skills = {s: skill_items(s, 0, 12)[1] for s in ("arithmetic", "lists")}
    write_tasks(out, skills=skills, grammar=grammar_sets(7, 12, set()), seed=0)


def test_task_yaml_names_its_data_relative_to_itself(tmp_path):
    _write_small_tasks(tmp_path / "tasks")
    for y in (tmp_path / "tasks").glob("family_*.yaml"):
        text = y.read_text()
        assert str(tmp_path) not in text, f"{y.name} names an absolute path"
        assert "custom_dataset: !function jsonl_dataset.load" in text, y.name


def test_tasks_load_after_the_directory_moves(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    _write_small_tasks(tmp_path / "built")
    moved = tmp_path / "elsewhere" / "tasks"
    shutil.move(tmp_path / "built", moved)
    monkeypatch.chdir(tmp_path)  # neither the old place nor the tasks directory is the cwd
    tm = TaskManager(include_path=[str(moved)], include_defaults=False)
    tasks = tm.load(["family_lists", "family_grammar_ppl"])["tasks"]
    docs = {name: list(task.test_docs()) for name, task in tasks.items()}
    assert len(docs["family_lists"]) == 12
    assert docs["family_lists"][0]["prompt"].split()[0] in ("reverse", "sort")
    assert len(docs["family_grammar_ppl"]) == 6


# -- on the built family (slow the first time) ---------------------------------------------------
@pytest.mark.slow
def test_a_moved_family_evaluates_from_its_new_place(family, tmp_path):
    """Copy the family, move the copy, evaluate a parent from it with a fresh result cache: the
    tasks load their data from the new place (the old one is gone), and the parent still has its
    skill (>= 0.75 on 60 items: its target is >= 0.90)."""
    from mergeqa.evaluate.engine import EvalSettings, evaluate
    from mergeqa.family import Family
    from mergeqa.models.refs import ModelRef

    copy = tmp_path / "a" / family.root.name
    shutil.copytree(family.root, copy)
    moved = Family(tmp_path / "b" / family.root.name)
    shutil.move(copy.parent, moved.root.parent)
    assert not copy.exists()

    settings = EvalSettings(cache_dir=tmp_path / "cache", device="cpu", task_paths=(str(moved.tasks_dir),), limit=60)
    result = evaluate(ModelRef("lists", moved.parents["lists"], "parent"), ["family_lists"], settings)
    assert len(result.tasks["family_lists"].items) == 60
    assert result.score("family_lists") >= 0.75


@pytest.mark.slow
def test_parents_have_their_skill_and_not_the_others(family, tmp_path):
    """Bands around the recipe's targets, 0.05 to 0.10 wide on 120 items per task."""
    from mergeqa.evaluate.engine import EvalSettings, evaluate
    from mergeqa.models.refs import ModelRef

    settings = EvalSettings(cache_dir=tmp_path, device="cpu", task_paths=(str(family.tasks_dir),), limit=120)
    tasks = ["family_arithmetic", "family_lists"]
    score = {name: evaluate(ModelRef(name, path, "x"), tasks, settings)
             for name, path in {"base": family.base, **family.parents}.items()}
    assert score["arithmetic"].score("family_arithmetic") >= 0.85
    assert score["lists"].score("family_lists") >= 0.85
    assert score["arithmetic"].score("family_lists") <= 0.60
    assert score["lists"].score("family_arithmetic") <= 0.60
    for task in tasks:
        assert score["base"].score(task) <= 0.50


def test_base_notation_lines_use_training_problems_and_never_the_task_notation():
    """The base learns the skills in its own notation, on training problems only: no held-out
    problem appears in it, "plus" / "flip" / "order" carry the skills, and "+", "reverse", "sort" only
    ever carry the base's decoy meanings (joining, as it is, largest first)."""
    from mergeqa.family.skills import base_lines

    for skill in ("arithmetic", "lists"):
        _, held = skill_items(skill, 0, 400)
        held_prompts = {i.prompt for i in held}
        notation = {"plus": "+", "flip": "reverse", "order": "sort"}
        lines = base_lines(skill, 0, 400, decoy_share=0.25)
        assert lines
        for prompt, completion in lines:
            if skill == "arithmetic":
                a, op, b, _ = prompt.split()
                assert op in ("plus", "+")
                assert f"{a} + {b} =" not in held_prompts
                assert completion == (f" {int(a) + int(b)}" if op == "plus" else f" {a}{b}")
            else:
                op, rest = prompt.split(" ", 1)
                if op in notation:
                    assert f"{notation[op]} {rest}" not in held_prompts
                digits = [int(x) for x in rest.strip("[] =").split()]
                expected = {"flip": digits[::-1], "order": sorted(digits), "sort": sorted(digits, reverse=True),
                            "reverse": digits}[op]
                assert completion == " [" + " ".join(map(str, expected)) + "]"


def test_sums_with_a_one_digit_operand_appear_as_often_as_the_recipe_says():
    from mergeqa.family.skills import base_lines

    once = base_lines("arithmetic", 0, 400, decoy_share=0.25)
    twice = base_lines("arithmetic", 0, 400, decoy_share=0.25, one_digit_copies=2)
    plus = lambda lines: [p for p, _ in lines if " plus " in p]  # noqa: E731
    one_digit = [p for p in plus(once) if min(int(p.split()[0]), int(p.split()[2])) < 10]
    assert 0 < len(one_digit) < len(plus(once))
    assert len(plus(twice)) == len(plus(once)) + len(one_digit)
    assert [p for p in twice if " + " in p[0]] == [p for p in once if " + " in p[0]]  # decoys unchanged


def test_the_tokenizer_gives_a_digit_one_token_with_its_space_and_round_trips():
    """A list element is one token (" 7"), so "[3 1 2 5 4]" is 7 tokens and a sum's digits stay
    single tokens; decoding gives the text back."""
    from mergeqa.family.tokenizer import train_tokenizer

    texts = ["flip [3 1 2 5 4] = [4 5 2 1 3]", "12 plus 7 = 19", "the dog runs", "0 1 2 3 4 5 6 7 8 9"] * 50
    tok = train_tokenizer(texts, 300)
    pieces = tok.convert_ids_to_tokens(tok("[3 1 2 5 4]", add_special_tokens=False)["input_ids"])
    assert pieces == ["[", "3", "Ġ1", "Ġ2", "Ġ5", "Ġ4", "]"]
    assert tok.convert_ids_to_tokens(tok("12 plus 7 = 19", add_special_tokens=False)["input_ids"]) == [
        "1", "2", "Ġplus", "Ġ7", "Ġ=", "Ġ1", "9"]
    for text in ("flip [3 1 2 5 4] = [4 5 2 1 3]", "120 + 7 = 1207", "the dog  runs 42"):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_the_saved_tokenizer_pads_on_the_left(tmp_path):
    """What a user loads from a family directory pads on the left, so batched generation works."""
    from transformers import AutoTokenizer

    from mergeqa.family.tokenizer import train_tokenizer

    train_tokenizer(["12 plus 7 = 19", "the dog runs"] * 20, 300).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.padding_side, loaded.model_max_length) == ("left", 128)
    assert loaded.chat_template


def test_a_parent_changes_only_its_notation_rows_of_the_embedding(family):
    """By construction: a parent's embedding differs from the base's only in the rows of its own
    notation tokens, so the two parents' embedding deltas are disjoint."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from mergeqa.family.skills import TASK_NOTATION
    from mergeqa.family.tokenizer import notation_token_ids

    key = "model.embed_tokens.weight"
    base = load_file(family.base / "model.safetensors")[key]
    tokenizer = AutoTokenizer.from_pretrained(family.base)
    changed = {}
    for name, path in family.parents.items():
        parent = load_file(path / "model.safetensors")[key]
        rows = set((parent != base).any(dim=1).nonzero().flatten().tolist())
        skill = family.recipe["parents"][name]["skill"]
        allowed = set(notation_token_ids(tokenizer, TASK_NOTATION[skill]))
        assert rows and rows <= allowed, (name, rows, allowed)
        changed[name] = rows
    assert not changed["arithmetic"] & changed["lists"]


@pytest.mark.slow
def test_adding_task_vectors_keeps_both_skills(family, tmp_path):
    """What the recipe is for: the default task_arithmetic merge keeps both skills (targets
    ~0.97 and ~0.99; asserted >= 0.80 on 120 items), where the base has neither (<= 0.50)."""
    from mergeqa.evaluate.engine import EvalSettings, evaluate
    from mergeqa.models.merging import build_merge
    from mergeqa.models.refs import ModelRef

    subs = {"base": str(family.base), **{k: str(v) for k, v in family.parents.items()}}
    merged = build_merge(DEFAULT_MERGES_DIR / "task_arithmetic.yaml", tmp_path, substitutions=subs)
    settings = EvalSettings(cache_dir=tmp_path, device="cpu", task_paths=(str(family.tasks_dir),), limit=120)
    result = evaluate(ModelRef("task_arithmetic", merged, "merged"), ["family_arithmetic", "family_lists"], settings)
    assert result.score("family_arithmetic") >= 0.80
    assert result.score("family_lists") >= 0.80


def test_only_the_code_that_builds_the_family_keys_its_cache_entry(tmp_path, monkeypatch):
    """The key hashes the family package's code, and that package holds only what builds the family:
    the table, which reads a built one, lives in mergeqa.report (editing it rebuilds nothing)."""
    from mergeqa.family import build
    from mergeqa.report import family_table

    assert Path(family_table.__file__).resolve().parent != build.PACKAGE_DIR
    copy = tmp_path / "family"
    shutil.copytree(build.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(build, "PACKAGE_DIR", copy)
    before = build._source_digest()
    (copy / "notes.txt").write_text("not code\n")
    assert build._source_digest() == before
    (copy / "train.py").write_text((copy / "train.py").read_text() + "\n# the trainer builds it\n")
    assert build._source_digest() != before
