"""The deployment report: one self-contained `report.html` per run (verdict per merge, the guide's
deployment checklist, comparison table with intervals, figures, probing curves, divergence,
provenance) and the GitHub step summary, both written from the run's verdicts and metadata.

    write_deployment_reports(config, verdicts, out_dir)   # at session end, on the controller

Reading only: nothing is measured or re-read from the cache; a check that put nothing in its
verdicts simply has nothing shown. Verdict.data keys read when present (all optional):
`task`, `scores` {model: score}, `n`, `interval` [low, high] (of merged - reference),
`examples` (items the parent got right and the merge got wrong: dicts or lines), `curves`
{model: [per-layer score]} with `control`, `chance`, `phenomenon`, `roles` {model: role},
`behaviour` / `internals` {merge: score} (divergence), `samples` {prompt: {model: text}},
`models` {model: cost row}.
"""

from __future__ import annotations

import base64
import fnmatch
import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mergeqa.core.state import (
    ITEM_VERDICTS,
    run_record_key,
    run_status_key,
    session_key,
    thresholds_key,
    worker_metadata_key,
)
from mergeqa.decision.verdict import Verdict, accepted
from mergeqa.report.status import MergeStatus, run_state

STEP_SUMMARY_LIMIT = 60_000  # bytes; GitHub refuses a step summary over 1 MiB and truncates at 64 KB
EXAMPLES_SHOWN = 5
MAX_IMAGE_BYTES = 2_000_000


# -- the guide's deployment checklist ------------------------------------------------------------
@dataclass(frozen=True)
class ChecklistItem:
    """One line of the guide's checklist, the checks that decide it (fnmatch patterns on
    Verdict.check, optionally only for some tasks) and how to run them when none did."""

    title: str
    checks: tuple[str, ...]
    how: str
    tasks: tuple[str, ...] = ()  # fnmatch patterns on the verdict's task; () = any
    manual: bool = False  # decided by a person (the samples are shown for reading)

    def decides(self, v: Verdict) -> bool:
        if not any(fnmatch.fnmatchcase(v.check, p) for p in self.checks):
            return False
        return not self.tasks or any(fnmatch.fnmatchcase(task_of(v) or "", t) for t in self.tasks)


LEADERBOARD_TASKS = ("arc_*", "hellaswag*", "mmlu*", "truthfulqa*", "winogrande*", "gsm8k*",
                     "leaderboard*", "bbh*", "gpqa*", "ifeval*", "musr*", "math*")
CHECKLIST = (
    ChecklistItem("Leaderboard score >= min(parents)", ("regression", "regression.*", "retention.regression*"),
                  'set [retention] suite = "leaderboard_v1" (or "leaderboard_v2") in thresholds.toml; '
                  "the datasets must be on the machine", tasks=LEADERBOARD_TASKS),
    ChecklistItem("Judged conversation score >= avg(parents)", ("judge*", "mt_bench*", "mtbench*"),
                  "pytest --questions question.jsonl (FastChat's MT-Bench format; test_judge.py::test_judged_score)"),
    ChecklistItem("Domain benchmarks", ("retention", "retention.*"),
                  "pytest --gate (the [retention] suite; `code` for HumanEval)"),
    ChecklistItem("No regressions", ("regression", "regression.*", "retention.regression*", "probing*"),
                  "pytest --gate (test_no_regression, test_probing)"),
    ChecklistItem("Sanity", ("sanity*", "lint*", "load*", "config*", "weights*"),
                  "pytest --gate (test_lint, test_sanity, test_load)"),
    ChecklistItem("A/B win rate >= 45 %", ("ab*", "win_rate*", "winrate*", "arena*"),
                  "pytest --questions question.jsonl (test_judge.py::test_ab_win_rate, both orders per question)"),
    ChecklistItem("Safety (TruthfulQA)", ("retention*", "regression*", "safety*"),
                  'add truthfulqa_mc2 to the suite (it is in [suites.leaderboard_v1]); data must be local',
                  tasks=("truthfulqa*",)),
    ChecklistItem("Manual testing", (), "read the side-by-side samples below (they come from the cost "
                  "check, which generates on [sanity.prompts])", manual=True),
    ChecklistItem("Model size acceptable", ("cost.size", "cost.memory"), "pytest --gate (test_cost.py::test_model_size)"),
    ChecklistItem("Inference speed acceptable", ("cost.prefill", "cost.decode", "cost.latency"),
                  "pytest --gate (test_cost.py::test_inference_speed)"),
)


def task_of(v: Verdict) -> str | None:
    """The task a verdict is about: data["task"], figures["task"], else the test id's last part."""
    task = v.data.get("task") or v.figures.get("task")
    if task:
        return str(task)
    m = re.search(r"\[(.+)\]$", v.test or "")
    if m and m.group(1).startswith(f"{v.subject}-"):
        return m.group(1)[len(v.subject) + 1:]
    return None


def combined_outcome(verdicts: Sequence[Verdict], policy: str) -> str:
    """fail > error > inconclusive > pass; "not run" when there are none or none applied (nothing
    was measured on the model, so the checklist never shows such an item as passed)."""
    if not verdicts:
        return "not run"
    outcomes = {v.outcome for v in verdicts}
    for o in ("fail", "error", "inconclusive", "pass"):
        if o in outcomes:
            return "inconclusive (accepted)" if o == "inconclusive" and policy == "warn" else o
    return "not run"


# -- what the report is built from ---------------------------------------------------------------
@dataclass
class ReportInput:
    """Everything a report shows; built from a pytest config by `from_config`, or by hand in tests."""

    verdicts: list[Verdict]
    merges: list[str]
    parents: list[str] = field(default_factory=list)
    base: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    merge_configs: dict[str, str] = field(default_factory=dict)  # merge -> mergekit YAML text
    policy: str = "fail"
    seeds: dict[str, object] = field(default_factory=dict)
    title: str = "mergeqa deployment report"
    statuses: dict[str, MergeStatus] = field(default_factory=dict)  # from the run's ledger, when there is one
    run: str = ""  # the run's state (mergeqa.report.status.run_state), when there is a ledger

    @classmethod
    def from_config(cls, config, verdicts: Iterable[Verdict]) -> ReportInput:
        from mergeqa.decision.verdict import inconclusive_policy
        from mergeqa.report.markdown import run_metadata

        verdicts = list(verdicts)
        verdicts += legacy_verdicts(config, verdicts)
        gate = config.stash.get(session_key, None)
        thresholds = config.stash.get(thresholds_key, None)
        meta: dict[str, str] = {}
        merges, parents, base, configs = [], [], None, {}
        if gate is not None:
            meta = {k: str(v) for k, v in run_metadata(gate).items()}
            meta.update({k: str(v) for k, v in config.stash.get(worker_metadata_key, {}).items()})
            merges = list(gate.merged_names)
            parents = _models(meta, "parent")
            base = next(iter(_models(meta, "base")), None)
            configs = _merge_configs(meta)
        if gate is None:  # no session: every subject is a merge
            merges = sorted({v.subject for v in verdicts})
        seeds = {"merge_seed": getattr(config.option, "merge_seed", None)}
        if thresholds is not None:
            seeds["probing_seeds"] = thresholds.get("probing", "seeds")
        statuses = {s.merge: s for s in config.stash.get(run_status_key, None) or []}
        record = config.stash.get(run_record_key, None)
        run = run_state(list(statuses.values()), record) if statuses else ""
        merges += [m for m in statuses if m not in merges]
        merges += [m for m in dict.fromkeys(v.subject for v in verdicts) if m not in merges]  # as the terminal
        return cls(verdicts, merges, parents, base, meta, configs, inconclusive_policy(config), seeds,
                   statuses=statuses, run=run)

    # -- views -----------------------------------------------------------------------------------
    def of(self, merge: str) -> list[Verdict]:
        return [v for v in self.verdicts if v.subject == merge]

    def status(self, merge: str) -> MergeStatus | None:
        """The merge's status from the run's ledger (every collected test counted); None for a
        report built without one, or a merge the ledger did not see."""
        return self.statuses.get(merge)

    def deployable(self, merge: str) -> tuple[bool | None, Verdict | None]:
        """(deployable, first verdict against it in checklist order); None when nothing ran."""
        mine = self.of(merge)
        if merge in self.statuses and not self.statuses[merge].deployable:
            against = [v for v in mine if not accepted(v, self.policy)]
            return False, (self._ordered(against)[0] if against else None)
        if not mine:
            return None, None
        against = [v for v in mine if not accepted(v, self.policy)]
        order: dict[int, int] = {}
        for item in CHECKLIST:  # a verdict's place is the first item it decides
            for v in mine:
                if item.decides(v):
                    order.setdefault(id(v), len(order))
        against.sort(key=lambda v: order.get(id(v), len(order)))
        return not against, (against[0] if against else None)

    def _ordered(self, verdicts: list[Verdict]) -> list[Verdict]:
        order = {item.title: i for i, item in enumerate(CHECKLIST)}
        return sorted(verdicts, key=lambda v: min((order[i.title] for i in CHECKLIST if i.decides(v)),
                                                  default=len(order)))

    def checklist(self, merge: str) -> list[tuple[ChecklistItem, str, list[Verdict]]]:
        mine = self.of(merge)
        rows = []
        for item in CHECKLIST:
            if item.manual:
                n = sum(merge in by_model for by_model in self.samples().values())
                rows.append((item, f"to read ({n} prompt{'s' if n != 1 else ''})" if n else "not run", []))
                continue
            decided = [v for v in mine if item.decides(v)]
            rows.append((item, combined_outcome(decided, self.policy), decided))
        return rows

    def samples(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for v in self.verdicts:
            for prompt, by_model in (v.data.get("samples") or {}).items():
                out.setdefault(prompt, {}).update(by_model)
        return out

    def comparison(self) -> tuple[list[str], dict[str, dict[str, tuple]]]:
        """tasks, {model: {task: (score, interval | None, n | None)}} from verdicts with scores."""
        tasks: list[str] = []
        table: dict[str, dict[str, tuple]] = {}
        for v in self.verdicts:
            task, scores = task_of(v), _scores(v)
            if not task or not scores:
                continue
            if task not in tasks:
                tasks.append(task)
            n = v.data.get("n") or v.figures.get("n")
            for model, score in scores.items():
                cell = table.setdefault(model, {})
                interval = _interval(v) if model == v.subject else None
                if interval:
                    interval = (*interval, v.data.get("reference") or v.figures.get("reference") or "")
                if task not in cell or (interval and not cell[task][1]):
                    cell[task] = (score, interval, n)
        return tasks, table

    def lower_is_better(self) -> set[str]:
        """Tasks whose scores improve downwards (perplexity-type), from the verdicts' data."""
        return {task for v in self.verdicts if (task := task_of(v)) and v.data.get("higher_is_better") is False}

    def cost_rows(self) -> dict[str, dict]:
        rows: dict[str, dict] = {}
        for v in self.verdicts:
            for model, row in (v.data.get("models") or {}).items():
                rows.setdefault(model, row)
        return rows


def legacy_verdicts(config, verdicts: Sequence[Verdict]) -> list[Verdict]:
    """Verdicts for tests that recorded `mergeqa.*` figures without deciding through Verdict
    (checks not yet moved to decide()): outcome from the test report, figures from its
    properties. Tests that decided verdicts are left alone."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return []
    decided = {v.test for v in verdicts}
    gate_names = list(getattr(config.stash.get(session_key, None), "merged_names", []))
    out = []
    for reports in reporter.stats.values():
        for r in reports:
            props = [(k, x) for k, x in getattr(r, "user_properties", []) if str(k).startswith("mergeqa.")]
            if getattr(r, "when", None) != "call" or not props or r.nodeid in decided:
                continue
            param = re.search(r"\[(.+)\]$", r.nodeid)
            subject = next((m for m in gate_names if param and (param.group(1) == m or param.group(1).startswith(f"{m}-"))),
                           param.group(1) if param else "run")
            outcome = ("inconclusive" if hasattr(r, "wasxfail") else "pass" if r.passed else
                       "fail" if r.failed else "not_applicable")
            check = _common_prefix([str(k)[len("mergeqa."):] for k, _ in props])
            text = re.sub(r"^\[gw\d+\] .*\n", "", str(getattr(r, "longreprtext", "") or "")).strip()  # xdist's header
            figures = {str(k)[len(f"mergeqa.{check}."):]: x for k, x in props if str(k).startswith(f"mergeqa.{check}.")}
            text = text or str(getattr(r, "wasxfail", ""))
            out.append(LegacyVerdict(check, subject, outcome, figures, summary=text.splitlines()[0] if text else "",
                                     reason=text.splitlines()[0] if text else "", details=text.splitlines()[:40],
                                     test=r.nodeid))
    return out


class LegacyVerdict(Verdict):
    """A verdict rebuilt from a test report: its message is the test's own failure text."""

    def headline(self) -> str:
        first = self.summary or self.test.split("::")[-1]
        return f"{self.check}: {self.outcome}" + (f": {first}" if first else "")

    def message(self) -> str:
        return "\n".join(self.details) or self.headline()


def _common_prefix(names: Sequence[str]) -> str:
    """The check of figure names: their longest common dotted prefix, less at least the figure
    ("sanity.generates.obtained", "sanity.generates.n" -> "sanity.generates")."""
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common) or names[0].split(".")[0]


def _models(meta: dict[str, str], role: str) -> list[str]:
    """Model names of a role in the run metadata (mergeqa.run.<role>.<name>.path)."""
    pattern = re.compile(rf"mergeqa\.run\.{role}\.(.+)\.path")
    return sorted(m.group(1) for k in meta if (m := pattern.fullmatch(k)))


def _merge_configs(meta: dict[str, str]) -> dict[str, str]:
    out = {}
    for key, value in meta.items():
        m = re.fullmatch(r"mergeqa\.run\.merged\.(.+)\.(merge_config|path)", key)
        if not m:
            continue
        path = Path(value) if m.group(2) == "merge_config" else Path(value) / "mergekit_config.yml"
        if path.is_file() and m.group(1) not in out:
            out[m.group(1)] = path.read_text()[:20_000]
    return out


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _scores(v: Verdict) -> dict[str, float]:
    scores = v.data.get("scores")
    if isinstance(scores, dict):
        return {str(k): s for k, s in ((k, _num(s)) for k, s in scores.items()) if s is not None}
    parents = {k[len("parent."):]: _num(x) for k, x in v.figures.items()
               if k.startswith("parent.") and k.count(".") == 1}
    merged = _num(v.figures.get("obtained"))
    if not parents or merged is None or v.check.startswith("cost"):
        return {}
    return {**{k: s for k, s in parents.items() if s is not None}, v.subject: merged}


def _interval(v: Verdict) -> tuple[float, float] | None:
    iv = v.data.get("interval")
    if isinstance(iv, (list, tuple)) and len(iv) == 2 and None not in map(_num, iv):
        return float(iv[0]), float(iv[1])
    lo, hi = _num(v.figures.get("ci_low")), _num(v.figures.get("ci_high"))
    return (lo, hi) if lo is not None and hi is not None else None


# -- HTML ---------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1180px;color:#1b1f24;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}th,td{border:1px solid #d0d7de;padding:3px 7px;vertical-align:top}
th{background:#f6f8fa;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{background:#dafbe1}.fail,.error{background:#ffebe9}.inconclusive{background:#fff8c5}
.not_run,.not_applicable{background:#f6f8fa;color:#57606a}.read{background:#ddf4ff}
.banner{border-radius:6px;padding:.6em 1em;margin:.4em 0;border:1px solid #d0d7de}
.banner.ok{background:#dafbe1;border-color:#4ac26b}.banner.no{background:#ffebe9;border-color:#ff8182}
.banner.none{background:#f6f8fa}pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap;font-size:12px}
details{margin:.3em 0}summary{cursor:pointer}small,.muted{color:#57606a}
.figs td:first-child{font-family:ui-monospace,monospace;font-size:12px}svg{width:100%;max-width:760px;height:auto}
@media print{body{max-width:none}h2{break-after:avoid}table,svg,figure{break-inside:avoid}}
"""
# Reports images that failed to load on the console (the browser test reads it) and opens every
# collapsed section for printing; the page reads the same without it.
SCRIPT = """
window.addEventListener('beforeprint',function(){document.querySelectorAll('details').forEach(
function(d){d.open=true;});});
window.addEventListener('load',function(){var bad=0,imgs=document.images;
for(var i=0;i<imgs.length;i++){if(!(imgs[i].complete&&imgs[i].naturalWidth>0)){bad++;
console.error('mergeqa: image did not load: '+imgs[i].alt);}}
document.body.setAttribute('data-images',imgs.length+' '+bad);});
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def fmt(x, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:.3g}"
    return str(x)


def _css_class(outcome: str) -> str:
    if outcome.startswith("to read"):
        return "read"
    return "not_run" if outcome == "not run" else outcome.split(" ")[0]


def _cell(outcome: str) -> str:
    return f'<td class="{_css_class(outcome)}">{esc(outcome)}</td>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else
                                     f'<td class="n">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                                     for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PALETTE = ("#0969da", "#bc4c00", "#1a7f37", "#cf222e", "#8250df", "#9a6700", "#1b7c83", "#bf3989",
           "#57606a", "#6639ba")


def svg_curves(title: str, curves: dict[str, Sequence[float]], *, chance: float | None = None,
               roles: dict[str, str] | None = None, width: int = 720, height: int = 300) -> str:
    """An inline SVG line chart: one polyline per model over layers (x) of a score in [0, 1]."""
    roles = roles or {}
    values = [y for ys in curves.values() for y in ys if _num(y) is not None]
    if not values:
        return ""
    lo = max(0.0, min(values + ([chance] if chance is not None else [])) - 0.05)
    hi = min(1.0, max(values) + 0.02) if max(values) <= 1 else max(values) * 1.05
    left, right, top, bottom = 48, 170, 26, 34
    w, h = width - left - right, height - top - bottom
    n = max(len(ys) for ys in curves.values())
    x = lambda i: left + (w * i / (n - 1) if n > 1 else w / 2)  # noqa: E731
    y = lambda v: top + h - (h * (v - lo) / (hi - lo) if hi > lo else h / 2)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{esc(title)}"><title>{esc(title)}</title>',
             f'<text x="{left}" y="16" font-size="13" font-weight="600">{esc(title)}</text>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#d0d7de"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.2f}</text>')
    for i in range(n):
        parts.append(f'<text x="{x(i):.1f}" y="{top + h + 16}" font-size="11" text-anchor="middle">'
                     f'{"emb" if i == 0 else i}</text>')
    parts.append(f'<text x="{left + w / 2:.1f}" y="{height - 3}" font-size="11" text-anchor="middle">layer</text>')
    if chance is not None:
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(chance):.1f}" y2="{y(chance):.1f}" '
                     f'stroke="#57606a" stroke-dasharray="5 4"/>')
    for j, (name, ys) in enumerate(curves.items()):
        color = "#1b1f24" if roles.get(name) == "base" else PALETTE[j % len(PALETTE)]
        dash = ' stroke-dasharray="6 3"' if roles.get(name) == "merged" else ""
        width_ = 2.6 if roles.get(name) in ("parent", "base") else 1.6
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys) if _num(v) is not None)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width_}"{dash} points="{pts}"/>')
        ly = top + 12 + 16 * j
        label = f"{name} ({roles[name]})" if name in roles else name
        parts.append(f'<line x1="{left + w + 12}" x2="{left + w + 32}" y1="{ly - 4}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="{width_}"{dash}/><text x="{left + w + 36}" y="{ly}" '
                     f'font-size="11">{esc(label)}</text>')
    if chance is not None:
        ly = top + 12 + 16 * len(curves)
        parts.append(f'<text x="{left + w + 12}" y="{ly}" font-size="11" fill="#57606a">- - chance {chance:.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def png_data_uri(path: Path) -> str | None:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG") or len(data) > MAX_IMAGE_BYTES:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _images(v: Verdict) -> list[tuple[str, str]]:
    """(label, data URI) for every figure that names a PNG file (a check's plot)."""
    out = []
    for name, value in {**v.figures, **{k: x for k, x in v.data.items() if isinstance(x, str)}}.items():
        if isinstance(value, str) and value.endswith(".png"):
            uri = png_data_uri(Path(value))
            if uri:
                out.append((f"{v.check} {name}", uri))
    return out


class HtmlReport:
    """Renders a ReportInput as one HTML page; `render()` returns the text."""

    def __init__(self, data: ReportInput):
        self.d = data

    def render(self) -> str:
        d = self.d
        sections = [self.banners(), self.checklist(), self.comparison(), self.cost(), self.failures(),
                    self.probing(), self.divergence(), self.samples(), self.figures(), self.provenance()]
        device = d.metadata.get("mergeqa.run.device", "?")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{esc(d.title)}</title><style>{CSS}</style></head><body>"
                f"<h1>{esc(d.title)}</h1><p class=\"muted\">{len(d.merges)} merge(s) against "
                f"{esc(', '.join(d.parents) or 'their parents')}; {len(d.verdicts)} verdicts; device "
                f"{esc(device)}, dtype {esc(d.metadata.get('mergeqa.run.dtype', '?'))}; inconclusive "
                f"policy: {esc(d.policy)}.</p>" + "".join(sections) + f"<script>{SCRIPT}</script></body></html>\n")

    def banners(self) -> str:
        out = ["<h2 id=\"verdicts\">Verdict per merge</h2>"]
        if self.d.run == "interrupted":
            out.append('<div class="banner none"><b>interrupted</b>: the run was stopped before every check '
                       'ran; no merge has a verdict</div>')
        for merge in self.d.merges:
            ok, first = self.d.deployable(merge)
            status = self.d.status(merge)
            if status is not None and status.state == "interrupted":
                out.append(f'<div class="banner none"><b>{esc(merge)}: interrupted</b>: no verdict '
                           f'({esc(status.line.split("(", 1)[-1].rstrip(")"))})</div>')
            elif status is not None and not status.deployable and first is None:  # no verdict against it:
                out.append(f'<div class="banner no"><b>{esc(merge)}: not deployable</b>: '  # tests that did not end
                           f'{esc(status.line.split(": NOT deployable: ", 1)[-1])}</div>')
            elif ok is None:
                out.append(f'<div class="banner none"><b>{esc(merge)}</b>: no verdicts recorded</div>')
            elif ok:
                n = len(self.d.of(merge))
                out.append(f'<div class="banner ok"><b>{esc(merge)}: deployable</b>: all {n} checks pass</div>')
            else:
                n = sum(not accepted(v, self.d.policy) for v in self.d.of(merge))
                out.append(f'<div class="banner no"><b>{esc(merge)}: not deployable</b>: {n} check(s) against it; '
                           f'first: <code>{esc(first.name)}</code>: {esc(first.headline())}</div>')
        return "".join(out)

    def checklist(self) -> str:
        merges = self.d.merges
        rows = {}
        for merge in merges:
            for item, outcome, decided in self.d.checklist(merge):
                rows.setdefault(item, []).append((outcome, decided))
        body = []
        for item, cells in rows.items():
            checks = sorted({v.check for _, decided in cells for v in decided})
            decided_by = ", ".join(checks) if checks else ("a person" if item.manual else "-")
            tds = "".join(_cell(o) for o, _ in cells)
            how = "" if any(o != "not run" for o, _ in cells) else f"<br><small>how to run: {esc(item.how)}</small>"
            body.append(f"<tr><td><b>{esc(item.title)}</b>{how}</td><td><small>{esc(decided_by)}</small></td>{tds}</tr>")
        head = "".join(f"<th>{esc(m)}</th>" for m in merges)
        return ("<h2 id=\"checklist\">Deployment checklist</h2><p class=\"muted\">The guide's checklist; each "
                "item is decided by the checks named, per merge. \"not run\" says how to run it.</p>"
                f"<table><thead><tr><th>item</th><th>decided by</th>{head}</tr></thead><tbody>"
                + "".join(body) + "</tbody></table>")

    def comparison(self) -> str:
        tasks, table = self.d.comparison()
        if not tasks:
            return "<h2 id=\"comparison\">Comparison</h2><p class=\"not_run\">not run: no verdict carried per-model task scores</p>"
        order = [m for m in [self.d.base, *self.d.parents, *self.d.merges] if m in table]
        order += sorted(set(table) - set(order))
        lower = self.d.lower_is_better()  # perplexity-type tasks: the lowest is the best
        best = {t: (min if t in lower else max)((table[m][t][0] for m in order if t in table[m]), default=None)
                for t in tasks}
        rows = []
        for m in order:
            cells = [esc(m) + (f" <small>({self._role(m)})</small>")]
            for t in tasks:
                if t not in table[m]:
                    cells.append("-")
                    continue
                score, iv, n = table[m][t]
                text = f"<b>{score:.3f}</b>" if score == best[t] else f"{score:.3f}"
                if iv:
                    versus = f" vs {esc(iv[2])}" if iv[2] else ""
                    text += f"<br><small>&Delta;{versus} [{iv[0]:+.3f}, {iv[1]:+.3f}]</small>"
                elif n and self._role(m) != "merged" and 0 <= score <= 1:
                    lo, hi = _wilson(score, int(n))
                    text += f"<br><small>[{lo:.3f}, {hi:.3f}]</small>"
                cells.append(text)
            rows.append(cells)
        down = [t for t in tasks if t in lower]
        return ("<h2 id=\"comparison\">Comparison</h2><p class=\"muted\">Main metric per task, best in bold"
                + (f" (lowest for {', '.join(map(esc, down))})" if down else "") + ". "
                "Under a merge's score: the 95 % interval of its paired difference to the reference "
                "parent (&Delta;); under a reference: its Wilson interval when the item count is known.</p>"
                + _table(["model", *tasks], rows))

    def _role(self, model: str) -> str:
        return "base" if model == self.d.base else "parent" if model in self.d.parents else "merged"

    def cost(self) -> str:
        rows = self.d.cost_rows()
        if not rows:
            return "<h2 id=\"cost\">Inference cost</h2><p class=\"not_run\">not run: pytest --gate runs mergeqa/checks/test_cost.py</p>"
        notes = {v.subject: v.data["scale"] for v in self.d.verdicts
                 if "depth up-scaled" in str(v.data.get("scale", ""))}
        return ("<h2 id=\"cost\">Inference cost</h2><p class=\"muted\">Measured together in this run on the "
                "sanity prompts; size, memory and speed are gated as ratios to the parents ([cost]).</p>"
                + _table(*cost_table(rows, self._role))
                + "".join(f"<p><b>{esc(m)}</b>: {esc(note)}</p>" for m, note in notes.items()))

    def failures(self) -> str:
        out = []
        for v in self.d.verdicts:
            if accepted(v, self.d.policy):
                continue
            examples = v.data.get("examples") or v.data.get("failed_items") or []
            block = f"<pre>{esc(v.message())}</pre>"
            if examples:
                block += _examples(examples)
            out.append(f"<details open><summary class=\"{_css_class(v.outcome)}\"><b>{esc(v.name)}</b>: "
                       f"{esc(v.headline())}</summary>{block}</details>")
        if not out:
            return "<h2 id=\"failures\">Failures</h2><p>none</p>"
        return "<h2 id=\"failures\">Failures</h2>" + "".join(out)

    def probing(self) -> str:
        charts: dict[str, tuple[dict, dict, float | None]] = {}
        for v in self.d.verdicts:
            curves = v.data.get("curves")
            if isinstance(curves, dict) and curves:
                name = str(v.data.get("phenomenon") or task_of(v) or v.check)
                merged, roles, chance = charts.setdefault(name, ({}, {}, v.data.get("chance")))
                merged.update(curves)
                roles.update(v.data.get("roles") or {})
        images = {}
        for v in self.d.verdicts:
            for label, uri in _images(v):
                images.setdefault(uri, label)
        if not charts and not images:
            return ("<h2 id=\"probing\">Probing</h2><p class=\"not_run\">not run: pytest --gate runs "
                    "test_probing (layer curves per phenomenon)</p>")
        out = ["<h2 id=\"probing\">Probing layer curves</h2>"]
        for name, (curves, roles, chance) in charts.items():
            roles = {m: roles.get(m) or self._role(m) for m in curves}
            ordered = dict(sorted(curves.items(), key=lambda kv: ("base parent merged".find(roles[kv[0]]), kv[0])))
            out.append(svg_curves(name, ordered, chance=_num(chance), roles=roles))
        for uri, label in images.items():
            out.append(f'<figure><img src="{uri}" alt="{esc(label)}" style="max-width:100%">'
                       f"<figcaption><small>{esc(label)}</small></figcaption></figure>")
        return "".join(out)

    def divergence(self) -> str:
        found = [v for v in self.d.verdicts if "divergence" in v.check]
        if not found:
            return ("<h2 id=\"divergence\">Divergence</h2><p class=\"not_run\">not run: comes with the probing "
                    "checks (behaviour vs internals rankings)</p>")
        out = ["<h2 id=\"divergence\">Divergence: behaviour vs internals</h2>"]
        for v in found:
            behaviour, internals = v.data.get("behaviour") or {}, v.data.get("internals") or {}
            if behaviour and internals:
                b_rank = {m: i + 1 for i, m in enumerate(sorted(behaviour, key=lambda m: -behaviour[m]))}
                i_rank = {m: i + 1 for i, m in enumerate(sorted(internals, key=lambda m: -internals[m]))}
                out.append(_table(["merge", "behaviour", "rank", "internals", "rank"],
                                  [[esc(m), fmt(behaviour[m], 4), str(b_rank[m]), fmt(internals.get(m), 4),
                                    str(i_rank.get(m, "-"))] for m in sorted(b_rank, key=b_rank.get)]))
            out.append(f"<p>{esc(v.headline())}</p>" + _figures(v))
        return "".join(out)

    def samples(self) -> str:
        samples = self.d.samples()
        if not samples:
            return ""
        models = [m for m in [*self.d.parents, *self.d.merges] if any(m in s for s in samples.values())]
        rows = [[f"<code>{esc(p)}</code>"] + [f"<td><code>{esc(s.get(m, '-'))}</code></td>" for m in models]
                for p, s in samples.items()]
        return ("<h2 id=\"samples\">Manual testing: side-by-side greedy samples</h2><p class=\"muted\">For a "
                "person to read; no threshold applies.</p>" + _table(["prompt", *models], rows))

    def figures(self) -> str:
        out = ["<h2 id=\"figures\">Figures per check</h2>"]
        for merge in self.d.merges + sorted({v.subject for v in self.d.verdicts} - set(self.d.merges)):
            mine = [v for v in self.d.verdicts if v.subject == merge]
            if not mine:
                continue
            out.append(f"<details><summary><b>{esc(merge)}</b> ({len(mine)} verdicts)</summary>")
            for v in mine:
                out.append(f"<details><summary class=\"{_css_class(v.outcome)}\">{esc(v.headline())}</summary>"
                           f"{_figures(v)}</details>")
            out.append("</details>")
        return "".join(out)

    def provenance(self) -> str:
        meta = self.d.metadata
        rows = [[f"<code>{esc(k)}</code>", f"<td><code>{esc(v)}</code></td>"] for k, v in sorted(meta.items())
                if not k.endswith(".merge_config")]
        rows += [[f"<code>seed.{esc(k)}</code>", f"<td><code>{esc(v)}</code></td>"] for k, v in self.d.seeds.items()]
        configs = "".join(f"<h3>{esc(m)}: mergekit_config.yml</h3><pre>{esc(text)}</pre>"
                          for m, text in self.d.merge_configs.items())
        return "<h2 id=\"provenance\">Provenance</h2>" + _table(["what", "value"], rows) + configs


def _wilson(score: float, n: int) -> tuple[float, float]:
    from mergeqa.stats.wilson import wilson_interval

    lo, hi = wilson_interval(int(round(score * n)), n)
    return float(lo), float(hi)


def _figures(v: Verdict) -> str:
    rows = [[f"<code>{esc(k)}</code>", f"<td class=\"n\">{esc(fmt(x, 4))}</td>"] for k, x in v.figures.items()]
    return _table(["figure", "value"], rows) if rows else ""


def _examples(examples: Sequence) -> str:
    shown = list(examples[:EXAMPLES_SHOWN])
    more = f"<p class=\"muted\">... and {len(examples) - len(shown)} more</p>" if len(examples) > len(shown) else ""
    if all(isinstance(e, dict) for e in shown):
        keys = list(dict.fromkeys(k for e in shown for k in e))
        rows = [[f"<td>{esc(e.get(k, ''))}</td>" for k in keys] for e in shown]
        return "<p>Items the parent got right and the merge got wrong:</p>" + _table(keys, rows) + more
    return ("<p>Items the parent got right and the merge got wrong:</p><ul>"
            + "".join(f"<li><code>{esc(e)}</code></li>" for e in shown) + "</ul>" + more)


COST_COLUMNS = (("size on disk (MB)", lambda r: r["size"]["bytes_on_disk"] / 2**20),
                ("parameters", lambda r: r["size"]["parameters"]),
                ("layers", lambda r: r["size"]["layers"]),
                ("peak memory (MB)", lambda r: r["peak_memory_bytes"] / 2**20),
                ("prefill tok/s", lambda r: r["prefill_tokens_per_s"]),
                ("decode tok/s", lambda r: r["decode_tokens_per_s"]),
                ("latency ms/prompt", lambda r: r["latency_ms"]))


def cost_table(rows: dict[str, dict], role) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the cost table: one row per model, parents first."""
    roles = {m: rows[m].get("role") or role(m) for m in rows}
    order = sorted(rows, key=lambda m: (roles[m] != "parent", m))
    body = []
    for m in order:
        cells = [f"{esc(m)} <small>({roles[m]})</small>"]
        for _, get in COST_COLUMNS:
            try:
                cells.append(fmt(get(rows[m]), 2))
            except (KeyError, TypeError):
                cells.append("-")
        body.append(cells)
    return ["model", *(c for c, _ in COST_COLUMNS)], body


# -- markdown (GitHub step summary) -------------------------------------------------------------
def step_summary(data: ReportInput, limit: int = STEP_SUMMARY_LIMIT) -> str:
    """Verdicts, checklist and comparison table as GitHub markdown, cut to `limit` bytes."""
    lines = ["## mergeqa deployment report", ""]
    if data.run == "interrupted":
        lines += ["**interrupted: no verdict** (the run was stopped before every check ran)", ""]
    for merge in data.merges:
        ok, first = data.deployable(merge)
        status = data.status(merge)
        if status is not None and status.state == "interrupted":
            lines.append(f"- :stop_sign: **{merge}**: interrupted: no verdict")
        elif status is not None and not status.deployable and first is None:
            lines.append(f"- :x: **{merge}**: not deployable; {_md(status.line.split(': NOT deployable: ', 1)[-1])}")
        elif ok is None:
            lines.append(f"- **{merge}**: no verdicts recorded")
        elif ok:
            lines.append(f"- :white_check_mark: **{merge}**: deployable")
        else:
            lines.append(f"- :x: **{merge}**: not deployable; first: `{first.name}`: {_md(first.headline())}")
    lines += ["", "### Deployment checklist", "", "| item | " + " | ".join(data.merges) + " |",
              "|---|" + "---|" * len(data.merges)]
    per_merge = {m: data.checklist(m) for m in data.merges}
    for i, item in enumerate(CHECKLIST):
        lines.append(f"| {item.title} | " + " | ".join(per_merge[m][i][1] for m in data.merges) + " |")
    tasks, table = data.comparison()
    if tasks:
        lines += ["", "### Comparison", "", "| model | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for m, cells in table.items():
            shown = []
            for t in tasks:
                score, iv, _ = cells.get(t, (None, None, None))
                shown.append("-" if score is None else f"{score:.3f}" + (f" [{iv[0]:+.3f}, {iv[1]:+.3f}]" if iv else ""))
            lines.append(f"| {m} | " + " | ".join(shown) + " |")
    cost = data.cost_rows()
    if cost:
        role = lambda m: "base" if m == data.base else "parent" if m in data.parents else "merged"  # noqa: E731
        header, rows = cost_table(cost, role)
        lines += ["", "### Inference cost", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join(re.sub(r"<[^>]+>", "", html.unescape(c)) for c in r) + " |" for r in rows]
    failing = [v for v in data.verdicts if not accepted(v, data.policy)]
    if failing:
        lines += ["", "### Failures", ""] + [f"- `{v.name}`: {_md(v.headline())}" for v in failing]
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > limit:
        cut = text.encode()[: limit - 200].decode(errors="ignore")
        text = cut[: cut.rfind("\n")] + "\n\n... (cut to stay under GitHub's step summary limit; see report.html)\n"
    return text


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# -- the one entry point -------------------------------------------------------------------------
def write_deployment_reports(config, verdicts: Iterable[Verdict], out_dir) -> dict[str, Path]:
    """Write out_dir/report.html; append the step summary to $GITHUB_STEP_SUMMARY when it is set.
    Returns {"html": path, "step_summary": path?}."""
    data = ReportInput.from_config(config, verdicts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"html": out_dir / "report.html"}
    written["html"].write_text(HtmlReport(data).render(), encoding="utf-8")
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        with open(summary_path, "a", encoding="utf-8") as f:
            f.write(step_summary(data))
        written["step_summary"] = Path(summary_path)
    return written


# -- pytest-html (optional) ----------------------------------------------------------------------
class HtmlExtras:
    """Registered only when pytest-html is loaded: each test's verdicts (headline, figures, plots)
    become extras of its row in pytest-html's report."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        if call.when == "call":
            verdicts = item.stash.get(ITEM_VERDICTS, [])
            if verdicts:
                report.extras = list(getattr(report, "extras", [])) + verdict_extras(verdicts)
        return report


def verdict_extras(verdicts: Sequence[Verdict]) -> list[dict]:
    """pytest-html extras for these verdicts: one HTML block each, and each plot as an image."""
    from pytest_html import extras

    out = []
    for v in verdicts:
        block = f"<div><b>{esc(v.name)}</b>: {esc(v.headline())}{_figures(v)}"
        curves = v.data.get("curves")
        if isinstance(curves, dict) and curves:
            block += svg_curves(str(v.data.get("phenomenon") or v.check), curves, chance=_num(v.data.get("chance")),
                                roles=v.data.get("roles") or {})
        out.append(extras.html(block + "</div>"))
        for label, uri in _images(v):
            out.append(extras.png(uri.split(",", 1)[1], name=label))
    return out
