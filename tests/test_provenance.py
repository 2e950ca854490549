"""Provenance-aware static checks: the tensors a merge config maps to each output tensor
(mergeqa.models.provenance), and lint / the config check comparing with them.

Cost: the mapping tests build 4-layer random Llamas of a few thousand weights and merge them
with mergekit (~1 s each after mergekit's import); the family test builds two merges of the tiny
family with mergekit (seconds, cached) and runs the gate's static checks over them and a copy
without its config in one subprocess (~20 s on 2 busy cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PASSTHROUGH = """\
# depth up-scaling as in mergekit's examples/orcamini-platy-44layer.yml: 3 + 3 layers of 4-layer models
slices:
  - sources:
      - model: {a}
        layer_range: [0, 3]
  - sources:
      - model: {b}
        layer_range: [1, 4]
merge_method: passthrough
dtype: float32
"""

GRADIENT_SLERP = """\
# as mergekit's examples/gradient-slerp.yml
slices:
  - sources:
      - model: {a}
        layer_range: [0, 4]
      - model: {b}
        layer_range: [0, 4]
merge_method: slerp
base_model: {a}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
"""

TIES = """\
merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters: {{density: 0.5, weight: 1.0}}
  - model: {b}
    parameters: {{density: 0.5, weight: 1.0}}
dtype: float32
"""


def _tiny_llama(path: Path, seed: int, layers: int = 4) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """alpha, lima and base: 4-layer random Llamas (different seeds) in one models/ folder."""
    root = tmp_path_factory.mktemp("models")
    return {name: _tiny_llama(root / name, seed) for seed, name in enumerate(("alpha", "lima", "base"))}


def _config_dir(tmp_path: Path, text: str) -> Path:
    """A merged directory holding only the mergekit_config.yml mergekit would write."""
    out = tmp_path / "merged"
    out.mkdir()
    (out / "mergekit_config.yml").write_text(text)
    return out


def _merge(tmp_path: Path, text: str) -> Path:
    """Built by mergekit as the gate builds a --merge-config (the tiny models have no tokenizer:
    mergekit logs that it copied none)."""
    from mergeqa.models.merging import build_merge

    config = tmp_path / "merge.yaml"
    config.write_text(text)
    return build_merge(config, tmp_path / "cache")


@pytest.fixture(scope="module")
def passthrough(tiny, tmp_path_factory) -> Path:
    """A passthrough merge of the tiny models (6 layers), mergekit_config.yml included."""
    return _merge(tmp_path_factory.mktemp("passthrough"), PASSTHROUGH.format(a=tiny["alpha"], b=tiny["lima"]))


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


# -- the mapping ---------------------------------------------------------------------------------
def test_passthrough_mapping_is_what_mergekit_builds(tiny, passthrough):
    from mergeqa.models.provenance import provenance_for

    merged = passthrough
    prov = provenance_for(merged, [tiny["alpha"], tiny["lima"]])
    assert prov.complete and prov.num_layers == 6 and prov.merge_method == "passthrough"
    assert prov.layer_plan() == "0-2 <- alpha 0-2; 3-5 <- lima 1-3"
    up = prov.tensors["model.layers.4.mlp.up_proj.weight"].sources
    assert [(s.path, s.tensor, s.layer) for s in up] == [(tiny["lima"], "model.layers.2.mlp.up_proj.weight", 2)]
    assert prov.tensors["model.embed_tokens.weight"].sources[0].path == tiny["alpha"]  # the first slice's
    assert {prov.tensors[n].sources[0].path for n in ("model.norm.weight", "lm_head.weight")} == {tiny["lima"]}
    # every output tensor is exactly its one mapped source tensor, and nothing else is written
    out, sources = _tensors(merged), {n: _tensors(p) for n, p in tiny.items()}
    assert set(out) == set(prov.tensors)
    for name, mapped in prov.tensors.items():
        (src,) = mapped.sources
        assert out[name].equal(sources[src.path.name][src.tensor]), name


def test_models_config_maps_every_layer_of_every_model_and_the_unlisted_base(tiny, tmp_path):
    from mergeqa.models.provenance import provenance_for

    merged = _config_dir(tmp_path, TIES.format(a=tiny["alpha"], b=tiny["lima"], base=tiny["base"]))
    prov = provenance_for(merged, list(tiny.values()))
    assert prov.num_layers == 4 and prov.layer_plan() == "0-3 <- alpha 0-3 + lima 0-3 + base 0-3"
    q = prov.tensors["model.layers.3.self_attn.q_proj.weight"]
    assert [(s.path.name, s.tensor) for s in q.sources] == [
        (n, "model.layers.3.self_attn.q_proj.weight") for n in ("alpha", "lima", "base")]
    assert q.parameters["alpha.density"] == 0.5 and q.parameters["lima.weight"] == 1.0


def test_gradient_parameters_change_the_weights_not_the_mapping(tiny, tmp_path):
    from mergeqa.models.provenance import provenance_for

    merged = _config_dir(tmp_path, GRADIENT_SLERP.format(a=tiny["alpha"], b=tiny["lima"]))
    prov = provenance_for(merged, [tiny["alpha"], tiny["lima"]])
    assert prov.num_layers == 4 and prov.layer_plan() == "0-3 <- alpha 0-3 + lima 0-3"

    def t(name: str) -> float:
        return prov.tensors[name].parameters["t"]

    # t runs over the layers as mergekit interpolates the gradient: layer k at k / 3 of [0, .5, .3, .7, 1]
    assert [t(f"model.layers.{k}.self_attn.q_proj.weight") for k in range(4)] == pytest.approx(
        [0.0, 0.5 + (0.3 - 0.5) / 3, 0.3 + (0.7 - 0.3) * 2 / 3, 1.0])
    assert t("model.layers.0.mlp.down_proj.weight") == 1.0 and t("model.layers.3.mlp.down_proj.weight") == 0.0
    assert t("model.layers.2.input_layernorm.weight") == 0.5  # the fallback
    assert [s.tensor for s in prov.tensors["model.layers.2.mlp.up_proj.weight"].sources] == [
        "model.layers.2.mlp.up_proj.weight"] * 2


def test_placeholders_and_other_paths_resolve_by_directory_name(tiny, tmp_path):
    from mergeqa.models.provenance import provenance_for

    text = PASSTHROUGH.format(a="${alpha}", b="../somewhere/else/lima")
    prov = provenance_for(_config_dir(tmp_path, text), [tiny["alpha"], tiny["lima"], tiny["base"]])
    assert prov.complete and prov.num_layers == 6
    assert {s.path for m in prov.tensors.values() for s in m.sources} == {tiny["alpha"], tiny["lima"]}
    # a hub id, given as its huggingface cache snapshot
    snapshot = tmp_path / "hub" / "models--org--lima" / "snapshots" / "0123abc"
    shutil.copytree(tiny["lima"], snapshot)
    from mergeqa.models.provenance import resolve_model

    assert resolve_model("org/lima", [tiny["alpha"], snapshot]) == (snapshot, "")
    assert resolve_model("org/lima", [tiny["alpha"]])[0] is None


def test_a_source_that_cannot_be_found_is_named_and_the_checks_say_so(tiny, passthrough, tmp_path):
    from mergeqa.inspect.lint import lint_checkpoint
    from mergeqa.models.provenance import provenance_for

    merged_copy = shutil.copytree(passthrough, tmp_path / "moved")
    text = PASSTHROUGH.format(a=tiny["alpha"], b="/nowhere/omega")
    (merged_copy / "mergekit_config.yml").write_text(text)
    prov = provenance_for(merged_copy, [tiny["alpha"], tiny["lima"]])
    assert not prov.complete and list(prov.unresolved) == ["/nowhere/omega"]
    assert prov.num_layers == 6  # the slices still say how many layers the merge has
    problem = prov.problem()
    assert "'/nowhere/omega'" in problem and "not among --parents/--base (alpha, lima)" in problem
    results = lint_checkpoint(merged_copy, [tiny["alpha"], tiny["lima"]])
    for check in ("tensors", "norms"):
        assert results[check].outcome == "error" and "/nowhere/omega" in results[check].reason, check
        assert "--parents" in results[check].message()
    assert results["finite"].outcome == "pass"


def test_an_unparseable_config_is_one_usage_error_naming_the_file(tiny, tmp_path):
    from mergeqa.core.errors import MergeQAUsageError
    from mergeqa.models.provenance import provenance_for

    merged = _config_dir(tmp_path, "merge_method: passthrough\nslices: [\n")
    with pytest.raises(MergeQAUsageError, match=r"mergekit_config.yml:.*invalid YAML.*fix or remove"):
        provenance_for(merged, [tiny["alpha"]])
    both = tmp_path / "both"
    both.mkdir()
    (both / "mergekit_config.yml").write_text(PASSTHROUGH.format(a=tiny["alpha"], b=tiny["lima"])
                                              + f"models:\n  - model: {tiny['alpha']}\n")
    with pytest.raises(MergeQAUsageError, match=r"mergekit_config.yml: Exactly one of 'models', 'slices'"):
        provenance_for(both, [tiny["alpha"]])


# -- lint with and without provenance ------------------------------------------------------------
def _edited_copy(src: Path, dst: Path, *, drop_config=False, edit=None) -> Path:
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    if drop_config:
        (dst / "mergekit_config.yml").unlink()
    if edit is not None:
        tensors = _tensors(dst)
        for f in dst.glob("*.safetensors"):
            f.unlink()
        (dst / "model.safetensors.index.json").unlink(missing_ok=True)
        edit(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / "model.safetensors"),
                  metadata={"format": "pt"})
    return dst


def test_a_passthrough_merge_passes_lint_with_its_provenance(tiny, passthrough):
    from mergeqa.inspect.lint import lint_checkpoint

    # the tensor checks (the tiny models have no tokenizer: the family test covers the others)
    results = lint_checkpoint(passthrough, [tiny["alpha"], tiny["lima"]],
                              checks=("finite", "tensors", "vocab", "norms", "dtype"))
    assert {c: v.outcome for c, v in results.items() if v.outcome != "pass"} == {}, \
        {c: v.message() for c, v in results.items() if v.outcome != "pass"}
    assert results["norms"].figures["min_ratio"] == 1.0 == results["norms"].figures["max_ratio"]
    assert results["tensors"].figures["layers"] == 6


def test_provenance_still_catches_a_dropped_and_a_zeroed_tensor(tiny, passthrough, tmp_path):
    import torch

    from mergeqa.inspect.lint import lint_checkpoint

    def damage(t):
        del t["model.layers.5.mlp.gate_proj.weight"]
        t["model.layers.4.self_attn.o_proj.weight"] = torch.zeros_like(t["model.layers.4.self_attn.o_proj.weight"])

    broken = _edited_copy(passthrough, tmp_path / "broken", edit=damage)
    results = lint_checkpoint(broken, [tiny["alpha"], tiny["lima"]])
    tensors, norms = results["tensors"], results["norms"]
    assert tensors.outcome == "fail" and tensors.details == [
        "missing: model.layers.5.mlp.gate_proj.weight (mapped from lima:model.layers.3.mlp.gate_proj.weight)"]
    assert "0-2 <- alpha 0-2; 3-5 <- lima 1-3" in tensors.summary
    assert norms.outcome == "fail" and norms.details[0].startswith("model.layers.4.self_attn.o_proj.weight: norm 0 ")
    assert "source's" in norms.details[0]


def test_a_nan_is_traced_to_the_source_layer_it_came_from(tiny, passthrough, tmp_path):
    from mergeqa.inspect.lint import lint_checkpoint

    def poison(name):
        return lambda t: t[name].view(-1).__setitem__(0, float("nan"))

    # lima's layer 2 holds a NaN; the passthrough put lima's layer 2 at output layer 4
    lima = _edited_copy(tiny["lima"], tmp_path / "sick" / "lima", edit=poison("model.layers.2.mlp.up_proj.weight"))
    merged = _edited_copy(passthrough, tmp_path / "merged", edit=poison("model.layers.4.mlp.up_proj.weight"))
    finite = lint_checkpoint(merged, [tiny["alpha"], lima], checks=("finite",))["finite"]
    assert finite.outcome == "fail" and finite.figures["first"] == "model.layers.4.mlp.up_proj.weight"
    assert finite.cause.startswith("the source(s) lima (model.layers.2.mlp.up_proj.weight) already hold NaN"), finite.cause
    # a NaN its sources do not hold is the merge's own
    clean = lint_checkpoint(merged, [tiny["alpha"], tiny["lima"]], checks=("finite",))["finite"]
    assert clean.outcome == "fail" and clean.cause.startswith("a NaN from the merge arithmetic"), clean.cause


def test_without_provenance_a_layer_count_change_is_not_comparable(tiny, passthrough, tmp_path):
    from mergeqa.inspect.lint import lint_checkpoint

    bare = _edited_copy(passthrough, tmp_path / "bare", drop_config=True)
    results = lint_checkpoint(bare, [tiny["alpha"], tiny["lima"]])
    for check in ("tensors", "norms"):
        v = results[check]
        assert v.outcome == "not_applicable", (check, v.message())
        assert v.reason.startswith("6 layers here, 4 in the parents and no merge config"), v.reason
        assert "not comparable" in v.reason
    assert results["finite"].outcome == results["vocab"].outcome == "pass"
    # the tensors outside the layers are still compared: one dropped there fails
    worse = _edited_copy(passthrough, tmp_path / "worse", drop_config=True,
                         edit=lambda t: t.pop("model.norm.weight"))
    tensors = lint_checkpoint(worse, [tiny["alpha"], tiny["lima"]])["tensors"]
    assert tensors.outcome == "fail" and tensors.details == ["missing: model.norm.weight (in every parent)"]


def test_config_check_expects_the_layer_count_the_config_builds(tiny, passthrough, tmp_path):
    """The gate's config check: a 6-layer passthrough passes; the same without its config is not
    comparable (skipped with the reason); a config.json that disagrees with the slices fails."""
    import json

    bare = _edited_copy(passthrough, tmp_path / "bare", drop_config=True)
    wrong = _edited_copy(passthrough, tmp_path / "wrong")
    cfg = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 4}))
    ok = _edited_copy(passthrough, tmp_path / "ok")
    xml = tmp_path / "config.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "mergeqa" / "checks" / "test_load.py"), "-k", "config",
         "--model", str(ok), str(bare), str(wrong), "--parents", str(tiny["alpha"]), str(tiny["lima"]),
         "--mergeqa-cache", str(tmp_path / "cache"), f"--junitxml={xml}", "-p", "no:cacheprovider",
         "-p", "no:xdist", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    cases = {c.get("name"): c for c in ET.parse(xml).getroot().iter("testcase")}
    assert {n: _outcome(c) for n, c in cases.items()} == {
        "test_config_matches_parents[ok]": "passed", "test_config_matches_parents[bare]": "skipped",
        "test_config_matches_parents[wrong]": "failure"}, proc.stdout[-3000:]
    assert "num_hidden_layers 6 here, 4 in the parents" in cases["test_config_matches_parents[bare]"].find(
        "skipped").get("message")
    failure = cases["test_config_matches_parents[wrong]"].find("failure").get("message")
    assert "num_hidden_layers: merged 4, 6 built by" in failure and "0-2 <- alpha 0-2; 3-5 <- lima 1-3" in failure


# -- the gate on mergekit merges of the family ---------------------------------------------------
def _outcome(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return tag
    return "passed"


def static_gate(family, cache_dir: Path, out: Path) -> tuple[dict[str, ET.Element], str]:
    """Build the passthrough and gradient-slerp merges of `family` with mergekit, copy the first
    without its mergekit_config.yml, and run the gate's static checks (load, config, lint) over
    the three in one pytest run, as a user would: ({test name: junit testcase}, output)."""
    from mergeqa.models.merging import build_merge

    subs = {"base": str(family.base), **{k: str(v) for k, v in family.parents.items()}}
    built = {}
    for name, text in (("passthrough", PASSTHROUGH), ("gradient_slerp", GRADIENT_SLERP)):
        config = out / f"{name}.yaml"
        config.write_text(text.format(a="${arithmetic}", b="${lists}"))
        built[name] = shutil.copytree(build_merge(config, cache_dir, substitutions=subs), out / name)
    bare = shutil.copytree(built["passthrough"], out / "no_config")
    (bare / "mergekit_config.yml").unlink()
    checks = REPO / "mergeqa" / "checks"
    xml = out / "static.xml"
    argv = [sys.executable, "-m", "pytest", str(checks / "test_load.py"), str(checks / "test_lint.py"),
            "--model", *map(str, [*built.values(), bare]), "--parents", *map(str, family.parents.values()),
            "--base", str(family.base), "--mergeqa-cache", str(cache_dir), f"--junitxml={xml}",
            "-o", "junit_family=xunit1", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", "-rs"]
    proc = subprocess.run(argv, cwd=out, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert xml.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {c.get("name"): c for c in ET.parse(xml).getroot().iter("testcase")}, proc.stdout


@pytest.mark.slow
def test_family_passthrough_and_gradient_slerp_merges_pass_every_static_check(family, cache_dir, tmp_path):
    cases, stdout = static_gate(family, cache_dir, tmp_path)
    outcomes = {n: _outcome(c) for n, c in cases.items()}
    for merge in ("passthrough", "gradient_slerp"):
        mine = {n: o for n, o in outcomes.items() if f"[{merge}" in n}
        assert len(mine) == 11 and set(mine.values()) == {"passed"}, (mine, stdout[-3000:])
    # without its config the 6-layer merge is not comparable layer by layer: skipped with the reason,
    # never failed as corruption; everything else about it passes
    bare = {n: o for n, o in outcomes.items() if "[no_config" in n}
    skipped = {n for n, o in bare.items() if o == "skipped"}
    assert skipped == {"test_config_matches_parents[no_config]", "test_lint[no_config-tensors]",
                       "test_lint[no_config-norms]"}, (bare, stdout[-3000:])
    assert set(bare.values()) == {"passed", "skipped"} and len(bare) == 11
    reason = cases["test_lint[no_config-tensors]"].find("skipped").get("message")
    assert "6 layers here, 4 in the parents" in reason and "not comparable" in reason
    config = cases["test_config_matches_parents[no_config]"].find("skipped").get("message")
    assert "num_hidden_layers 6 here, 4 in the parents" in config
