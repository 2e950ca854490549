"""What a run reports beyond pass/fail: run metadata for junit and the comparison table.

Reading only: metadata never builds a merge or the family; a model not built in this run is
reported by name alone.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mergeqa.report.status import check_rank, headline, merge_statuses


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
    from mergeqa.models.refs import resolve_device

    meta = {f"mergeqa.run.version.{k}": v for k, v in package_versions().items()}
    meta["mergeqa.run.device"] = resolve_device(gate.device)
    meta["mergeqa.run.dtype"] = gate.dtype
    from mergeqa.humaneval.sandbox import code_execution

    meta["mergeqa.run.code_execution"] = code_execution()  # "sandboxed (bubblewrap X.Y; cgroup v2 limits)" / ...
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


def _scores_by_task(verdicts) -> tuple[dict, dict, dict]:
    """From the retention verdicts: {task: {model: score}}, {model: role}, {task: higher_is_better}."""
    scores: dict[str, dict[str, float]] = {}
    roles: dict[str, str] = {}
    direction: dict[str, bool] = {}
    for v in verdicts:
        if v.check in ("retention", "regression") and "scores" in v.data:
            scores.setdefault(v.data["task"], {}).update(v.data["scores"])
            roles.update(v.data["roles"])
            direction[v.data["task"]] = bool(v.data.get("higher_is_better", True))
    return scores, roles, direction


def comparison_table(verdicts) -> str:
    """Markdown: rows base, parents, merges; columns tasks and the average of the higher-is-better
    ones; best in bold. Built from the retention verdicts' scores: nothing is re-read."""
    scores, roles, direction = _scores_by_task(verdicts)
    if not scores:
        return ""
    tasks = list(scores)
    order = {"base": 0, "parent": 1, "merged": 2}
    models = sorted(roles, key=lambda m: (order.get(roles[m], 3), m))
    rows = []
    for m in models:
        vals = [scores[t].get(m) for t in tasks]
        up = [x for t, x in zip(tasks, vals) if direction[t] and x is not None]
        avg = sum(up) / len(up) if up and len(up) == sum(direction[t] for t in tasks) else None
        rows.append((f"{m} ({roles[m]})", vals + [avg]))
    columns = tasks + ["average"]
    ups = [direction[t] for t in tasks] + [True]
    best = []
    for i, up in enumerate(ups):
        known = [r[1][i] for r in rows if r[1][i] is not None]
        best.append((max if up else min)(known) if known else None)

    def cell(value, i):
        if value is None:
            return "-"
        text = f"{value:.3f}"
        return f"**{text}**" if value == best[i] else text

    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(cell(v, i) for i, v in enumerate(vals)) + " |" for name, vals in rows]
    return "\n".join(lines + _prefix_note(verdicts))


def _prefix_note(verdicts) -> list[str]:
    """Under `[statistics] sequential = true` a task's scores are on the items scored, not all."""
    scored: dict[str, tuple[set, int]] = {}
    for v in verdicts:
        if v.check in ("retention", "regression") and "items_scored" in v.data:
            counts, _ = scored.setdefault(v.data["task"], (set(), v.data["items_total"]))
            counts.add(v.data["items_scored"])
    return ["", *(f"{task}: sequential, scores on the first {'/'.join(map(str, sorted(counts)))} of {total} "
                  "items in the seeded order (each merge's, and the parents' with it, on what its "
                  "comparisons needed)" for task, (counts, total) in scored.items())] if scored else []


def probing_accuracy(verdicts, which: str = "best") -> dict[str, dict[str, float]]:
    """{phenomenon: {model: accuracy at its best (or last) layer}} from the probing verdicts."""
    out: dict[str, dict[str, float]] = {}
    for v in verdicts:
        if v.check.startswith("probing.") and v.data.get("which") == which:
            out.setdefault(v.data["phenomenon"], {}).update(v.data["accuracy"])
    return out


def probing_items(verdicts, which: str = "best") -> dict[str, dict[str, list[float]]]:
    """{phenomenon: {model: per-test-item probe score}} from the probing verdicts."""
    out: dict[str, dict[str, list[float]]] = {}
    for v in verdicts:
        if v.check.startswith("probing.") and v.data.get("which") == which and "items" in v.data:
            out.setdefault(v.data["phenomenon"], {}).update(v.data["items"])
    return out


def probing_above_tests(verdicts, merges, parents):
    """One `AboveParents` test per merge and phenomenon that all these models were probed on: its
    best-layer probe scores against each parent's on the same items (never pooled over phenomena:
    see `AboveParents`)."""
    from mergeqa.probing.divergence import above_parents_per_phenomenon

    return above_parents_per_phenomenon(merges, parents, probing_items(verdicts))


def divergence_summary(verdicts, min_tau: float = 0.0, *, alpha: float = 0.05, correction: str = "holm") -> str:
    """The paper's comparison from the run's verdicts: merges ranked by behaviour (mean of the
    higher-is-better retention tasks) and by probed internals (mean best-layer accuracy), Kendall's
    tau, then where each merge lies against its parents on each skill and each phenomenon, and
    which merges' probed competence is *shown* above both parents on a phenomenon (paired test over
    its test items, adjusted across every merge x phenomenon)."""
    from mergeqa.probing.divergence import above_line, divergence_report, shown_above

    scores, roles, direction = _scores_by_task(verdicts)
    probes = probing_accuracy(verdicts)
    if not scores or not probes:
        return ""
    tasks = [t for t in scores if direction[t]]
    merges = sorted(m for m, r in roles.items() if r == "merged" and all(m in probes[p] for p in probes))
    parents = sorted(m for m, r in roles.items() if r == "parent")

    def behaviour(names):
        return {m: sum(scores[t][m] for t in tasks) / len(tasks) for m in names if all(m in scores[t] for t in tasks)}

    def internals(names):
        return {m: sum(probes[p][m] for p in probes) / len(probes) for m in names if all(m in probes[p] for p in probes)}

    tests = probing_above_tests(verdicts, merges, parents)
    adjusted = shown_above(tests, alpha=alpha, correction=correction)
    shown = [m for m, p in adjusted.items() if p <= alpha]
    report = divergence_report(behaviour(merges), internals(merges), min_tau=min_tau,
                               parents_behaviour=behaviour(parents), parents_internals=internals(parents),
                               internals_shown_above=shown)
    lines = [report.summary(), "", "Where each merge lies against its parents (the paper in miniature):", "",
             "| merge | " + " | ".join(tasks + list(probes)) + " |", "|---|" + "---|" * (len(tasks) + len(probes))]
    counts = {"between": 0, "cells": 0}
    for m in merges:
        cells = []
        for t in tasks:
            cells.append(_place(scores[t][m], [scores[t][p] for p in parents]))
            counts["cells"] += 1
            counts["between"] += cells[-1] == "between"
        for p in probes:
            cells.append(_place(probes[p][m], [probes[p][q] for q in parents]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "(probing cells place point estimates; whether a merge's competence is above its "
              "parents' is the paired test below)", "",
              f"skill tasks: {counts['between']} of {counts['cells']} merge x task scores lie between the "
              f"parents'; probing above both parents: {above_line(tests, alpha, correction)}"]
    return "\n".join(lines)


def _place(value: float, parents: list[float]) -> str:
    low, high = min(parents), max(parents)
    if value > high:
        return "above both"
    if value < low:
        return "below both"
    return "between"


def merge_lines(verdicts, policy: str = "fail", record=None, merges=()) -> list[str]:
    """One line per merge: deployable or not, and the first thing against it with its figure
    (mergeqa.report.status decides; `record` adds the tests that errored or never ran)."""
    return [s.line for s in merge_statuses(verdicts, record, merges, policy)]


def summary_markdown(verdicts, policy: str, comparison: str, statuses=None, record=None) -> str:
    """summary.md: the run's verdict in its first line, the counts, what did not pass, the
    comparison and one line per merge."""
    statuses = statuses if statuses is not None else merge_statuses(verdicts, record, (), policy)
    counts = {o: sum(v.outcome == o for v in verdicts) for o in ("pass", "fail", "inconclusive", "error",
                                                                  "not_applicable")}
    lines = [f"# mergeqa gate: {headline(statuses, record)}", "", "| verdicts | pass | fail | inconclusive | error | not applicable |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {len(verdicts)} | {counts['pass']} | {counts['fail']} | {counts['inconclusive']}"
             f"{' (accepted: warn)' if policy == 'warn' and counts['inconclusive'] else ''} | {counts['error']} | "
             f"{counts['not_applicable']} |", ""]
    import os

    if os.environ.get("MERGEQA_UNSAFE_EXEC"):
        from mergeqa.humaneval.sandbox import code_execution

        lines += [f"**Model-written code: {code_execution()}** (--unsafe-exec)", ""]
    bad = sorted((v for v in verdicts if v.outcome in ("fail", "error", "inconclusive")),
                 key=lambda v: (v.subject, check_rank(v.check)))
    if bad:
        lines += ["## Checks that did not pass", ""]
        lines += [f"- `{v.test or v.name}`: {v.headline()}" for v in bad]
        lines.append("")
    if comparison:
        lines += ["## Comparison", "", comparison, ""]
    lines += ["## Verdict per merge", ""] + [f"- {s.line}" for s in statuses]
    if record is not None and record.unfinished():
        lines += [f"- (not tied to a merge) `{n}`: {o.outcome.replace('_', ' ')}" for n, o in record.unfinished().items()]
    return "\n".join(lines)


def write_run_reports(config, terminalreporter=None) -> dict[str, Path]:
    """At the end of a run, on the process that holds every verdict: comparison.md,
    divergence.md and summary.md in the report directory, echoed to the terminal, ending with
    one line per merge. Returns what was written."""
    from mergeqa.core.state import run_record_key, run_status_key, thresholds_key
    from mergeqa.decision.verdict import RUN_VERDICTS, inconclusive_policy

    verdicts = config.stash.get(RUN_VERDICTS, [])
    statuses = config.stash.get(run_status_key, None)
    record = config.stash.get(run_record_key, None) if statuses is not None else None
    if not verdicts and not statuses:
        return {}

    thresholds = config.stash.get(thresholds_key, None)
    policy = inconclusive_policy(config)
    min_tau = thresholds.get("probing", "divergence_tau") if thresholds is not None else 0.0
    comparison = comparison_table(verdicts)
    alpha = thresholds.get("statistics", "alpha") if thresholds is not None else 0.05
    correction = thresholds.get("statistics", "correction") if thresholds is not None else "holm"
    sections = {"comparison": comparison,
                "divergence": divergence_summary(verdicts, min_tau, alpha=alpha, correction=correction)}
    if statuses is None:
        statuses = merge_statuses(verdicts, None, (), policy)
    sections["summary"] = summary_markdown(verdicts, policy, comparison, statuses, record)
    out_dir = report_dir(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, text in sections.items():
        if not text:
            continue
        path = out_dir / f"{name}.md"
        _write_atomic(path, text + "\n")
        written[name] = path
        if terminalreporter is not None and name != "summary":
            terminalreporter.write_sep("=", f"mergeqa {name}")
            terminalreporter.write_line(text)
    if terminalreporter is not None:
        terminalreporter.write_sep("=", "mergeqa verdict per merge")
        for s in statuses:
            terminalreporter.write_line(s.line)
        if record is not None and record.unfinished():
            terminalreporter.write_line(f"(and {len(record.unfinished())} test(s) not tied to a merge did not pass)")
        terminalreporter.write_line(f"(reports in {out_dir}: {', '.join(p.name for p in written.values())})")
    return written


def _write_atomic(path: Path, text: str) -> None:
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
