"""Inference cost (mergeqa.inspect.cost): sizes from safetensors headers, the depth rescaling, the gate's
ratios on fake measurements, and one real measurement of the family (merge = a parent)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from mergeqa.inspect.cost import CostMeasurement, checkpoint_size, cost_scale, size_verdicts, speed_verdicts


def _checkpoint(tmp_path, name, layers, dtype="float32"):
    import torch
    from safetensors.torch import save_file

    d = tmp_path / name
    d.mkdir()
    dt = getattr(torch, dtype)
    tensors = {"model.embed_tokens.weight": torch.zeros(10, 4, dtype=dt)}
    tensors.update({f"model.layers.{i}.mlp.weight": torch.zeros(4, 4, dtype=dt) for i in range(layers)})
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"num_hidden_layers": layers}))
    return d


def test_checkpoint_size_reads_parameters_and_layer_bytes_from_headers(tmp_path):
    d = _checkpoint(tmp_path, "m", 3)
    size = checkpoint_size(d, json.loads((d / "config.json").read_text()))
    assert size.parameters == 40 + 3 * 16
    assert (size.layer_bytes, size.other_bytes, size.layers) == (3 * 64, 160, 3)
    assert size.bytes_on_disk == (d / "model.safetensors").stat().st_size
    six = _checkpoint(tmp_path, "six", 6)
    assert size.scaled_to(6) == pytest.approx((six / "model.safetensors").stat().st_size, rel=0.01)
    assert size.dtypes == ("F32",)


def _measure(name, role, size, *, peak=1000, prefill=100.0, decode=50.0, latency=10.0):
    return CostMeasurement(name, role, size, peak, "test", prefill, decode, latency, 10, 8, 2, "cpu",
                           {"p": f"{name} says"})


def _sizes(tmp_path, merge_layers, merge_dtype="float32"):
    parent = _checkpoint(tmp_path, "parent", 4)
    merged = _checkpoint(tmp_path, "merged", merge_layers, merge_dtype)
    read = lambda d: checkpoint_size(d, json.loads((d / "config.json").read_text()))  # noqa: E731
    return read(merged), read(parent)


def test_a_depth_upscaled_merge_is_expected_bigger_and_says_so(tmp_path):
    merged_size, parent_size = _sizes(tmp_path, 6)
    merged, parents = _measure("up", "merged", merged_size, peak=1500), [_measure("a", "parent", parent_size)]
    scale = cost_scale(merged, parents)
    assert scale.upscaled and scale.depth == 1.5
    size, memory = size_verdicts(merged, parents, max_size_ratio=1.05, max_memory_ratio=1.25)
    assert size.outcome == "pass" and size.obtained == pytest.approx(1.0, abs=0.01)
    assert "depth up-scaled (6 layers vs the parents' 4)" in size.details[0]
    assert memory.outcome == "pass"
    # the same merge judged as if it were as deep as its parents would fail
    assert merged_size.bytes_on_disk / parent_size.bytes_on_disk > 1.05


def test_a_merge_saved_in_a_wider_dtype_fails_size_with_the_cause(tmp_path):
    merged_size, parent_size = _sizes(tmp_path, 4)
    parent_size = replace(parent_size, dtypes=("BF16",))
    wide = replace(merged_size, bytes_on_disk=parent_size.bytes_on_disk * 2)
    size, _ = size_verdicts(_measure("m", "merged", wide), [_measure("a", "parent", parent_size)],
                            max_size_ratio=1.05, max_memory_ratio=1.25)
    assert size.outcome == "fail" and size.obtained == pytest.approx(2.0, abs=0.01)
    assert "saved as F32 while the parents are BF16" in size.message()
    assert "mergeqa" not in size.figures and size.figures["parent.a.size_bytes"] == parent_size.bytes_on_disk


def test_speed_ratios_allow_for_depth_and_carry_the_samples(tmp_path):
    merged_size, parent_size = _sizes(tmp_path, 8)
    parents = [_measure("a", "parent", parent_size, decode=50.0), _measure("b", "parent", parent_size, decode=40.0)]
    merged = _measure("up", "merged", merged_size, decode=20.0, latency=20.0)  # half as fast, twice as deep
    prefill, decode, latency = speed_verdicts(merged, parents, min_speed_ratio=0.9, max_latency_ratio=1.1)
    assert decode.obtained == pytest.approx(20.0 * 2 / 40.0) and decode.outcome == "pass"
    assert latency.obtained == pytest.approx(1.0) and latency.outcome == "pass"
    assert "allowing x2 for depth" in decode.summary
    assert latency.data["samples"] == {"p": {"up": "up says", "a": "a says", "b": "b says"}}
    slow = speed_verdicts(replace(merged, decode_tokens_per_s=5.0), parents, min_speed_ratio=0.9,
                          max_latency_ratio=1.1)[1]
    assert slow.outcome == "fail" and "min_speed_ratio" in slow.message()


def test_a_model_that_cannot_generate_is_an_error_not_a_speed(tmp_path):
    merged_size, parent_size = _sizes(tmp_path, 4)
    broken = replace(_measure("m", "merged", merged_size), problem="the tokenizer has 600 tokens but the embedding 512 rows")
    parents = [_measure("a", "parent", parent_size)]
    size, memory = size_verdicts(broken, parents, max_size_ratio=1.05, max_memory_ratio=1.25)
    assert size.outcome == "pass" and memory.outcome == "error"
    speeds = speed_verdicts(broken, parents, min_speed_ratio=0.5, max_latency_ratio=2.0)
    assert [v.outcome for v in speeds] == ["error"] * 3 and "512 rows" in speeds[0].message()


@pytest.mark.slow
def test_measure_costs_on_the_family(family):
    from mergeqa.decision.thresholds import DEFAULTS
    from mergeqa.inspect import sanity
    from mergeqa.inspect.cost import measure_costs
    from mergeqa.models.refs import ModelRef

    prompts = sanity.parse_prompts(DEFAULTS["sanity"]["prompts"])[:2]
    refs = [ModelRef(n, p, "parent") for n, p in family.parents.items()]
    first = measure_costs(refs, prompts, device="cpu", dtype="float32", new_tokens=4, repeats=1)
    again = measure_costs(refs, prompts, device="cpu", dtype="float32", new_tokens=4, repeats=1)
    assert [m.model for m in first] == list(family.parents)
    for m, m2 in zip(first, again):
        weights = m.size.parameters * 4
        assert m.size.bytes_on_disk >= weights and m.peak_memory_bytes > weights
        assert m.peak_memory_bytes == m2.peak_memory_bytes  # counted, not sampled: repeatable
        assert m.prefill_tokens_per_s > 0 and m.decode_tokens_per_s > 0 and m.latency_ms > 0
        assert set(m.samples) == {p.name for p in prompts}


@pytest.mark.slow
def test_cost_check_through_the_gate(tmp_path, family, private_cache):
    """A copy of a parent gated as if it were a merge: same size, so cost.size is exactly 1 and
    passes; figures land in junit and the checklist row in report.html."""
    import shutil

    parents = list(family.parents.values())
    merged = shutil.copytree(parents[0], tmp_path / "merged")
    junit = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", f"--model={merged}",
                           "--parents", *map(str, parents), f"--mergeqa-cache={private_cache}",
                           "-k", "test_model_size", f"--junitxml={junit}", "-o", "junit_family=xunit1",
                           "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).iter("property")}
    assert float(props["mergeqa.cost.size.obtained"]) == 1.0
    assert props["mergeqa.cost.memory.outcome"] == "pass"
    html = (tmp_path / "report.html").read_text()
    assert "Model size acceptable" in html and "merged: deployable" in html
