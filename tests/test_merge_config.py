"""mergekit's own example configs, adapted to small local models, and the mistakes users make in
them: each config is accepted with the right parents and base, or refused before anything runs in
one line (exit code 4) that names the file and the line.

The examples are mergekit's examples/ties.yml, gradient-slerp.yml, orcamini-platy-44layer.yml and
mega.yml, with hub ids replaced by directories of tiny 4-layer Llama checkpoints (./a, ./b, ./c,
./base) and 40 layers by 4. The exit-code cases run pytest in a subprocess (mostly mergekit's
import, about 10 s); the rest run in-process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergeqa.core.errors import MergeQAUsageError

# examples/ties.yml (merge_method: ranked_ties there, which this mergekit does not have)
TIES = """\
models:
  - model: ./a # Best
    parameters:
      density: [0.8, 0.3, 0.1]
      weight: [1.0, 0.8, 0.5]
  - model: ./b #Middle
    parameters:
      density: [0.1, 0.4, 0.1]
      weight: [0.2, 0.8, 0.1]
  - model: ./c # 2nd End
    parameters:
      density: [0.1, 0.2, 0.6]
      weight: [0.5, 0.8, 1.0]
merge_method: {method}
base_model: ./base
parameters:
dtype: bfloat16
"""

# examples/gradient-slerp.yml: `pattern:`, the older spelling of `filter:`
GRADIENT_SLERP = """\
slices:
  - sources:
      - model: ./a
        layer_range: [0, 4]
      - model: ./b
        layer_range: [0, 4]
merge_method: slerp
base_model: ./a
parameters:
  t:
    - pattern: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - pattern: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float16
"""

# examples/orcamini-platy-44layer.yml: layers [0, 24) of one model and [20, 40) of the other
PASSTHROUGH = """\
slices:
  - sources:
    - model: ./a
      layer_range: {first}
  - sources:
    - model: ./b
      layer_range: {second}
merge_method: passthrough
dtype: float16
"""

# examples/mega.yml: two documents, the second merging the first by its name
MEGA = """\
slices:
  - sources:
      - model: ./a
        layer_range: [0, 4]
      - model: ./b
        layer_range: [0, 4]
merge_method: slerp
base_model: ./a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5 # fallback for rest of tensors
dtype: float16
name: gradient-slerp
---
models:
  - model: gradient-slerp
    parameters:
      density: [1, 0.7, 0.1] # density gradient
      weight: 1.0
  - model: ./c
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: ./base
parameters:
  normalize: true
  int8_mask: true
dtype: float16
name: gradient-slerp-ties
"""

# Each of mergekit's registered methods: what it makes of base_model. A method a new mergekit adds
# fails test_every_registered_method_has_a_role until someone reads it and adds it here.
ROLES = {
    "slerp": "endpoint", "nearswap": "endpoint", "arcee_fusion": "endpoint",
    "linear": "input", "karcher": "input", "passthrough": "input",
    "task_arithmetic": "base", "ties": "base", "dare_ties": "base", "dare_linear": "base",
    "breadcrumbs": "base", "breadcrumbs_ties": "base", "della": "base", "della_linear": "base",
    "model_stock": "base", "sce": "base", "ram": "base", "ramplus_tl": "base",
    "nuslerp": "base", "multislerp": "base",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A directory holding ./a, ./b, ./c and ./base: one tiny 4-layer Llama, copied (the checks
    read config.json and the safetensors header; the merge test needs only loadable weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(root / "a"))
    for name in ("b", "c", "base"):
        shutil.copytree(root / "a", root / name)
    (root / "not-a-model").mkdir()
    return root


def _write(root: Path, name: str, text: str) -> Path:
    (root / name).write_text(text)
    return root / name


def _session(root: Path, *configs: str):
    from mergeqa.models.session import GateSession

    return GateSession.from_options(models=[], parents=None, base=None, merge_configs=list(configs),
                                    cache_dir=root / "cache", device="cpu", dtype="float32", seed=0)


@pytest.mark.parametrize("name, text, parents, base, warned", [
    ("ties.yml", TIES.format(method="ties"), ["a", "b", "c"], "base", 0),
    ("gradient-slerp.yml", GRADIENT_SLERP, ["a", "b"], None, 2),
    ("passthrough.yml", PASSTHROUGH.format(first=[0, 3], second=[1, 4]), ["a", "b"], None, 0),
])
def test_mergekit_examples_give_parents_and_base(models, monkeypatch, name, text, parents, base, warned):
    monkeypatch.chdir(models)  # mergekit reads model paths relative to the working directory
    _write(models, name, text)
    gate = _session(models, name)
    assert [p.name for p in gate.parents()] == parents
    assert (gate.base().name if gate.base() else None) == base
    assert len(gate.merge_config_warnings) == warned
    for w in gate.merge_config_warnings:  # gradient-slerp's two `pattern:` lines
        assert w.startswith(f"--merge-config {name}: line ") and "write `filter: " in w


def test_slerp_endpoints_are_both_parents_even_when_base_model_is_not_listed(models, monkeypatch):
    """mergekit appends base_model to a `models:` list that lacks it: for slerp both are parents."""
    monkeypatch.chdir(models)
    _write(models, "slerp.yml", "merge_method: slerp\nbase_model: ./a\nmodels:\n  - model: ./b\n"
                                "parameters: {t: 0.5}\n")
    gate = _session(models, "slerp.yml")
    assert sorted(p.name for p in gate.parents()) == ["a", "b"] and gate.base() is None


# examples/mega.yml as mergekit-mega wrote it: documents named by `out_path:`, the second merging
# the first by that path
MEGA_OUT_PATH = (MEGA.replace("name: gradient-slerp-ties", "out_path: ./models/gradient-slerp-ties")
                 .replace("name: gradient-slerp", "out_path: ./models/gradient-slerp")
                 .replace("  - model: gradient-slerp\n", "  - model: ./models/gradient-slerp\n"))


@pytest.mark.parametrize("text", [MEGA, MEGA_OUT_PATH], ids=["mergekit-multi names", "mergekit-mega out_path"])
def test_each_document_of_a_multi_document_config_is_a_merge_with_its_own_parents(models, monkeypatch, text):
    """mega.yml: the gradient slerp of ./a and ./b (both endpoints, no base), then a ties of that
    merge and ./c over ./base. Each document is a merge under test; the second's parents are the
    first merge and ./c, its base ./base; the whole run's parents are all of them."""
    monkeypatch.chdir(models)
    _write(models, "mega.yml", text)
    gate = _session(models, "mega.yml")
    assert gate.merged_names == ["gradient-slerp", "gradient-slerp-ties"]
    assert gate.merge_config_warnings == []
    assert gate.parent_names("gradient-slerp") == ["a", "b"]
    assert gate.parent_names("gradient-slerp-ties") == ["gradient-slerp", "c"]
    assert gate.parent_names() == ["a", "b", "gradient-slerp", "c"]
    assert [p.name for p in gate.parents("gradient-slerp")] == ["a", "b"] and gate.base("gradient-slerp") is None
    assert gate.base("gradient-slerp-ties").name == "base"
    assert [p.name for p in gate.parents(build=False)] == ["a", "b", "c"]  # builds nothing
    assert not (models / "cache").exists()


def test_a_multi_document_config_is_built_in_order_by_mergekit(models, monkeypatch):
    """Building the second document builds the first, and the second merges that directory (as
    mergekit-multi does with its intermediate directory): the ties merge's model card names it,
    and it is the same ModelRef as the merge under test."""
    monkeypatch.chdir(models)
    _write(models, "mega.yml", MEGA)
    gate = _session(models, "mega.yml")
    ties = gate.merged("gradient-slerp-ties")
    slerp = gate.merged("gradient-slerp")
    assert (ties.path / "config.json").is_file() and (slerp.path / "config.json").is_file()
    card = (ties.path / "mergekit_config.yml").read_text()
    assert str(slerp.path) in card and "gradient-slerp\n" not in card
    first, c = gate.parents("gradient-slerp-ties")
    assert first is slerp and c.name == "c"
    # the same recipe in a new session finds both merges in the cache
    again = _session(models, "mega.yml")
    assert again.merged("gradient-slerp-ties").path == ties.path


def test_accepted_examples_are_merged_by_mergekit(models, monkeypatch, tmp_path):
    """What the checks accept, mergekit merges (the checks are no stricter than mergekit)."""
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from mergeqa.models.merge_config import check_merge_config, parse_merge_config

    monkeypatch.chdir(models)
    for name, text in [("ties.yml", TIES.format(method="ties")), ("gradient-slerp.yml", GRADIENT_SLERP),
                       ("passthrough.yml", PASSTHROUGH.format(first=[0, 3], second=[1, 4]))]:
        check_merge_config(_write(models, name, text))
        run_merge(parse_merge_config(models / name).config, str(tmp_path / name),
                  options=MergeOptions(copy_tokenizer=False, quiet=True, lazy_unpickle=False))
        assert (tmp_path / name / "config.json").is_file(), name


def test_every_registered_method_has_a_role():
    from mergekit.merge_methods import registered_methods

    from mergeqa.models.merge_config import base_model_role

    assert {m.spec.name: base_model_role(m) for m in registered_methods()} == ROLES


@pytest.mark.parametrize("method, parents, base", [
    ("slerp", ["a", "b"], []), ("nearswap", ["a", "b"], []), ("arcee_fusion", ["a", "b"], []),
    ("ties", ["b"], ["a"]), ("task_arithmetic", ["b"], ["a"]), ("dare_ties", ["b"], ["a"]),
    ("della", ["b"], ["a"]), ("breadcrumbs", ["b"], ["a"]), ("linear", ["a", "b"], []),
])
def test_merge_roles_per_method(method, parents, base):
    """The same two-model config under each method: which of ./a (base_model) and ./b are parents."""
    from mergekit.config import MergeConfiguration

    from mergeqa.models.merge_config import merge_roles

    config = MergeConfiguration.model_validate(
        {"merge_method": method, "base_model": "./a", "models": [{"model": "./a"}, {"model": "./b"}]})
    got_parents, got_bases = merge_roles(config)
    assert [str(r) for r in got_parents] == [f"./{p}" for p in parents]
    assert [str(r) for r in got_bases] == [f"./{b}" for b in base]


# (case, config files written into the models directory, extra options, what the line says)
BAD = {
    "unknown method (mergekit's ties.yml)": (
        {"ties.yml": TIES.format(method="ranked_ties")}, [],
        ["ties.yml: line 14:", "unknown merge_method 'ranked_ties'", "known, closest first: ties, "]),
    "missing model": (
        {"missing.yml": TIES.format(method="ties").replace("./c", "./gone")}, [],
        ["missing.yml: line 10:", "model ./gone: no such directory", "config.json"]),
    "not a model directory": (
        {"notmodel.yml": TIES.format(method="ties").replace("./base", "./not-a-model")}, [],
        ["notmodel.yml: line 15:", "model ./not-a-model: no config.json in this directory"]),
    "layer range start >= end": (
        {"empty.yml": PASSTHROUGH.format(first=[3, 3], second=[1, 4])}, [],
        ["empty.yml: line 4:", "layer_range [3, 3] of ./a is empty"]),
    "layer range past the end": (
        {"past.yml": PASSTHROUGH.format(first=[0, 24], second=[20, 40])}, [],
        ["past.yml: line 4:", "layer_range [0, 24] of ./a ends past its 4 layers"]),
    "unknown parameter": (
        {"typo.yml": TIES.format(method="ties").replace("density: [0.1, 0.4", "densty: [0.1, 0.4")}, [],
        ["typo.yml: line 8:", "parameter 'densty' is not one that ties reads", "Did you mean 'density'?"]),
    "pattern: as an error (-W error)": (
        {"gradient-slerp.yml": GRADIENT_SLERP}, ["-W", "error::mergeqa.core.errors.MergeConfigWarning"],
        ["gradient-slerp.yml: line 11:", "`pattern: self_attn` is not read", "write `filter: self_attn`"]),
    "a mergekit-multi document that is wrong (mega.yml, its second document)": (
        {"mega.yml": MEGA.replace("merge_method: ties", "merge_method: ranked_ties")}, [],
        ["mega.yml: line 31:", "unknown merge_method 'ranked_ties'"]),
    "two documents of one name": (
        {"twice.yml": MEGA.replace("name: gradient-slerp-ties", "name: gradient-slerp")}, [],
        ["twice.yml: line 19:", "two documents are called 'gradient-slerp'"]),
    "documents that merge each other": (
        {"circle.yml": MEGA.replace("      - model: ./a\n", "      - model: gradient-slerp-ties\n", 1)}, [],
        ["circle.yml: line 1:", "documents merge each other in a circle (gradient-slerp -> gradient-slerp-ties "
         "-> gradient-slerp)"]),
    "a good config, then a bad one": (
        {"good.yml": TIES.format(method="ties"), "bad.yml": TIES.format(method="ranked_ties")}, [],
        ["bad.yml: line 14:", "unknown merge_method 'ranked_ties'"]),
}


#: run as a whole pytest process (exit code, one stderr line, nothing collected, wall time): the cases
#: that exercise the wiring (-W error, several configs, a multi-document file); every case is also
#: checked in process below, where mergekit is imported once instead of ~10 s per process
THROUGH_PYTEST = ("unknown method (mergekit's ties.yml)", "pattern: as an error (-W error)",
                  "a mergekit-multi document that is wrong (mega.yml, its second document)",
                  "a good config, then a bad one")


@pytest.mark.parametrize("case", [c for c in BAD if "-W error" not in c])
def test_a_bad_config_is_one_usage_error_naming_file_and_line(models, monkeypatch, case):
    from mergeqa.core.errors import MergeQAUsageError

    files, _, expected = BAD[case]
    monkeypatch.chdir(models)
    configs = [_write(models, name, text).name for name, text in files.items()]
    with pytest.raises(MergeQAUsageError) as caught:
        _session(models, *configs)
    message = str(caught.value)
    assert "\n" not in message and all(part in message for part in expected), message


@pytest.mark.parametrize("case", THROUGH_PYTEST)
def test_a_bad_config_is_one_line_and_exit_4_before_anything_runs(models, case):
    files, options, expected = BAD[case]
    configs = [_write(models, name, text).name for name, text in files.items()]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--merge-config", *configs,
                           *options], cwd=models, text=True, capture_output=True, timeout=300, check=False)
    seconds = time.perf_counter() - started
    err = proc.stderr.strip().splitlines()
    print(f"{case}: exit {proc.returncode} in {seconds:.1f} s: {err[-1] if err else ''}")
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(err) == 1, proc.stderr
    for part in expected:
        assert part in err[0], err[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "collected" not in proc.stdout and "passed" not in proc.stdout  # no test ran, none was collected
    assert seconds < 30, f"{seconds:.1f} s to a usage error: a model is loaded before the check?"


def test_pattern_is_a_warning_and_the_run_goes_on(models):
    _write(models, "gradient-slerp.yml", GRADIENT_SLERP)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--merge-config",
                           "gradient-slerp.yml", "--collect-only", "-q"], cwd=models, text=True,
                          capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test_weights_finite[gradient-slerp]" in proc.stdout
    out = " ".join(proc.stdout.split())
    assert out.count("MergeConfigWarning: --merge-config gradient-slerp.yml: line ") == 2
    assert "write `filter: self_attn`" in out and "write `filter: mlp`" in out


def test_checks_read_no_weights(models, monkeypatch):
    """The checks run on headers and config.json: a config whose models are all present is
    checked in well under a second once mergekit is imported."""
    from mergeqa.models.merge_config import check_merge_config

    monkeypatch.chdir(models)
    path = _write(models, "ties.yml", TIES.format(method="ties"))
    check_merge_config(path)  # mergekit imported
    started = time.perf_counter()
    check_merge_config(path)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("text, expected", [
    (("merge_method: slerp\nbase_model: ./a\nmodels:\n  - model: ./a\n  - model: ./b\n  - model: ./c\n"
      "parameters: {t: 0.5}\n"), "line 4: merge_method slerp: Merge method requires exactly 2 inputs"),
    ("merge_method: slerp\nbase_model: ./a\nmodels:\n  - model: ./a\n  - model: ./b\n",
     "slerp needs parameter 't' and none is set"),
    ("merge_method: linear\nmodels:\n  - model: ./a\n    parameters: {weight: 1}\n  - model: ./b\n",
     "linear needs parameter 'weight' for ./b"),
    ("merge_method: ties\nbase_model: ./base\nmodels:\n  - model: ./a\n    parameters: {weight: 1, normalize: true}\n",
     "line 5: parameter 'normalize' of ties is one value for all models, so mergekit ignores it here"),
    (("merge_method: slerp\nslices:\n  - sources:\n    - {model: ./a, layer_range: [0, 3]}\n"
      "    - {model: ./b, layer_range: [0, 2]}\nbase_model: ./a\nparameters: {t: 0.5}\n"),
     "line 3: the sources of slice 0 span 3, 2 layers"),
    (("merge_method: slerp\nbase_model: ./a\nmodels: [{model: ./a}, {model: ./b}]\n"
      "parameters: {t: [{filtre: mlp, value: 1}, {value: 0}]}\n"),
     "unknown key 'filtre' in a conditional value"),
], ids=["slerp-of-three", "no-t", "no-weight", "shared-per-model", "slice-lengths", "filtre"])
def test_what_mergekit_would_find_only_while_merging(models, monkeypatch, text, expected):
    """Mistakes mergekit reports only once the models are loaded (or never): found from the file."""
    from mergeqa.models.merge_config import check_merge_config

    monkeypatch.chdir(models)
    _write(models, "case.yml", text)
    with pytest.raises(MergeQAUsageError) as err:
        check_merge_config(Path("case.yml"))
    assert str(err.value).startswith("--merge-config case.yml: ") and expected in str(err.value)


@pytest.mark.slow
def test_the_embedded_merges_pass_the_checks_with_the_family(family):
    """The five default merges, with the family's directories substituted: no error, no warning;
    slerp's base_model (arithmetic) is an endpoint, the task-vector merges' is the family base."""
    from mergeqa.models.merge_config import check_merge_config, merge_roles, parse_merge_config
    from mergeqa.models.session import DEFAULT_MERGES_DIR

    subs = {"base": str(family.base), **{k: str(v) for k, v in family.parents.items()}}
    roles = {}
    for path in sorted(DEFAULT_MERGES_DIR.glob("*.yaml")):
        assert check_merge_config(path, subs) == [], path.name
        parents, bases = merge_roles(parse_merge_config(path, subs).config)
        roles[path.stem] = (sorted(Path(str(p)).name for p in parents), [Path(str(b)).name for b in bases])
    both = ["arithmetic", "lists"]
    assert roles == {"dare_ties": (both, ["base"]), "linear_lopsided": (both, []), "slerp_lopsided": (both, []),
                     "task_arithmetic": (both, ["base"]), "ties": (both, ["base"])}


def test_a_gate_run_compares_each_document_with_its_own_parents(models, tmp_path):
    """Through pytest: mega.yml's two merges each get the config check against their own parents
    (the second against the first merge and ./c), and junit says what each was compared with."""
    import xml.etree.ElementTree as ET

    _write(models, "mega.yml", MEGA)
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--merge-config", "mega.yml",
                           "--mergeqa-cache", str(tmp_path / "cache"), "-k", "test_config_matches_parents",
                           f"--junitxml={junit}", "--report-dir", str(tmp_path / "report"), "-q"],
                          cwd=models, text=True, capture_output=True, timeout=600, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    tree = ET.parse(junit)
    props = {p.get("name"): p.get("value") for p in tree.iter("property")}
    assert props["mergeqa.run.merge.gradient-slerp.parents"] == "a, b"
    assert props["mergeqa.run.merge.gradient-slerp-ties.parents"] == "gradient-slerp, c"
    ran = {c.get("name"): [x.tag for x in c] for c in tree.iter("testcase")}
    assert set(ran) == {"test_config_matches_parents[gradient-slerp]", "test_config_matches_parents[gradient-slerp-ties]"}
    assert all("error" not in tags and "failure" not in tags for tags in ran.values()), ran
