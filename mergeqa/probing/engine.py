"""The probing loop the gate and the bench share: datasets x models -> probe results (cached), the
merged-vs-parents comparisons, and the plots. Checks only say which threshold applies.

    engine = ProbingEngine.from_settings(cache_dir, device="cpu", dtype="float32", thresholds=t)
    result = engine.result(model_ref, "agreement")       # a ProbeResult, from cache when possible

Probe results are cached under `<cache>/probes/` by model content hash x dataset content x probe
settings; when every result of a model is cached, the model is not even loaded.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from mergeqa.core import progress
from mergeqa.core.errors import MergeQAUsageError

from .datasets import PHENOMENA, ProbeDataset, builtin_dataset, load_jsonl
from .probes import ProbeResult, ProbeSettings, probe
from .representations import representations

RESULT_FILE = "result.npz"
# On CPU, models this narrow (and their probes) run as one torch thread: their ops take about a
# millisecond, and on a busy 2-core machine OpenMP's thread sync made the probing of the tiny
# family 17x slower with 2 threads (469 s) than with 1 (27 s). Wider models keep torch's setting.
SINGLE_THREAD_MAX_HIDDEN = 512


def datasets_from_thresholds(thresholds) -> list[ProbeDataset]:
    """[probing] phenomena (built-in names) + datasets (user JSONL: a path, or a table with path,
    pooling and name), validated; a duplicate name is a usage error."""
    where = f"{thresholds.path or 'thresholds'}: [probing]"
    names = thresholds.get("probing", "phenomena")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MergeQAUsageError(f"{where} phenomena must be a list of names, e.g. {list(PHENOMENA)[:2]}")
    out = [builtin_dataset(n) for n in names]
    extra = thresholds.get("probing", "datasets")
    if not isinstance(extra, list):
        raise MergeQAUsageError(f'{where} datasets must be a list of paths or {{ path = "x.jsonl", '
                                'pooling = "span" }} tables')
    base = Path(thresholds.path).parent if thresholds.path else Path(".")
    for spec in extra:
        spec = {"path": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or "path" not in spec or set(spec) - {"path", "pooling", "name"}:
            raise MergeQAUsageError(f"{where} datasets entry {spec!r}: expected a path or a table with "
                                    "path and optionally pooling ('span' or 'sentence') and name")
        out.append(load_jsonl(base / spec["path"], name=spec.get("name"), pooling=spec.get("pooling", "span")))
    seen: set[str] = set()
    for d in out:
        if d.name in seen:
            raise MergeQAUsageError(f"{where} two probing datasets are named {d.name!r}; give one a "
                                    "different name (datasets = [{ path = ..., name = ... }])")
        seen.add(d.name)
    return out


def settings_from_thresholds(thresholds) -> ProbeSettings:
    return ProbeSettings(seeds=thresholds.get("probing", "seeds"), l2=thresholds.get("probing", "l2"))


class ProbingEngine:
    """Probe results per (model, dataset), computed once per process and cache."""

    def __init__(self, datasets: Sequence[ProbeDataset], settings: ProbeSettings, *, cache_dir: Path,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 64):
        self.datasets = {d.name: d for d in datasets}
        self.settings = settings
        self.cache_dir = Path(cache_dir)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self._memo: dict[tuple[str, str], ProbeResult] = {}

    @classmethod
    def from_thresholds(cls, thresholds, *, cache_dir: Path, device: str, dtype: str) -> "ProbingEngine":
        from mergeqa.models.refs import resolve_device

        return cls(datasets_from_thresholds(thresholds), settings_from_thresholds(thresholds),
                   cache_dir=cache_dir, device=resolve_device(device), dtype=dtype)

    def _entry(self, ref, dataset: ProbeDataset) -> Path:
        from mergeqa.core.cache import digest

        key = digest(self.settings.key(), self.dtype)[:12]
        return self.cache_dir / "probes" / f"{ref.content_hash[:16]}-{dataset.content_hash}-{key}"

    def cached(self, ref) -> list[str]:
        """Names of the datasets whose result for `ref` the cache already holds (computes nothing)."""
        return [d.name for d in self.datasets.values() if self._entry(ref, d).is_dir()]

    def _missing(self, ref) -> list[ProbeDataset]:
        return [d for d in self.datasets.values() if (ref.content_hash, d.name) not in self._memo
                and not self._entry(ref, d).is_dir()]

    def _lock(self, ref):
        from filelock import FileLock

        (self.cache_dir / "probes").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.cache_dir / "probes" / f"{ref.content_hash[:16]}.lock"))

    def _compute(self, ref) -> None:
        """Probe the datasets missing for `ref` (the caller holds its lock)."""
        from mergeqa.core.cache import build_once

        todo = self._missing(ref)  # again: another process may have done them while we waited
        if not todo:
            return
        started = time.perf_counter()
        progress.say(f"probing {ref.name} on {len(todo)} datasets ({sum(len(d.items) for d in todo)} sentences), "
                     "layer by layer...")
        with threads_for(ref, self.device):
            features = representations(ref, todo, device=self.device, dtype=self.dtype,
                                       cache_dir=self.cache_dir, batch_size=self.batch_size)
            for d in todo:
                result = probe(d, features[d.name], self.settings, device=self.device)
                build_once(self._entry(ref, d), lambda tmp, r=result: r.save(tmp / RESULT_FILE))
                self._memo[(ref.content_hash, d.name)] = result
        progress.say(f"probed {ref.name} in {progress.duration(time.perf_counter() - started)}")

    def results(self, ref) -> dict[str, ProbeResult]:
        """Every dataset's ProbeResult for `ref`; representations are computed only for the missing."""
        if self._missing(ref):
            with self._lock(ref):
                self._compute(ref)
        for d in self.datasets.values():
            if (ref.content_hash, d.name) not in self._memo:
                self._memo[(ref.content_hash, d.name)] = ProbeResult.load(self._entry(ref, d) / RESULT_FILE)
        return {name: self._memo[(ref.content_hash, name)] for name in self.datasets}

    def prepare(self, refs) -> None:
        """Compute the results of many models. Processes sharing the cache (xdist workers) split
        them: each takes the models no other is computing and waits only for the last one."""
        from filelock import Timeout

        pending = [r for r in refs if self._missing(r)]
        while pending:
            progressed = False
            for ref in list(pending):
                lock = self._lock(ref)
                try:
                    lock.acquire(timeout=0 if len(pending) > 1 else -1)
                except Timeout:
                    continue
                try:
                    self._compute(ref)
                finally:
                    lock.release()
                pending.remove(ref)
                progressed = True
            if not progressed:
                time.sleep(0.1)

    def result(self, ref, name: str) -> ProbeResult:
        if name not in self.datasets:
            from mergeqa.core.errors import did_you_mean

            raise MergeQAUsageError(f"no probing dataset {name!r} in this run.{did_you_mean(name, self.datasets)}")
        return self.results(ref)[name]


@contextmanager
def threads_for(ref, device: str):
    """One torch thread for a narrow model on CPU (see SINGLE_THREAD_MAX_HIDDEN), restored after."""
    hidden = ref.config.get("hidden_size") or ref.config.get("text_config", {}).get("hidden_size")
    if device != "cpu" or not hidden or hidden > SINGLE_THREAD_MAX_HIDDEN:
        yield
        return
    from mergeqa.core.threads import torch_threads

    with torch_threads(1):
        yield


# -- the gate's decision ----------------------------------------------------------------------

def compare_with_parents(merged: ProbeResult, parents: Mapping[str, ProbeResult], *, tolerance: float,
                         alpha: float = 0.05, power: float = 0.8, correction: str = "holm",
                         merge: str = "merged", dataset: ProbeDataset | None = None,
                         plot: Path | None = None) -> list:
    """Verdicts `probing.<phenomenon>.best` and `.last`: the merge's test accuracy at its best
    (val-chosen) and last layer vs min(parents) at their own layer choice, paired over test
    items (correctness averaged over seeds), margin = tolerance, against each parent at alpha / k
    (significance.against_each: never against the parent that looks weakest on the same items); the two p-values are adjusted
    together (`correction`). Each verdict's data carries every model's accuracy at that layer
    choice and its per-item test scores (the divergence report reads them)."""
    from mergeqa.decision.significance import adjust_comparisons, against_each, compare_paired
    from mergeqa.decision.verdict import Verdict

    if not parents:
        raise MergeQAUsageError("probing needs parents to compare with; pass --parents")
    name = dataset.name if dataset is not None else "probe"
    rows = []
    for which in ("best", "last"):
        def layer(r: ProbeResult) -> int:
            return r.best_layer if which == "best" else r.last_layer

        # against each parent at alpha / k, not the one that looks weakest on these items
        # (significance.against_each: pass when within the margin of some parent)
        a = merged.item_scores(layer(merged))
        # item scores are correctness averaged over seeds, in [0, 1]: the betting test rests on that
        # range (valid for a skill lost on a few items, where the sign-flip is not)
        each = {n: compare_paired(a, p.item_scores(layer(p)), margin=tolerance, alpha=alpha / len(parents),
                                  power=power, bounds=(0.0, 1.0)) for n, p in parents.items()}
        ref, combined = against_each(each, alpha)
        b = parents[ref].item_scores(layer(parents[ref]))
        rows.append((which, layer(merged), float(a.mean()), ref, layer(parents[ref]), float(b.mean()), combined))
    # best and last can be the same layers: then they test one hypothesis, counted once
    adjusted = adjust_comparisons([r[-1] for r in rows], correction, keys=[(r[1], r[3], r[4]) for r in rows])
    verdicts = []
    for (which, lay, score, ref, ref_layer, ref_score, _), c in zip(rows, adjusted):
        figures = {**merged.summary(lay), "obtained": score, "threshold": ref_score - c.margin,
                   "layer": lay, "accuracy": score, "reference": ref, "reference_layer": ref_layer,
                   "reference_accuracy": ref_score, **c.figures()}
        where = f"; see {plot}" if plot else ""
        if c.verdict == "fail":
            described = f" ({dataset.description})" if dataset is not None else ""
            cause = f"the merge encodes {name}{described} less linearly than its weaker parent at this layer"
            fix = (f"compare the layers{where}; merge with weights or a method that keep more of {ref}, "
                   "or widen [probing] tolerance if this drop is acceptable")
        else:
            cause = "the probes' differences on this many test items are within the noise"
            fix = ("probe more items (your own set under [probing] datasets) or widen [probing] "
                   "tolerance; [statistics] inconclusive decides whether this fails")
        pick = (lambda r: r.best_layer) if which == "best" else (lambda r: r.last_layer)
        items = {merge: merged.item_scores(pick(merged)),
                 **{n: r.item_scores(pick(r)) for n, r in parents.items()}}
        accuracy = {n: float(x.mean()) for n, x in items.items()}
        verdicts.append(Verdict(
            f"probing.{name}.{which}", merge, c.verdict, figures,
            summary=f"{name} probe at the {which} layer ({lay}) vs {ref} ({which} layer {ref_layer})",
            expected=f">= {ref_score:.4f} - {c.margin:g} (min of parents - [probing] tolerance)",
            delta=score - ref_score, details=c.describe(ref).splitlines(), cause=cause, fix=fix,
            data={"phenomenon": name, "which": which, "accuracy": accuracy,
                  # per test item, for the divergence report's paired "above both parents" test
                  "items": {n: [round(float(v), 6) for v in x] for n, x in items.items()}}))
    return verdicts
