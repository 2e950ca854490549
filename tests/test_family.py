"""The embedded family: its weights, recipe and merges ship as package data, the shipped weights
are the current recipe's and are checked, its tasks survive a move, the trainer still trains, and
the family shows what the recipe promises, within wide, stated bands.

Most tests take seconds and train nothing. The slow ones evaluate or merge the shipped family (the
same weights on every machine), and one trains a reduced copy of the recipe (~25 s on 2 cores),
which trains to slightly different weights on another CPU: it asserts bands, never figures.
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


def assert_parents_change_only_their_notation_rows(family) -> None:
    """A parent's embedding differs from the base's only in the rows of its own notation tokens,
    so the two parents' embedding deltas are disjoint."""
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


def test_a_parent_changes_only_its_notation_rows_of_the_embedding(family):
    """By construction (the shipped family)."""
    assert_parents_change_only_their_notation_rows(family)


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


# -- the shipped family ----------------------------------------------------------------------------
def test_the_shipped_family_was_trained_from_this_recipe_and_code():
    """Edit family.toml or mergeqa/family/*.py and this fails until the family is re-shipped; the
    message names the command that does it."""
    from mergeqa.models.shipped_family import stale_reason

    reason = stale_reason()
    assert reason is None, reason


def test_editing_the_recipe_or_the_trainer_makes_the_shipped_family_stale(tmp_path, monkeypatch):
    from mergeqa.family import build
    from mergeqa.models.shipped_family import RESHIP, stale_reason

    edited = tmp_path / "family.toml"
    edited.write_text(default_recipe_path().read_text().replace("steps = 4400", "steps = 4401"))
    reason = stale_reason(recipe_path=edited)
    assert reason and f"Re-ship it: `{RESHIP}`" in reason and str(edited) in reason and "\n" not in reason
    code = tmp_path / "family"
    shutil.copytree(build.PACKAGE_DIR, code, ignore=shutil.ignore_patterns("__pycache__"))
    (code / "train.py").write_text((code / "train.py").read_text() + "\n# a change to the trainer\n")
    monkeypatch.setattr(build, "PACKAGE_DIR", code)
    assert f"`{RESHIP}`" in stale_reason()


def test_the_shipped_weights_are_fp32_model_dirs_the_manifest_lists_exactly():
    from safetensors import safe_open

    from mergeqa.models.shipped_family import MANIFEST, WEIGHTS_DIR, verify

    assert WEIGHTS_DIR.is_relative_to(PACKAGE / "data")
    manifest = verify()
    present = {p.relative_to(WEIGHTS_DIR).as_posix() for p in WEIGHTS_DIR.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == present - {MANIFEST}
    names = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "chat_template.jinja", "model.safetensors"}
    assert manifest["models"] == ["base", "arithmetic", "lists"]
    assert set(manifest["files"]) == {f"{m}/{n}" for m in manifest["models"] for n in names}
    assert sum(f["size"] for f in manifest["files"].values()) < 10e6
    assert manifest["recipe"] == load_recipe() and manifest["torch"] and manifest["transformers"]
    for model in manifest["models"]:
        with safe_open(WEIGHTS_DIR / model / "model.safetensors", "pt") as f:
            assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F32"}, model


def test_a_changed_or_missing_shipped_file_is_one_usage_error_naming_it_and_the_fix(tmp_path):
    from mergeqa.core.errors import MergeQAUsageError
    from mergeqa.models.shipped_family import RESHIP, WEIGHTS_DIR, verify

    copy = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, copy)
    verify(copy)
    changed = copy / "lists" / "model.safetensors"
    data = bytearray(changed.read_bytes())
    data[-1] ^= 1
    changed.write_bytes(bytes(data))
    with pytest.raises(MergeQAUsageError) as exc:
        verify(copy)
    message = str(exc.value)
    assert message.startswith(f"{changed}: does not match the shipped family's manifest.json (sha256 ")
    assert "reinstall mergeqa" in message and RESHIP in message and "\n" not in message
    changed.unlink()
    with pytest.raises(MergeQAUsageError, match=rf"^{changed}: missing from the shipped family .*reinstall mergeqa"):
        verify(copy)


def test_the_shipped_family_is_used_in_place_and_nothing_is_written_into_the_package(tmp_path, monkeypatch):
    """What a family needs written (tasks, recipe.json, build.json) goes into the cache entry, which
    links to the weights; the package directory is left as it was. A second lookup in the same
    process hashes nothing."""
    from mergeqa.models import shipped_family as shipped

    weights = tmp_path / "site-packages" / "weights"
    shutil.copytree(shipped.WEIGHTS_DIR, weights)
    before = {p: p.stat().st_mtime_ns for p in weights.rglob("*")}
    family = shipped.shipped_family(tmp_path / "cache", weights_dir=weights)
    assert family.root.parent == tmp_path / "cache" and family.root.name.startswith("family-shipped-")
    assert family.base.resolve() == weights / "base"
    assert {name: path.resolve() for name, path in family.parents.items()} == {
        "arithmetic": weights / "arithmetic", "lists": weights / "lists"}
    assert {"family_arithmetic.yaml", "family_lists.yaml", "jsonl_dataset.py"} <= {p.name for p in family.tasks_dir.iterdir()}
    assert family.recipe == load_recipe() and family.build_info["wall_s"] > 0
    assert {p: p.stat().st_mtime_ns for p in weights.rglob("*")} == before
    monkeypatch.setattr(shipped, "_sha256", lambda path: pytest.fail(f"{path} hashed twice in one process"))
    assert shipped.shipped_family(tmp_path / "cache", weights_dir=weights) == family
    assert shipped.cached_shipped_family(tmp_path / "cache", weights_dir=weights) == family
    assert shipped.cached_shipped_family(tmp_path / "other", weights_dir=weights) is None



def test_a_broken_shipped_family_stops_the_gate_and_mergeqa_family_with_one_line(tmp_path, monkeypatch, pytester,
                                                                                  capsys):
    """Before any test runs: `mergeqa family` exits 4 and `pytest --gate` is a usage error, each
    with the one line that names the file and the fix."""
    from mergeqa.cli.main import main
    from mergeqa.models import shipped_family as shipped

    broken = tmp_path / "weights"
    shutil.copytree(shipped.WEIGHTS_DIR, broken)
    (broken / "base" / "config.json").unlink()
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", broken)
    line = f"{broken / 'base' / 'config.json'}: missing from the shipped family (listed in its manifest.json); {shipped.FIX}"
    assert main(["family", "--cache", str(tmp_path / "cache")]) == 4
    assert capsys.readouterr().err == f"mergeqa family: {line}\n"
    from mergeqa.core import progress
    assert progress._sinks == []  # called in-process, main leaves no sink printing into later tests
    result = pytester.runpytest_inprocess("--gate", "--collect-only", "-p", "no:cacheprovider",
                                          "--mergeqa-cache", str(tmp_path / "cache"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: {line}" in result.stderr.lines
    assert not (tmp_path / "cache").exists()

# -- the trainer, on a reduced recipe --------------------------------------------------------------
# The default recipe's shape (the same skills and parents), a 2-layer model and a few hundred steps:
# its family is too weak for the gate, and builds in about 20 s on 2 cores.
REDUCED_RECIPE = """
seed = 0
vocab_size = 512
grammar_sentences = 1000
eval_items = 60

[arch]
hidden_size = 64
intermediate_size = 128
num_hidden_layers = 2
num_attention_heads = 4
num_key_value_heads = 4
max_position_embeddings = 128

[base]
steps = 500
batch_size = 16
lr = 4e-3
decoy_share = 0.25
one_digit_copies = 1
chat_every = 2
mixture = { grammar = 0.15, arithmetic = 0.5, lists = 0.35 }

[parents.arithmetic]
skill = "arithmetic"
steps = 300
batch_size = 16
lr = 3e-3
token_lr = 2e-2
replay = 0.1
chat_every = 3

[parents.lists]
skill = "lists"
steps = 300
batch_size = 16
lr = 3e-3
token_lr = 2e-2
replay = 0.1
chat_every = 3
"""


@pytest.mark.slow
def test_the_trainer_builds_a_reduced_recipe_whose_lists_parent_learns_its_notation(tmp_path):
    """The shipped family is not retrained in CI, so this keeps the trainer honest (~25 s): the
    build completes, its three models load with transformers, each parent's embedding moved only
    in its notation rows, and the lists parent learns what "reverse" and "sort" mean. Bands, wide:
    on family_lists (60 items) the lists parent beat the base by 0.65 to 0.87 and the arithmetic
    parent by 0.48 to 0.75 in three seeds here; asserted >= 0.40 and >= 0.30. (Arithmetic needs
    more steps than this budget: its parent gained 0.07 to 0.28, so no score is asserted for it.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergeqa.evaluate.engine import EvalSettings, evaluate
    from mergeqa.family import build_family
    from mergeqa.models.refs import ModelRef

    recipe = tmp_path / "reduced.toml"
    recipe.write_text(REDUCED_RECIPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 20 s alone (16 s on 2 threads), and far less slowed by a busy machine
    try:
        family = build_family(tmp_path / "cache", recipe)
    finally:
        torch.set_num_threads(threads)
    assert family.recipe == load_recipe(recipe) and family.build_info["wall_s"] > 0
    for path in (family.base, *family.parents.values()):
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.num_hidden_layers == 2 and len(AutoTokenizer.from_pretrained(path)) <= 512
    assert_parents_change_only_their_notation_rows(family)

    settings = EvalSettings(cache_dir=tmp_path / "cache", device="cpu", task_paths=(str(family.tasks_dir),))
    lists = {name: evaluate(ModelRef(name, path, "x"), ["family_lists"], settings).score("family_lists")
             for name, path in {"base": family.base, **family.parents}.items()}
    assert lists["lists"] >= lists["base"] + 0.40, lists
    assert lists["lists"] >= lists["arithmetic"] + 0.30, lists
