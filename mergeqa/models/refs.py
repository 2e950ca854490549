"""Model directories under test: validation, content hashing and loading (once per process).

A `ModelRef` names a checkpoint directory and its role (merged, parent, base). Loading goes through
transformers' Auto classes exactly as for any user checkpoint; the embedded family is no special
case. Content hashes key every cache, so a changed model never reuses another model's results.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mergeqa.core.cache import hash_files
from mergeqa.core.errors import MergeQAUsageError

WEIGHT_GLOBS = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "chat_template.jinja", "vocab.json", "merges.txt")
MODEL_DIR_HELP = ("a model directory needs config.json and its weights (*.safetensors), as written "
                  "by save_pretrained or mergekit-yaml")


def validate_model_dir(path: str | os.PathLike, option: str = "--model") -> Path:
    """The resolved directory, or a usage error naming the path and what a model directory needs."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MergeQAUsageError(f"{option} {path}: no such directory; {MODEL_DIR_HELP}")
    if not p.is_dir():
        raise MergeQAUsageError(f"{option} {path}: is a file, not a directory; {MODEL_DIR_HELP}")
    if not (p / "config.json").is_file():
        raise MergeQAUsageError(f"{option} {path}: no config.json in this directory; {MODEL_DIR_HELP}")
    try:
        json.loads((p / "config.json").read_text())
    except (ValueError, OSError) as exc:
        raise MergeQAUsageError(f"{p / 'config.json'}: not valid JSON ({exc}); re-save the model") from None
    if not weight_files(p):
        raise MergeQAUsageError(f"{option} {path}: no *.safetensors weights; {MODEL_DIR_HELP}")
    if not any(p.glob("*.safetensors")):
        pickles = ", ".join(f.name for f in weight_files(p)[:2])
        raise MergeQAUsageError(
            f"{option} {path}: only pickle weights ({pickles}); mergeqa does not unpickle model files "
            "(loading a pickle can run arbitrary code). Convert once, on a machine you trust: "
            "python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{p}', use_safetensors=False).save_pretrained('{p}-safetensors')\" "
            "(save_pretrained writes safetensors), then pass that directory")
    for f in p.glob("*.safetensors"):
        check_safetensors(f)
    return p.resolve()


def check_safetensors(path: Path) -> None:
    """Read a safetensors header (cheap: no tensor data); a corrupt file is a usage error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError for every bad header
        raise MergeQAUsageError(f"{path}: corrupt safetensors file ({exc}); re-save the model or "
                                "re-run the merge") from None


def weight_files(path: Path) -> list[Path]:
    return sorted(f for g in WEIGHT_GLOBS for f in path.glob(g))


def content_files(path: Path) -> list[Path]:
    """The files that define a model's behaviour: weights, config and tokenizer."""
    extra = [path / n for n in ("config.json", "generation_config.json", *TOKENIZER_FILES)]
    return weight_files(path) + [f for f in extra if f.is_file()]


_HASHES: dict[tuple, str] = {}


def content_hash(path: Path) -> str:
    """sha256 of the model's weights, config and tokenizer; memoised on (path, size, mtime)."""
    files = content_files(path)
    stamp = (str(path), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp not in _HASHES:
        _HASHES[stamp] = hash_files(files)
    return _HASHES[stamp]


@dataclass
class ModelRef:
    """A checkpoint under test or a reference: a name (for test ids), a path and a role."""

    name: str
    path: Path
    role: str  # "merged" | "parent" | "base"
    merge_config: Path | None = None
    _loaded: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def content_hash(self) -> str:
        return content_hash(self.path)

    @property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    def tokenizer(self):
        if "tokenizer" not in self._loaded:
            from transformers import AutoTokenizer

            self._loaded["tokenizer"] = _friendly_load(self.path, AutoTokenizer.from_pretrained)
        return self._loaded["tokenizer"]

    def model(self, device: str = "cpu", dtype: str = "auto", device_map: str | None = None):
        """The transformers model, loaded once per process for this (device, dtype); with
        device_map="auto", sharded by accelerate over the GPUs this process sees instead."""
        key = ("model", device, dtype) + ((device_map,) if device_map else ())
        if key not in self._loaded:
            import torch
            from transformers import AutoModelForCausalLM

            torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
            placement = {"device_map": device_map} if device_map else {}
            model = _friendly_load(self.path, AutoModelForCausalLM.from_pretrained, dtype=torch_dtype,
                                   use_safetensors=True, **placement)
            self._loaded[key] = (model if device_map else model.to(device)).eval()
        return self._loaded[key]


def _friendly_load(path: Path, loader, **kwargs):
    """Call a transformers loader, turning a corrupt checkpoint into one usage error naming the file."""
    try:
        return loader(str(path), **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        # safetensors raises SafetensorError (a subclass of Exception) for a corrupt header
        raise MergeQAUsageError(f"{path}: cannot load ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                                "re-save or re-download the checkpoint") from None
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":
            raise MergeQAUsageError(f"{path}: corrupt safetensors file ({exc}); re-save or re-download "
                                    "the checkpoint") from None
        raise


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is present, else 'cpu'; 'cuda' without a GPU is a usage error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise MergeQAUsageError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return device
