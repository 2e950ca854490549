"""Static lint of a merged checkpoint against its parents, from its files alone: tensors (finite,
names and shapes, norms, dtype), vocabulary, tokenizer, special tokens and chat template.

No forward pass and no transformers import: safetensors headers are read lazily with `safe_open`
and each tensor is streamed once through one reduction, so the cost is reading the checkpoint.
When the merged directory holds mergekit_config.yml (or --merge-config built it), names, shapes
and norms are compared with the source tensors the config maps to each tensor (mergeqa.models.provenance,
which reads the config with mergekit); without one, with the parents' tensors of the same name.
What the model *does* (generation, logits, perplexity) is mergeqa.inspect.sanity's job.

    results = lint_checkpoint(merged_dir, [parent_a, parent_b], LintLimits(0.25, 4.0))
    results["finite"].outcome, results["finite"].figures, results["finite"].message()
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.decision.verdict import Verdict

LINT_CHECKS = ("finite", "tensors", "vocab", "tokenizer", "special_tokens", "chat_template", "norms", "dtype")
SPECIAL_ROLES = ("bos", "eos", "pad", "unk")
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")
HEAD_SUFFIXES = ("lm_head.weight", "embed_out.weight")
DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
FLOAT_CODES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
FP16_MAX = 65504.0
CHUNK_ELEMENTS = 1 << 24  # a tensor is reduced in row blocks of at most this many values


@dataclass(frozen=True)
class LintLimits:
    """The [lint] section of thresholds.toml."""

    min_norm_ratio: float = 0.25  # tensor norm / smallest parent norm of the same tensor
    max_norm_ratio: float = 4.0  # tensor norm / largest parent norm of the same tensor

    @classmethod
    def from_thresholds(cls, thresholds) -> LintLimits:
        return cls(thresholds.get("lint", "min_norm_ratio"), thresholds.get("lint", "max_norm_ratio"))


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors code: F32, BF16, ...


@dataclass(frozen=True)
class TensorStats:
    norm: float  # Frobenius norm over the finite values; inf when their squares overflow
    nan: int
    inf: int

    @property
    def finite(self) -> bool:
        return self.nan == 0 and self.inf == 0


def _result(check: str, model: str, figures: dict, findings=(), **fields) -> Verdict:
    """A lint or sanity verdict; `settle()` makes it fail when it has findings (its details)."""
    return Verdict(check, model, figures=figures, details=list(findings), **fields)


# -- reading a checkpoint ------------------------------------------------------------------------
_STATS: dict[tuple, TensorStats] = {}  # (file, size, mtime, tensor) -> stats: parents are read once


class Checkpoint:
    """A model directory seen through its files; tensor data is read only by `stats()`."""

    def __init__(self, path: str | Path, name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.name
        self.provenance = None  # mergeqa.models.provenance.Provenance of a merge, set by lint_checkpoint
        self.source_checkpoints: dict[str, Checkpoint] = {}  # its sources' checkpoints, by path

    def _json(self, filename: str) -> dict | None:
        f = self.path / filename
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except ValueError as exc:
            raise MergeQAUsageError(f"{f}: not valid JSON ({exc}); re-save the model") from None

    @cached_property
    def tokenizer_json(self) -> dict | None:
        return self._json("tokenizer.json")

    @cached_property
    def config(self) -> dict:
        return self._json("config.json") or {}

    @cached_property
    def generation_config(self) -> dict | None:
        return self._json("generation_config.json")

    @cached_property
    def tokenizer_config(self) -> dict:
        return self._json("tokenizer_config.json") or {}

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        from safetensors import safe_open

        out = {}
        for file in sorted(self.path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    s = f.get_slice(name)
                    out[name] = TensorInfo(file, tuple(s.get_shape()), s.get_dtype())
        return out

    def stats(self) -> dict[str, TensorStats]:
        """Norm and non-finite counts of every floating tensor, streamed file by file."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name, info in self.tensors.items():
            if info.dtype in FLOAT_CODES:
                by_file.setdefault(info.file, []).append(name)
        out = {}
        for file, names in by_file.items():
            st = file.stat()
            keys = {n: (str(file), st.st_size, st.st_mtime_ns, n) for n in names}
            todo = [n for n in names if keys[n] not in _STATS]
            if todo:
                with safe_open(str(file), framework="pt") as f:
                    for n in todo:
                        _STATS[keys[n]] = _tensor_stats(f, n, self.tensors[n].shape)
            out.update({n: _STATS[keys[n]] for n in names})
        return out

    # -- tokenizer, from tokenizer.json (transformers' AutoTokenizer when there is none) --------
    @cached_property
    def vocab(self) -> dict[str, int] | None:
        tj = self.tokenizer_json
        if tj is not None:
            model_vocab = tj.get("model", {}).get("vocab")
            if isinstance(model_vocab, list):  # Unigram: [[piece, score], ...]
                vocab = {piece: i for i, (piece, _score) in enumerate(model_vocab)}
            else:
                vocab = dict(model_vocab or {})
            vocab.update(self.added_tokens)
            return vocab
        if not any((self.path / f).is_file() for f in ("tokenizer.model", "vocab.json")):
            return None
        from transformers import AutoTokenizer  # a slow-only tokenizer: rare, and costs seconds

        return dict(AutoTokenizer.from_pretrained(str(self.path)).get_vocab())

    @cached_property
    def added_tokens(self) -> dict[str, int]:
        tj = self.tokenizer_json or {}
        return {t["content"]: t["id"] for t in tj.get("added_tokens", [])}

    @cached_property
    def id_to_token(self) -> dict[int, str]:
        return {i: t for t, i in (self.vocab or {}).items()}

    @property
    def tokenizer_size(self) -> int | None:
        return max(self.vocab.values()) + 1 if self.vocab else None

    def token(self, token_id) -> str:
        if isinstance(token_id, list):
            return "[" + ", ".join(self.token(i) for i in token_id) + "]"
        if isinstance(token_id, str):  # a token the vocabulary lacks, as special_ids reports it
            return token_id
        return f"{token_id} ({self.id_to_token.get(token_id, '?')!r})" if token_id is not None else "none"

    @cached_property
    def chat_template(self) -> str | None:
        if (self.path / "chat_template.jinja").is_file():
            return (self.path / "chat_template.jinja").read_text()
        if (self.path / "chat_template.json").is_file():
            return json.dumps(self._json("chat_template.json").get("chat_template"))
        template = self.tokenizer_config.get("chat_template")
        return json.dumps(template) if isinstance(template, list) else template

    def special_ids(self, role: str) -> dict[str, object]:
        """{where: id} for a special token role, from every file that declares it."""
        out = {}
        key = f"{role}_token_id"
        if key in self.config:
            out["config.json"] = self.config[key]
        if self.generation_config and key in self.generation_config:
            out["generation_config.json"] = self.generation_config[key]
        token = self.tokenizer_config.get(f"{role}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if token is not None and self.vocab is not None:
            out["tokenizer"] = self.vocab.get(token, f"{token!r} not in vocab")
        return out


def _tensor_stats(handle, name: str, shape: tuple[int, ...]) -> TensorStats:
    """One pass over a tensor in row blocks: sum of squares (upcast + dot, the cheapest reduction on
    CPU), and NaN/Inf counts only when it is not finite (an infinite sum is the cheap signal)."""
    import torch

    numel = math.prod(shape)
    if not shape or numel <= CHUNK_ELEMENTS:
        blocks = [handle.get_tensor(name)]
    else:
        sl = handle.get_slice(name)
        step = max(1, CHUNK_ELEMENTS // max(1, numel // shape[0]))
        blocks = (sl[i:i + step] for i in range(0, shape[0], step))
    sumsq, nan, inf = 0.0, 0, 0
    for block in blocks:
        x = block.float().reshape(-1)
        s = float(torch.dot(x, x))
        if not math.isfinite(s):  # NaN/Inf, or finite values whose squares overflow float32
            isnan, isinf = torch.isnan(x), torch.isinf(x)
            nan, inf = nan + int(isnan.sum()), inf + int(isinf.sum())
            x = torch.where(isnan | isinf, torch.zeros((), dtype=x.dtype), x).double()
            s = float(torch.dot(x, x))
        sumsq += s
    return TensorStats(math.sqrt(sumsq), nan, inf)


def _vocab_tensors(ck: Checkpoint) -> dict[str, TensorInfo]:
    return {n: t for n, t in ck.tensors.items() if n.endswith(EMBEDDING_SUFFIXES + HEAD_SUFFIXES)}


def _layer(name: str) -> str:
    m = re.search(r"(.*?layers?\.\d+)\.", name)
    return m.group(1) if m else name


def _layer_ids(names) -> set[str]:
    """The layers tensors belong to ('model.layers.3'), from their names."""
    return {m.group(1) for n in names if (m := re.search(r"(.*?\b(?:layers?|h|blocks)\.\d+)\.", n))}


def _mapped(m: Checkpoint, name: str) -> list[tuple[Checkpoint, str]] | None:
    """(source checkpoint, tensor) for each input the merge config maps to output tensor `name`;
    None when there is no (complete) provenance or it maps nothing to `name`."""
    prov = m.provenance
    mapped = prov.tensors.get(name) if prov is not None and prov.complete else None
    if mapped is None:
        return None
    return [(m.source_checkpoints[str(s.path)], s.tensor) for s in mapped.sources]


def _layer_count_change(m: Checkpoint, parents: Sequence[Checkpoint]) -> str:
    """Without provenance: why layer tensors cannot be compared by name ('' when the layer count
    is the parents')."""
    ours, theirs = len(_layer_ids(m.tensors)), sorted({len(_layer_ids(p.tensors)) for p in parents})
    if not parents or theirs == [ours]:
        return ""
    return (f"{_count(ours, 'layer')} here, {' / '.join(map(str, theirs))} in the parents and no merge config "
            "(mergekit_config.yml in the merged directory, or --merge-config) to tell which source layer each "
            "came from: layer tensors not comparable, the others compared")


def _incomplete(r: Verdict, m: Checkpoint) -> Verdict | None:
    """The verdict as an error when the merge config's mapping cannot be completed."""
    if m.provenance is None or m.provenance.complete:
        return None
    r.outcome, r.reason = "error", m.provenance.problem()
    r.fix = ("pass every model the merge config reads with --parents / --base (matched by directory name), "
             "or remove the config from the merged directory to compare by tensor name")
    return r


def _count(n: int, what: str, plural: str | None = None) -> str:
    return f"{n} {what if n == 1 else plural or what + 's'}"


# -- the checks ----------------------------------------------------------------------------------
def lint_finite(m: Checkpoint, parents: Sequence[Checkpoint], limits: LintLimits) -> Verdict:
    stats = m.stats()
    bad = [(n, s) for n, s in stats.items() if not s.finite]
    r = _result("lint.finite", m.name, {"obtained": len(bad), "threshold": 0, "n": len(stats),
                                      "nan_values": sum(s.nan for _, s in bad),
                                      "inf_values": sum(s.inf for _, s in bad)},
                   expected="0 tensors with NaN/Inf")
    if not bad:
        return r
    name, first = bad[0]
    r.figures["first"] = name
    r.details = [f"{n}: {s.nan} NaN, {s.inf} Inf ({m.tensors[n].dtype} {list(m.tensors[n].shape)})"
                  for n, s in bad]
    kinds = " and ".join(f"{c} {k}" for k, c in (("NaN", first.nan), ("Inf", first.inf)) if c)
    r.summary = (f"tensor {name} holds {kinds} value{'s' if first.nan + first.inf > 1 else ''}; "
                 f"{_count(len(bad), 'tensor')} of {len(stats)} non-finite")
    sources = _mapped(m, name)
    if sources is not None:
        inherited = [f"{ck.name} ({t})" if t != name else ck.name for ck, t in sources
                     if t in ck.tensors and not ck.stats().get(t, first).finite]
    else:
        inherited = [p.name for p in parents if name in p.tensors and not p.stats().get(name, first).finite]
    sixteen = m.tensors[name].dtype == "F16"
    if inherited:
        r.cause = (f"the source(s) {', '.join(inherited)} already hold NaN/Inf, and the merge config maps them to "
                   f"{name}: the merge inherited it" if sources is not None else
                   f"the parent(s) {', '.join(inherited)} already hold NaN/Inf in {name}: the merge inherited it")
        r.fix = "repair or replace that parent, then merge again"
    elif first.inf and sixteen:
        r.cause = (f"an fp16 merge overflowed: values past +-{FP16_MAX:g} become Inf (and Inf-Inf NaN), "
                   "as in mergekit #609/#704")
        r.fix = "merge with dtype: bfloat16 or float32 (out_dtype too), then convert with a range check"
    elif first.inf:
        r.cause = "the tensor exploded past the dtype's range: task vectors summed with weights far over 1"
        r.fix = "lower the merge weights or set normalize: true, and merge in float32"
    else:
        r.cause = ("a NaN from the merge arithmetic (0/0: normalize over weights summing to 0, slerp of "
                   "zero vectors) or a corrupt write")
        r.fix = "check the merge weights of that tensor's layer and re-run the merge in float32"
    return r


def lint_tensors(m: Checkpoint, parents: Sequence[Checkpoint], limits: LintLimits) -> Verdict:
    """Names and shapes as the merge config maps them (provenance), else as in the parents; the
    vocabulary dimension belongs to lint_vocab."""
    r = _result("lint.tensors", m.name, {"obtained": 0, "threshold": 0, "n": len(m.tensors)},
                   expected="the parents' tensor names and shapes")
    if m.provenance is not None:
        return _incomplete(r, m) or _tensors_by_provenance(m, r)
    if not parents:
        r.reason = "no parents to compare with (--parents)"
        return r
    r.reason = _layer_count_change(m, parents)
    layered = _layer_ids(m.tensors) | set().union(*(_layer_ids(p.tensors) for p in parents))

    def compared(n: str) -> bool:
        return not r.reason or _layer_ids([n]).isdisjoint(layered)

    names = [{n for n in p.tensors if compared(n)} for p in parents]
    missing = sorted(set.intersection(*names) - set(m.tensors))
    extra = sorted({n for n in m.tensors if compared(n)} - set.union(*names))
    reshaped = []
    for n, info in m.tensors.items():
        shapes = {p.name: p.tensors[n].shape for p in parents if n in p.tensors and compared(n)}
        if shapes and all(_shape_key(n, s) != _shape_key(n, info.shape) for s in shapes.values()):
            reshaped.append(f"reshaped: {n} {list(info.shape)}, parents "
                            + ", ".join(f"{p} {list(s)}" for p, s in shapes.items()))
    r.details = ([f"missing: {n} (in every parent)" for n in missing]
                  + [f"extra: {n} (in no parent)" for n in extra] + reshaped)
    r.figures.update(obtained=len(r.details), missing=len(missing), extra=len(extra), reshaped=len(reshaped))
    if r.details:
        r.summary = f"{r.details[0]}; {_count(len(r.details), 'tensor')} differ from the parents"
        r.cause = ("layers dropped or duplicated (a passthrough/slices config), tied vs untied embeddings, "
                   "or parents of another architecture or size")
        r.fix = "merge parents of one architecture, and check the slices/layer_range of the merge config"
    return r


def _shape_key(n: str, shape: tuple) -> tuple:
    return shape[1:] if n.endswith(EMBEDDING_SUFFIXES + HEAD_SUFFIXES) else shape


def _tensors_by_provenance(m: Checkpoint, r: Verdict) -> Verdict:
    """Every tensor the merge config maps is here, no other, each shaped as its sources."""
    prov = m.provenance
    r.expected = f"the tensors {prov.origin} maps, shaped as their sources"
    r.figures.update(n=len(prov.tensors), provenance=prov.origin, layers=prov.num_layers)
    missing = sorted(set(prov.tensors) - set(m.tensors))
    extra = sorted(set(m.tensors) - set(prov.tensors))
    unmapped, reshaped = [], []
    for n in sorted(set(prov.tensors) & set(m.tensors)):
        shape = m.tensors[n].shape
        for (ck, t), src in zip(_mapped(m, n), prov.tensors[n].sources, strict=True):
            if t not in ck.tensors:
                if src.present:
                    continue  # optional in the architecture (a tied head): mergekit read it elsewhere
                unmapped.append(f"unmapped: {n} <- {ck.name} {t}, which {ck.name} does not hold "
                                f"({_count(len(_layer_ids(ck.tensors)), 'layer')})")
            elif _shape_key(n, ck.tensors[t].shape) != _shape_key(n, shape):
                reshaped.append(f"reshaped: {n} {list(shape)}, its source {ck.name} {t} {list(ck.tensors[t].shape)}")
    r.details = ([f"missing: {n} (mapped from {', '.join(s.label for s in prov.tensors[n].sources)})" for n in missing]
                 + [f"extra: {n} (the merge config maps nothing to it)" for n in extra] + unmapped + reshaped)
    r.figures.update(obtained=len(r.details), missing=len(missing), extra=len(extra), reshaped=len(reshaped),
                     unmapped=len(unmapped))
    if r.details:
        r.summary = (f"{r.details[0]}; {_count(len(r.details), 'tensor')} differ from what {prov.origin} "
                     f"maps (layers: {prov.layer_plan()})")
        r.cause = ("the checkpoint is not what its merge config builds: tensors dropped, added or resized after "
                   "the merge, or the config (or a source model of that name) is not the one that built it")
        r.fix = ("re-run the merge with this config, or ship the config that built the checkpoint; check the "
                 "source models given with --parents / --base")
    return r


def lint_vocab(m: Checkpoint, parents: Sequence[Checkpoint], limits: LintLimits) -> Verdict:
    """Embedding and lm_head rows >= the tokenizer's vocabulary and == config.vocab_size."""
    tok, cfg = m.tokenizer_size, m.config.get("vocab_size")
    rows = {n: t.shape[0] for n, t in _vocab_tensors(m).items()}
    r = _result("lint.vocab", m.name, {"obtained": min(rows.values(), default=0), "threshold": tok,
                                     "n": len(rows), "tokenizer_size": tok, "config_vocab_size": cfg,
                                     **{f"rows.{n}": v for n, v in rows.items()}},
                   expected=f"rows >= {tok} (tokenizer) and == {cfg} (config.json vocab_size)")
    if not rows:
        r.reason = f"no embedding tensor recognised (names ending in {', '.join(EMBEDDING_SUFFIXES)})"
        return r
    short = {n: v for n, v in rows.items() if tok is not None and v < tok}
    for n, v in short.items():
        shown = ", ".join(m.token(i) for i in range(v, min(tok, v + 3)))
        r.details.append(f"{n}: {v} rows < {tok} tokens; ids {v}..{tok - 1} ({shown}, ...) have no row")
    r.details += [f"{n}: {v} rows but config.json vocab_size = {cfg}" for n, v in rows.items()
                   if cfg is not None and v != cfg and n not in short]
    if not r.details:
        return r
    if short:
        n, v = next(iter(short.items()))
        r.summary = (f"{_count(tok - v, 'token')} past the embedding: token {m.token(v)} and up have no row "
                     f"in {n} ({v} rows, tokenizer {tok})")
        r.cause = ("the vocabulary was truncated (mergekit #425), or the tokenizer comes from a model with a "
                   "larger vocabulary: those token ids index past the embedding (mergekit #428)")
        r.fix = ("merge with tokenizer_source: base (or union) so mergekit resizes the embeddings, or ship "
                 "the tokenizer of the parent whose vocabulary the merge has")
    else:
        r.summary = f"{r.details[0]}"
        r.cause = "config.json was copied from a model with another vocabulary size"
        r.fix = "set config.json vocab_size to the embedding's row count"
    return r


def lint_tokenizer(m: Checkpoint, parents: Sequence[Checkpoint], limits: LintLimits) -> Verdict:
    """Every token keeps the id it has in the closest parent (a union may add tokens after them)."""
    refs = [p for p in parents if p.vocab]
    r = _result("lint.tokenizer", m.name, {"obtained": 0, "threshold": 0, "n": len(m.vocab or {})},
                   expected="every token of the closest parent at the same id")
    if not m.vocab or not refs:
        r.reason = "no tokenizer vocabulary " + ("here" if not m.vocab else "in the parents") + " to compare"
        return r

    def moved(p: Checkpoint) -> list[tuple[str, int, int | None]]:
        return sorted(((t, i, m.vocab.get(t)) for t, i in p.vocab.items() if m.vocab.get(t) != i),
                      key=lambda x: x[1])

    diffs = {p.name: moved(p) for p in refs}
    best = min(refs, key=lambda p: len(diffs[p.name]))
    d = diffs[best.name]
    r.figures.update(obtained=len(d), n=len(best.vocab), reference=best.name)
    r.details = [f"token {t!r}: " + (f"id {mi} here, {pi} in {best.name}" if mi is not None
                                      else f"missing here, id {pi} in {best.name}") for t, pi, mi in d]
    if d:
        t, pi, mi = d[0]
        here = f"has id {mi} here" if mi is not None else "is missing here"
        r.summary = (f"token {t!r} {here} but has id {pi} in {best.name}; "
                     f"{len(d)} of {len(best.vocab)} tokens moved or missing")
        r.cause = ("the tokenizer comes from another vocabulary (mergekit #169/#47/#139): token ids no longer "
                   "mean what the embedding rows learned, so the model reads and writes gibberish")
        r.fix = ("ship the tokenizer files of the parent whose embeddings the merge kept (mergekit: "
                 "tokenizer_source: base, or union to merge vocabularies)")
    return r


def lint_special_tokens(m: Checkpoint, parents: Sequence[Checkpoint], limits: LintLimits) -> Verdict:
    """bos/eos/pad/unk ids in config.json, generation_config.json and the tokenizer, and added
    tokens, as in at least one parent."""
    findings, compared = [], 0
    for role in SPECIAL_ROLES:
        ours = m.special_ids(role)
        theirs = [(p, p.special_ids(role)) for p in parents]
        for where in sorted(set(ours) | {w for _, ids in theirs for w in ids}):
            seen = {p.name: ids[where] for p, ids in theirs if where in ids}
            if not seen:
                continue
            compared += 1
            value = ours.get(where)
            if value not in seen.values():
                ref = next(p for p, ids in theirs if where in ids)
                here = m.token(value) if where in ours else "missing"
                findings.append(f"{role}_token_id in {where}: {here} here, {ref.token(seen[ref.name])} "
                                f"in {ref.name}")
    shared = [p.added_tokens for p in parents]
    common = {t: i for t, i in (shared[0] if shared else {}).items() if all(a.get(t) == i for a in shared)}
    for t, i in sorted(common.items(), key=lambda x: x[1]):
        compared += 1
        if m.added_tokens.get(t) != i:
            findings.append(f"added token {t!r}: id {m.added_tokens.get(t, 'missing')} here, {i} in every parent")
    r = _result("lint.special_tokens", m.name, {"obtained": len(findings), "threshold": 0, "n": compared},
                   findings, expected="bos/eos/pad/unk ids and added tokens as in a parent")
    if findings:
        entries = _count(len(findings), "special token entry", "special token entries")
        r.summary = f"{findings[0]}; {entries} differ from the parents"
        eos = any(f.startswith("eos") for f in findings)
        r.cause = ("the eos id differs from the parents': generation will not stop where they stop (a config "
                   "or generation_config copied from a parent with another chat format)" if eos else
                   "special token ids or added tokens differ from the parents': prompts and stops are "
                   "tokenised differently from training")
        r.fix = ("copy config.json / generation_config.json special token ids and tokenizer files from the "
                 "parent whose tokenizer the merge uses")
    return r


def lint_chat_template(m: Checkpoint, parents: Sequence[Checkpoint], limits: LintLimits) -> Verdict:
    having = [p for p in parents if p.chat_template]
    ours = m.chat_template
    r = _result("lint.chat_template", m.name, {"obtained": int(bool(ours)), "threshold": int(bool(having)),
                                             "n": len(parents), "parents_with_template": len(having),
                                             "same_as_a_parent": any(ours == p.chat_template for p in having)},
                   expected="a chat template, as the parents " + ", ".join(p.name for p in having) + " have")
    if having and not ours:
        r.details = [f"no chat template here; {', '.join(p.name for p in having)} have one"]
        r.summary = r.details[0]
        r.cause = "the tokenizer was copied without its chat template (chat_template.jinja or tokenizer_config.json)"
        r.fix = f"copy chat_template.jinja (or tokenizer_config.json's chat_template) from {having[0].name}"
    return r


def lint_norms(m: Checkpoint, parents: Sequence[Checkpoint], limits: LintLimits) -> Verdict:
    """Each tensor's norm / the smallest and largest norm of its sources (the tensors the merge
    config maps to it; without one, the parents' tensors of that name), within [min, max] ratios."""
    incomplete = _incomplete(_result("lint.norms", m.name, {"obtained": 0, "threshold": 0, "n": len(m.tensors)}), m)
    if incomplete:
        return incomplete
    ours = m.stats()
    reason = "" if m.provenance is not None else _layer_count_change(m, parents)
    who = "source" if m.provenance is not None else "parent"
    seen: dict[int, dict[str, TensorStats]] = {}

    def read(ck: Checkpoint) -> dict[str, TensorStats]:
        if id(ck) not in seen:
            seen[id(ck)] = ck.stats()
        return seen[id(ck)]

    low, high, findings = math.inf, 0.0, []
    for n, s in ours.items():
        refs = _mapped(m, n) if m.provenance is not None else [(p, n) for p in parents]
        if refs is None or (reason and _layer_ids([n])):
            continue  # a tensor no config maps (lint_tensors), or a layer of unknown origin
        stats = [(read(ck).get(t), ck.tensors.get(t)) for ck, t in refs]
        norms = [st.norm for st, info in stats if st is not None and st.finite and info.shape == m.tensors[n].shape]
        if not s.finite or not refs or len(norms) != len(refs) or min(norms) == 0:
            continue  # non-finite belongs to lint_finite; a zero parent norm has no ratio
        lo, hi = s.norm / min(norms), s.norm / max(norms)
        low, high = min(low, lo), max(high, hi)
        if lo < limits.min_norm_ratio:
            findings.append((n, lo, f"{n}: norm {s.norm:.4g} = {lo:.3g} x the smallest {who}'s ({min(norms):.4g})"))
        elif hi > limits.max_norm_ratio:
            findings.append((n, hi, f"{n}: norm {s.norm:.4g} = {hi:.3g} x the largest {who}'s ({max(norms):.4g})"))
    r = _result("lint.norms", m.name, {"obtained": len(findings), "threshold": 0, "n": len(ours),
                                     "min_ratio": low if low != math.inf else None, "max_ratio": high,
                                     "min_norm_ratio": limits.min_norm_ratio,
                                     "max_norm_ratio": limits.max_norm_ratio},
                   [f for _, _, f in findings],
                   expected=f"norm / {who}s' norms within [{limits.min_norm_ratio:g}, {limits.max_norm_ratio:g}]",
                   reason=reason)
    if findings:
        n, ratio, _ = findings[0]
        layers = sorted({_layer(f[0]) for f in findings})
        r.summary = (f"tensor {n} norm is {ratio:.3g} x its {who}s'; {_count(len(findings), 'tensor')} out of "
                     f"bounds in {', '.join(layers[:3])}{' ...' if len(layers) > 3 else ''}")
        zeroed = ratio < limits.min_norm_ratio
        r.cause = ("a zeroed or dropped layer: weight or density 0 for every model at this layer, a slice that "
                   "wrote zeros, or a broken parent" if zeroed else
                   "exploded weights: task vectors summed with weights well over 1 and no normalize, or a "
                   "DARE rescale with a tiny density")
        r.fix = ("check the merge config's weights/density for that layer (gradients such as [1, 0] reach 0 at "
                 "the ends)" if zeroed else "set normalize: true or lower the weights/density rescale")
    return r


def lint_dtype(m: Checkpoint, parents: Sequence[Checkpoint], limits: LintLimits) -> Verdict:
    declared = m.config.get("dtype") or m.config.get("torch_dtype")
    code = DTYPE_CODES.get(declared)
    floats = {n: t.dtype for n, t in m.tensors.items() if t.dtype in FLOAT_CODES}
    off = [(n, d) for n, d in floats.items() if code is not None and d != code]
    r = _result("lint.dtype", m.name, {"obtained": len(off), "threshold": 0, "n": len(floats),
                                     "declared": str(declared)},
                   [f"{n}: {d}, config.json declares {declared} ({code})" for n, d in off],
                   expected=f"every floating tensor {declared}")
    if code is None:
        r.reason = f"config.json declares no dtype mergeqa knows ({declared!r})"
    if off:
        r.summary = (f"tensor {off[0][0]} is {off[0][1]} but config.json declares {declared}; "
                     f"{_count(len(off), 'tensor')} differ")
        r.cause = "the merge wrote another dtype than config.json declares (dtype vs out_dtype, or a copied config)"
        r.fix = "set dtype/out_dtype in the merge config, or correct config.json's dtype"
    return r


CHECKS: dict[str, Callable[[Checkpoint, Sequence[Checkpoint], LintLimits], Verdict]] = {
    "finite": lint_finite, "tensors": lint_tensors, "vocab": lint_vocab, "tokenizer": lint_tokenizer,
    "special_tokens": lint_special_tokens, "chat_template": lint_chat_template, "norms": lint_norms,
    "dtype": lint_dtype,
}


def lint_checkpoint(merged: str | Path, parents: Sequence[str | Path], limits: LintLimits | None = None,
                    *, name: str | None = None, checks: Sequence[str] = LINT_CHECKS,
                    base: str | Path | None = None, merge_config: str | Path | None = None) -> dict[str, Verdict]:
    """Every lint check of `merged` against `parents` (model directories). When the merged
    directory holds mergekit_config.yml (or `merge_config` built it), tensors are compared with
    the source tensors it maps to each (mergeqa.models.provenance; sources found among `parents` and
    `base` by directory name). Tensor statistics are kept for the process, so linting several
    merges reads each parent once."""
    from mergeqa.models.provenance import provenance_for

    limits = limits or LintLimits()
    m = Checkpoint(merged, name)
    refs = [Checkpoint(p) for p in parents]
    given = refs + ([Checkpoint(base)] if base is not None else [])
    m.provenance = provenance_for(m.path, [ck.path for ck in given], merge_config)
    if m.provenance is not None:
        known = {str(ck.path): ck for ck in given}
        for mapped in m.provenance.tensors.values():
            for s in mapped.sources:
                if s.path is not None and str(s.path) not in known:
                    known[str(s.path)] = Checkpoint(s.path)
        m.source_checkpoints = known
    return {c: CHECKS[c](m, refs, limits).settle() for c in checks}
