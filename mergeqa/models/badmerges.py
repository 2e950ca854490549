"""Known-bad merges, derived from a good one: the failures merge users report, as model directories
the gate must reject (a NaN in one tensor, a truncated vocabulary, a zeroed layer, a tokenizer from
another vocabulary, a changed eos id, an fp16 overflow).

    variants = derive_known_bad(merge_dir, out_dir)   # {name: BadMerge(path, check, subject, cause)}

Each variant says which gate check must fail (`check`, e.g. "lint.finite": the test
test_lint[<variant>-finite]), what its message must name (`subject`: the tensor or token) and a
word of its likely cause. Deriving costs well under a second for the tiny family (the tokenizer is retrained).
Not a merge method and not for real checkpoints: every tensor is loaded in memory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mergeqa.core.state import CHECKS_DIR

VOCAB_CUT = 64  # rows dropped by the truncated-vocabulary variant
FP16_SCALE = 1e6  # an overflowing accumulation: |w| * 1e6 > 65504 for most weights


@dataclass(frozen=True)
class BadMerge:
    name: str
    path: Path
    check: str  # the check that must fail, as in its junit properties: "lint.finite"
    subject: str  # what its message must name (a tensor or a token)
    cause: str  # a word its "Likely cause" line must contain

    @property
    def test_name(self) -> str:
        """The failing test's name in the gate: test_lint[nan_tensor-finite]."""
        module, param = self.check.split(".", 1)
        return f"test_{module}[{self.name}-{param}]"


def _load(path: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def _save(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    for f in path.glob("*.safetensors"):
        f.unlink()
    (path / "model.safetensors.index.json").unlink(missing_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})


def _edit_json(path: Path, **changes) -> None:
    if path.is_file():
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data, indent=2))


def _pick(tensors: dict, *needles: str) -> str:
    """The first tensor name containing one of `needles` (in order), else the middle one."""
    names = sorted(tensors)
    for needle in needles:
        for n in names:
            if needle in n:
                return n
    return names[len(names) // 2]


def _vocab(path: Path) -> dict[str, int]:
    tj = json.loads((path / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in tj.get("added_tokens", [])})
    return vocab


# -- the variants: each edits a copy of the good merge and returns (subject, cause) ---------------
def nan_tensor(path: Path) -> tuple[str, str]:
    tensors = _load(path)
    name = _pick(tensors, "layers.1.mlp.down_proj", "layers.1.")
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    _save(path, tensors)
    return name, "NaN"


def vocab_truncated(path: Path) -> tuple[str, str]:
    """mergekit #425: the embedding and lm_head lose their last rows, config follows, the
    tokenizer does not."""
    tensors = _load(path)
    rows = None
    for name, t in tensors.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            rows = t.shape[0] - VOCAB_CUT
            tensors[name] = t[:rows].clone()
    _save(path, tensors)
    _edit_json(path / "config.json", vocab_size=rows)
    first_lost = {i: t for t, i in _vocab(path).items()}[rows]
    return repr(first_lost), "truncated"


def layer_zeroed(path: Path) -> tuple[str, str]:
    import torch

    tensors = _load(path)
    layer = "layers.2."
    for name in tensors:
        if layer in name:
            tensors[name] = torch.zeros_like(tensors[name])
    _save(path, tensors)
    return _pick(tensors, layer).split(layer)[0] + layer.rstrip("."), "zeroed"


def foreign_tokenizer(path: Path) -> tuple[str, str]:
    """mergekit #169: the tokenizer of another model family with the same vocabulary size (here
    trained on upper-cased text, so the byte alphabet agrees and every merged token moves)."""
    from mergeqa.family.grammar import corpus
    from mergeqa.family.tokenizer import train_tokenizer

    before = _vocab(path)
    size = max(before.values()) + 1
    tok = train_tokenizer([s.upper() for s in corpus(1, 3000)], size)
    tok.save_pretrained(str(path))
    after = _vocab(path)
    if max(after.values()) + 1 > size:  # would also fail the vocabulary check: not this variant
        raise RuntimeError(f"foreign tokenizer has {max(after.values()) + 1} tokens > {size}")
    moved = min((t for t in before if after.get(t) != before[t]), key=before.get)
    return repr(moved), "another vocabulary"


def eos_changed(path: Path) -> tuple[str, str]:
    """The eos id of another chat format: here the id of '.' (the family ends sentences with it)."""
    vocab = _vocab(path)
    new_eos = vocab.get("Ġ.", vocab.get("."))
    _edit_json(path / "config.json", eos_token_id=new_eos)
    _edit_json(path / "generation_config.json", eos_token_id=new_eos)
    return "eos_token_id", "eos"


def fp16_overflow(path: Path) -> tuple[str, str]:
    """mergekit #609/#704: a merge accumulated in fp16 overflows to Inf in one tensor."""
    import torch

    tensors = _load(path)
    name = _pick(tensors, "layers.0.mlp.up_proj", "layers.0.")
    for n, t in tensors.items():
        scaled = t.double() * FP16_SCALE if n == name else t
        tensors[n] = scaled.to(torch.float16) if t.is_floating_point() else t
    _save(path, tensors)
    _edit_json(path / "config.json", dtype="float16")
    return name, "fp16"


VARIANTS: dict[str, tuple[str, Callable[[Path], tuple[str, str]]]] = {
    "nan_tensor": ("lint.finite", nan_tensor),
    "vocab_truncated": ("lint.vocab", vocab_truncated),
    "layer_zeroed": ("lint.norms", layer_zeroed),
    "foreign_tokenizer": ("lint.tokenizer", foreign_tokenizer),
    "eos_changed": ("lint.special_tokens", eos_changed),
    "fp16_overflow": ("lint.finite", fp16_overflow),
}


def derive_known_bad(merge_dir: str | Path, out_dir: str | Path,
                     names: tuple[str, ...] | None = None) -> dict[str, BadMerge]:
    """Copy the good merge to out_dir/<variant> and break each copy; existing copies are replaced."""
    src, out = Path(merge_dir), Path(out_dir)
    result = {}
    for name in names or tuple(VARIANTS):
        check, derive = VARIANTS[name]
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src, target)
        subject, cause = derive(target)
        result[name] = BadMerge(name, target, check, subject, cause)
    return result


def family_merge(cache_dir: str | Path, merge: str = "ties") -> Path:
    """The embedded family's `merge` (mergeqa/data/family/merges/<merge>.yaml), built or from the cache;
    the family is the shipped one (mergeqa.models.shipped_family)."""
    from mergeqa.models.merging import build_merge
    from mergeqa.models.session import DEFAULT_MERGES_DIR
    from mergeqa.models.shipped_family import shipped_family

    family = shipped_family(Path(cache_dir))
    subs = {"base": str(family.base), **{k: str(v) for k, v in family.parents.items()}}
    return build_merge(DEFAULT_MERGES_DIR / f"{merge}.yaml", Path(cache_dir), substitutions=subs)


def from_family(cache_dir: str | Path, out_dir: str | Path, merge: str = "ties") -> tuple[Path, dict[str, BadMerge]]:
    """A family merge copied to out_dir/healthy, and every known-bad variant of it next to it."""
    good = family_merge(cache_dir, merge)
    variants = derive_known_bad(good, out_dir)
    healthy = Path(out_dir) / "healthy"
    if healthy.exists():
        shutil.rmtree(healthy)
    shutil.copytree(good, healthy)
    return healthy, variants


def gate_argv(models: list[Path], cache_dir: str | Path, junitxml: Path, *extra: str) -> list[str]:
    """The gate's command line over `models` against the family's parents and base (the lint and
    sanity checks only), as a user would type it; junit properties in xunit1."""
    import sys

    from mergeqa.models.session import FIXTURES_DIR
    from mergeqa.models.shipped_family import shipped_family

    family = shipped_family(Path(cache_dir))
    checks = CHECKS_DIR
    return [sys.executable, "-m", "pytest", str(checks / "test_lint.py"), str(checks / "test_sanity.py"),
            "--model", *map(str, models), "--parents", *map(str, family.parents.values()),
            "--base", str(family.base), "--mergeqa-cache", str(cache_dir),
            "--thresholds", str(FIXTURES_DIR.parent / "thresholds.toml"), f"--junitxml={junitxml}",
            "-o", "junit_family=xunit1", "-p", "no:cacheprovider", "-q", *extra]
