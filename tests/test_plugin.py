"""The plugin as a user meets it: options, usage errors, the gate on real checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"


def run_pytest(*args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *map(str, args)], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def test_help_shows_one_group_with_defaults(tmp_path):
    out = run_pytest("--help", cwd=tmp_path).stdout
    section = " ".join(out[out.index("mergeqa: quality gate"):].split())  # help text wraps
    for option in ("--model", "--parents", "--base", "--merge-config", "--thresholds", "--device",
                   "--dtype", "--mergeqa-cache"):
        assert option in section
    assert "(default: auto)" in section and "(default: float32)" in section


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing", "no such directory"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no config.json"),
    (lambda d: (d / "file.txt").write_text("x") and d / "file.txt", "is a file, not a directory"),
])
@pytest.mark.parametrize("option", ["--model", "--parents", "--base"])
def test_bad_model_path_is_one_usage_error(tmp_path, make, expected, option):
    path = make(tmp_path)
    proc = run_pytest(option, path, cwd=tmp_path)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and str(path.name) in err[0], proc.stderr
    assert "config.json" in err[0] and "Traceback" not in proc.stderr + proc.stdout


def test_corrupt_safetensors_is_one_usage_error(tmp_path, family):
    bad = tmp_path / "corrupt"
    bad.mkdir()
    for f in family.base.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:4096])
    proc = run_pytest("--model", bad, cwd=tmp_path)
    assert proc.returncode == 4
    assert "model.safetensors: corrupt safetensors file" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_merge_config_yaml_error_names_the_line(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("merge_method: linear\nmodels:\n  - model: a\n   parameters: {weight: 1\n")
    proc = run_pytest("--merge-config", cfg, cwd=tmp_path)
    assert proc.returncode == 4
    assert "broken.yaml: line" in proc.stderr and "invalid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_thresholds_typo_is_one_usage_error(tmp_path):
    t = tmp_path / "thresholds.toml"
    t.write_text("[retention]\nmin_retension = 0.9\n")
    proc = run_pytest("--thresholds", t, "--collect-only", cwd=tmp_path)
    assert proc.returncode == 4
    assert "unknown key 'min_retension'. Did you mean 'min_retention'?" in proc.stderr


def _events(cache: Path) -> list[dict]:
    path = cache / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_gate_on_a_merge_made_by_mergekit_cli(tmp_path, family, private_cache):
    """A merge from `mergekit-yaml` outside the suite runs the same checks as a built one."""
    cfg = tmp_path / "ties.yaml"
    cfg.write_text(Path("mergeqa/data/family/merges/ties.yaml").read_text().replace("${base}", str(family.base))
                   .replace("${arithmetic}", str(family.parents["arithmetic"]))
                   .replace("${lists}", str(family.parents["lists"])))
    merged = tmp_path / "cli-ties"
    subprocess.run([str(MERGEKIT_YAML), str(cfg), str(merged)], check=True, capture_output=True)
    p = family.parents
    args = ["--parents", p["arithmetic"], p["lists"], "--base", family.base,
            "--mergeqa-cache", private_cache, "-p", "no:cacheprovider", "-q", "-k", "test_load"]
    user = run_pytest("--model", merged, *args, cwd=tmp_path)
    assert user.returncode == 0, user.stdout[-3000:]
    collected = run_pytest("--model", merged, *args, "--collect-only", cwd=tmp_path).stdout
    for test in ("test_loads[cli-ties]", "test_config_matches_parents[cli-ties]", "test_weights_finite[cli-ties]"):
        assert test in collected
    built = run_pytest("--merge-config", cfg, *args, "--collect-only", cwd=tmp_path).stdout
    assert "test_weights_finite[ties]" in built


@pytest.mark.slow
def test_xdist_builds_each_merge_once(tmp_path, private_cache):
    proc = run_pytest("--gate", "-n", "2", "-k", "test_load", "--mergeqa-cache", private_cache,
                      "-p", "no:cacheprovider", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "15 passed" in proc.stdout
    built = [e["config"] for e in _events(private_cache) if e["event"] == "merge_built"]
    assert sorted(Path(c).stem for c in built) == ["dare_ties", "linear_lopsided", "slerp_lopsided", "task_arithmetic", "ties"]


@pytest.mark.parametrize("toml, expected", [
    ('[retention]\nsuite = "famly"\n', "no suite 'famly' in [suites]. Did you mean 'family'?"),
    ('[probing]\nphenomena = ["agreemnt"]\n', "[probing] unknown probing phenomenon 'agreemnt'. Did you mean 'agreement'?"),
])
def test_unknown_names_in_thresholds_are_usage_errors(tmp_path, toml, expected):
    t = tmp_path / "thresholds.toml"
    t.write_text(toml)
    proc = run_pytest("--thresholds", t, "--collect-only", cwd=tmp_path)
    assert proc.returncode == 4 and expected in proc.stderr and str(t) in proc.stderr


@pytest.mark.parametrize("toml, expected", [
    ("[statistics]\nalpha = 2\n", "[statistics] alpha = 2: must be in (0, 1)"),
    ("[statistics]\npower = 0\n", "[statistics] power = 0: must be in (0, 1)"),
    ("[retention]\nmin_retention = nan\n", "[retention] min_retention = nan: must be a finite number"),
    ("[retention]\nmin_retention = 1.5\n", "[retention] min_retention = 1.5: must be in (0, 1]"),
    ('[statistics]\ninconclusive = "xfail"\n', '"xfail" was removed'),
    ("[suites.mine]\ntasks = []\n", "[suites.mine] tasks is empty"),
    ('[retention.capabilities]\nfamily_lists = "list"\n',
     "[retention.capabilities] family_lists = 'list' names no parent of this run (parents are named by their directory names). Did you mean 'lists'?"),
    ("[probing]\nseeds = 2.5\n", "[probing] seeds = 2.5: expected a whole number like 3"),
    ("[retension]\nsuite = 'family'\n", "unknown section [retension]. Did you mean 'retention'?"),
])
def test_nonsense_in_thresholds_is_one_usage_error(tmp_path, toml, expected):
    t = tmp_path / "thresholds.toml"
    t.write_text(toml)
    proc = run_pytest("--gate", "--thresholds", t, "--collect-only", cwd=tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 4 and len(err) == 1, proc.stdout[-2000:] + proc.stderr
    assert expected in err[0] and str(t) in err[0] and "Traceback" not in proc.stdout + proc.stderr


def test_a_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path):
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    marker = tmp_path / "unpickled"
    # a pickle that would create `marker` if anything unpickled it
    import pickle

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (model / "pytorch_model.bin").write_bytes(pickle.dumps(Bomb()))
    proc = run_pytest("--model", model, cwd=tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 4 and len(err) == 1, proc.stderr
    assert "only pickle weights (pytorch_model.bin); mergeqa does not unpickle model files" in err[0]
    assert "save_pretrained" in err[0] and not marker.exists()


@pytest.mark.slow
def test_the_guides_add_a_check_example_runs(tmp_path, family, private_cache):
    """The user guide's example check (docs/guide.md), copied as it is, runs per merge and reports
    through decide."""
    import re
    import xml.etree.ElementTree as ET

    guide = (Path(__file__).resolve().parent.parent / "docs" / "guide.md").read_text()
    section = guide[guide.index("### Adding a check"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "test_my_checks.py").write_text(code)
    p = family.parents
    junit = tmp_path / "junit.xml"
    proc = run_pytest("test_my_checks.py", "--model", p["arithmetic"], "--parents", p["arithmetic"], p["lists"],
                      "--mergeqa-cache", private_cache, "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
                      f"--junitxml={junit}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout and "arithmetic: deployable: all 1 checks pass" in proc.stdout
    props = {x.get("name"): x.get("value") for x in ET.parse(junit).iter("property")}
    assert props["mergeqa.custom.vocab_rows.outcome"] == "pass"
    assert props["mergeqa.custom.vocab_rows.obtained"] == props["mergeqa.custom.vocab_rows.threshold"]
    summary = (tmp_path / "summary.md").read_text()
    assert summary.splitlines()[0] == "# mergeqa gate: deployable: 1 of 1 merges pass every check"
    assert summary.count("- arithmetic: deployable") == 1
