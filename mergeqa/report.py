"""What a run reports beyond pass/fail: run metadata for junit and the comparison table.

Reading only: metadata never builds a merge or the family; a model not built in this run is
reported by name alone.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("mergeqa", "lm_eval", "mergekit", "torch", "transformers"):
        try:
            out[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:  # pragma: no cover - all are dependencies
            out[pkg] = "not installed"
    return out


def run_metadata(gate) -> dict[str, str]:
    """mergeqa.run.* properties: versions, device, and each model's path and content hash."""
    from .models import resolve_device

    meta = {f"mergeqa.run.version.{k}": v for k, v in package_versions().items()}
    meta["mergeqa.run.device"] = resolve_device(gate.device)
    meta["mergeqa.run.dtype"] = gate.dtype
    from .sandbox import code_execution

    meta["mergeqa.run.code_execution"] = code_execution()  # "sandboxed (bubblewrap X.Y)" / "unsandboxed (...)"
    for ref in gate.resolved_refs():
        meta[f"mergeqa.run.{ref.role}.{ref.name}.path"] = str(ref.path)
        meta[f"mergeqa.run.{ref.role}.{ref.name}.content_hash"] = ref.content_hash
        if ref.merge_config is not None:
            meta[f"mergeqa.run.{ref.role}.{ref.name}.merge_config"] = str(ref.merge_config)
    return meta


def report_dir(config) -> Path:
    """--report-dir; else the directory of --junitxml; else ./mergeqa-report."""
    if config.option.report_dir:
        return Path(config.option.report_dir)
    xml = getattr(config.option, "xmlpath", None)
    return Path(xml).resolve().parent if xml else Path("mergeqa-report")


def comparison_table(gate, tasks: list[str], settings) -> str:
    """Markdown: rows base, parents, merges; columns tasks and their average; best in bold.

    Reads the result cache only (evaluate(..., cached_only=True)): it never evaluates.
    """
    from .engine import evaluate

    refs = [r for r in [gate.base()] if r] + gate.parents() + gate.all_merged()
    rows = []
    for ref in refs:
        result = evaluate(ref, tasks, settings, cached_only=True)
        scores = []
        for t in tasks:
            try:
                scores.append(result.score(t))
            except KeyError:
                scores.append(None)
        known = [s for s in scores if s is not None]
        avg = sum(known) / len(known) if len(known) == len(scores) and known else None
        rows.append((f"{ref.name} ({ref.role})", scores + [avg]))
    columns = tasks + ["average"]
    best = [max((r[1][i] for r in rows if r[1][i] is not None), default=None) for i in range(len(columns))]

    def cell(value, i):
        if value is None:
            return "-"
        text = f"{value:.3f}"
        return f"**{text}**" if best[i] is not None and value == best[i] else text

    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(cell(v, i) for i, v in enumerate(vals)) + " |" for name, vals in rows]
    return "\n".join(lines)


def behaviour_scores(gate, tasks: list[str], settings, refs) -> dict[str, float]:
    """Mean main-metric score over the suite, per model, from the result cache only."""
    from .engine import evaluate

    out = {}
    for ref in refs:
        result = evaluate(ref, tasks, settings, cached_only=True)
        try:
            out[ref.name] = sum(result.score(t) for t in tasks) / len(tasks)
        except KeyError:
            continue  # not evaluated in this cache: left out of the ranking
    return out


def divergence_summary(gate, thresholds, tasks: list[str], settings) -> str:
    """The paper's comparison, computed: merges ranked by behaviour and by probed internals."""
    from .probing.divergence import divergence_report, internal_scores
    from .probing.engine import ProbingEngine

    engine = ProbingEngine.from_thresholds(thresholds, cache_dir=gate.cache_dir, device=gate.device,
                                           dtype=gate.dtype)
    merges, parents = gate.all_merged(), gate.parents()
    behaviour = behaviour_scores(gate, tasks, settings, merges)
    parents_behaviour = behaviour_scores(gate, tasks, settings, parents)
    internals = internal_scores({m.name: engine.results(m) for m in merges if m.name in behaviour})
    parents_internals = internal_scores({p.name: engine.results(p) for p in parents})
    report = divergence_report(behaviour, internals, min_tau=thresholds.get("probing", "divergence_tau"),
                               parents_behaviour=parents_behaviour, parents_internals=parents_internals)
    return report.summary()
