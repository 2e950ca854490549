"""The deployment report (mergeqa.report.html): checklist, banners, self-containment, the step
summary, pytest-html extras, and a render in headless Chromium where one is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mergeqa.decision.verdict import Verdict
from mergeqa.report.html import CHECKLIST, HtmlReport, ReportInput, step_summary, svg_curves


def _retention(merge, task, merged, outcome, examples=()):
    v = Verdict("retention", merge, outcome, {"obtained": merged, "threshold": 0.9, "ci_low": merged - 0.95,
                                               "ci_high": merged - 0.9, "n": 400},
                summary=f"{task} retention against arithmetic", expected=">= 0.9", delta=merged - 0.9,
                cause="the task vector was diluted", fix="raise its weight")
    v.data = {"task": task, "scores": {"arithmetic": 0.97, "lists": 0.31, "base": 0.2, merge: merged}, "n": 400,
              "examples": list(examples)}
    v.test = f"mergeqa/checks/test_retention.py::test_retention[{merge}-{task}]"
    return v


def _cost(merge, check, ratio, limit, op):
    v = Verdict.threshold(check, merge, obtained=ratio, threshold=limit, op=op, summary=f"{check} ratio")
    v.data = {"models": {name: {"size": {"bytes_on_disk": 2_400_000, "parameters": 580_000, "layers": 4},
                                "peak_memory_bytes": 3_100_000, "prefill_tokens_per_s": 5000.0,
                                "decode_tokens_per_s": 800.0, "latency_ms": 20.0}
                         for name in (merge, "arithmetic", "lists")},
              "samples": {"arithmetic": {merge: "19", "arithmetic": "19", "lists": "1 2"}}}
    return v


@pytest.fixture
def report_input() -> ReportInput:
    good, bad = "linear", "ties"
    verdicts = [
        _retention(good, "family_arithmetic", 0.96, "pass"),
        _retention(bad, "family_arithmetic", 0.28, "fail",
                   examples=[{"doc_id": i, "input": f"{i} + 1 =", "target": str(i + 1), "merged": "7"} for i in range(8)]),
        Verdict("sanity.generates", good, "pass", {"obtained": 5}, summary="non-empty"),
        Verdict("sanity.generates", bad, "pass", {"obtained": 5}, summary="non-empty"),
        _cost(good, "cost.size", 1.0, 1.05, "<="), _cost(bad, "cost.size", 2.0, 1.05, "<="),
        _cost(good, "cost.decode", 0.98, 0.5, ">="), _cost(bad, "cost.decode", 1.01, 0.5, ">="),
        Verdict("probing.agreement.best", good, "pass", {"obtained": 0.91},
                data={"phenomenon": "agreement", "curves": {"arithmetic": [0.5, 0.8, 0.9], good: [0.5, 0.85, 0.91]},
                      "chance": 0.5, "roles": {"arithmetic": "parent", good: "merged"}}),
        Verdict("probing.divergence", "run", "pass", {"kendall_tau": 0.4},
                data={"behaviour": {good: 0.7, bad: 0.5}, "internals": {good: 0.8, bad: 0.9}}),
    ]
    meta = {"mergeqa.run.device": "cpu", "mergeqa.run.dtype": "float32",
            "mergeqa.run.merged.ties.content_hash": "ab" * 32, "mergeqa.run.version.torch": "2.13.0"}
    return ReportInput(verdicts, [good, bad], ["arithmetic", "lists"], "base", meta,
                       {bad: "merge_method: ties\n"}, "fail", {"merge_seed": 0})


def _row(data, merge, title):
    return next((outcome, decided) for item, outcome, decided in data.checklist(merge) if item.title == title)


def test_checklist_rows_for_a_passing_and_a_failing_merge(report_input):
    assert _row(report_input, "linear", "Domain benchmarks")[0] == "pass"
    assert _row(report_input, "ties", "Domain benchmarks")[0] == "fail"
    assert _row(report_input, "ties", "Model size acceptable")[0] == "fail"
    assert _row(report_input, "linear", "Inference speed acceptable")[0] == "pass"
    assert _row(report_input, "linear", "A/B win rate >= 45 %")[0] == "not run"
    assert _row(report_input, "linear", "Manual testing")[0] == "to read (1 prompt)"
    # a retention verdict on a family task is not the TruthfulQA (safety) item
    assert _row(report_input, "linear", "Safety (TruthfulQA)")[0] == "not run"
    assert [i.title for i in CHECKLIST][-2:] == ["Model size acceptable", "Inference speed acceptable"]


def test_banner_names_the_first_failing_check_in_checklist_order(report_input):
    assert report_input.deployable("linear") == (True, None)
    ok, first = report_input.deployable("ties")
    assert ok is False and first.check == "retention"  # domain benchmarks come before model size


def test_inconclusive_accepted_under_warn_keeps_a_merge_deployable(report_input):
    report_input.verdicts = [Verdict("retention", "linear", "inconclusive", {"obtained": 0.9})]
    report_input.policy = "warn"
    assert report_input.deployable("linear")[0] is True
    assert _row(report_input, "linear", "Domain benchmarks")[0] == "inconclusive (accepted)"
    report_input.policy = "fail"
    assert report_input.deployable("linear")[0] is False


class _Resources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "data", "poster") and v]


def test_html_is_self_contained_and_shows_each_section(report_input):
    text = HtmlReport(report_input).render()
    parser = _Resources()
    parser.feed(text)
    assert all(u.startswith(("data:", "#")) for u in parser.urls), parser.urls
    assert "link" not in parser.tags and not re.search(r"@import|url\(\s*['\"]?https?:", text)
    for needle in ("ties: not deployable", "linear: deployable", "Deployment checklist", "how to run",
                   "&Delta; [+0.010, +0.060]", "1 + 1 =", "... and 3 more", "<svg", "internals",
                   "merge_method: ties", "ab" * 32, "Inference cost", "side-by-side"):
        assert needle in text, needle
    assert text.count("<svg") == 1


def test_perplexity_shows_as_perplexities_with_the_lowest_in_bold(report_input):
    """The sanity check gates a ratio; the comparison shows every model's perplexity, and for a
    lower-is-better task the best is the lowest (not the merge's ratio beside raw values)."""
    from mergeqa.inspect.sanity import Perplexity, check_perplexity

    ppl = Perplexity("family_grammar_ppl", "word_perplexity", 7.9, {"arithmetic": 8.4, "lists": 8.1}, 400)
    report_input.verdicts.append(check_perplexity(ppl, 1.5, "linear"))
    tasks, table = report_input.comparison()
    assert table["linear"]["family_grammar_ppl"][0] == pytest.approx(7.9)  # not 7.9 / 8.4
    assert table["arithmetic"]["family_grammar_ppl"][0] == pytest.approx(8.4)
    text = HtmlReport(report_input).comparison()
    assert "<b>7.900</b>" in text and "<b>8.400</b>" not in text
    assert "lowest for family_grammar_ppl" in text
    assert "<b>0.970</b>" in text  # accuracy tasks keep the highest in bold


def test_step_summary_stays_under_githubs_limit(report_input):
    report_input.verdicts += [Verdict("lint.finite", "ties", "fail", {"obtained": i}, summary="x" * 200)
                              for i in range(2000)]
    text = step_summary(report_input)
    assert len(text.encode()) < 64_000
    assert "| Model size acceptable |" in text and "cut to stay under" in text


def test_svg_curves_scale_into_the_box():
    svg = svg_curves("t", {"a": [0.5, 1.0], "b": [0.6, 0.7]}, chance=0.5)
    points = [float(x) for pts in re.findall(r'points="([^"]+)"', svg) for p in pts.split() for x in p.split(",")]
    assert points and all(0 <= x <= 720 for x in points)


GATE_TEST = """
import pytest
from mergeqa.decision.verdict import Verdict, decide

@pytest.mark.parametrize("merge", ["linear"])
def test_not_yet_on_verdicts(merge, record_figure):  # a check that only records figures
    record_figure("sanity.generates", "obtained", 5)

def test_size(request):
    decide(request, Verdict.threshold("cost.size", "linear", obtained=1.0, threshold=1.05, op="<="))

def test_retention(request):
    decide(request, Verdict.threshold("retention", "ties", obtained=0.28, threshold=0.9, op=">=",
                                      summary="family_arithmetic retention"))
"""


def test_written_at_session_end_with_the_step_summary_and_without_pytest_html(pytester, monkeypatch):
    summary = pytester.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(test_gate=GATE_TEST)
    result = pytester.runpytest_subprocess("--report-dir", "out", "-p", "no:cacheprovider", "-p", "no:html")
    result.assert_outcomes(passed=2, failed=1)
    html = (pytester.path / "out" / "report.html").read_text()
    assert "ties: not deployable" in html and "linear: deployable" in html
    text = summary.read_text()
    assert ":x: **ties**: not deployable; first: `retention[ties]`" in text
    # columns: the embedded default's five merges (the session's), then the verdicts' own order
    assert "| item | dare_ties | linear_lopsided | slerp_lopsided | task_arithmetic | ties | linear |" in text
    assert "| Model size acceptable | not run | not run | not run | not run | not run | pass |" in text
    assert "- **slerp_lopsided**: no verdicts recorded" in text
    assert "| Sanity | not run | not run | not run | not run | not run | pass |" in text  # from its figures


def test_pytest_html_extras_carry_the_figures(pytester):
    pytest.importorskip("pytest_html", reason="pytest-html is optional (pip install mergeqa[html])")
    pytester.makepyfile(test_gate=GATE_TEST)
    result = pytester.runpytest_subprocess("--html", "h.html", "--self-contained-html", "--report-dir", "out",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    page = (pytester.path / "h.html").read_text()
    assert "cost.size[linear]" in page and "retention[ties]" in page


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def no_network() -> list[str]:
    """`unshare --net` (a network namespace with only a down loopback) where it is allowed."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "--net", "true"], capture_output=True).returncode == 0:
        return [unshare, "--net"]
    return []


def render_in_chromium(html: Path, png: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Headless Chromium with networking off (no network namespace where allowed; always no proxy
    and every host mapped to nowhere): the DOM after load on stdout, console messages on stderr,
    a screenshot when `png` is given."""
    browser = chromium()
    args = [*no_network(), browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
            "--disable-dev-shm-usage", "--virtual-time-budget=3000", f"--user-data-dir={html.parent / '.chromium'}"]
    args += [f"--screenshot={png}", "--window-size=1280,2600"] if png else ["--dump-dom"]
    return subprocess.run(args + [html.resolve().as_uri()], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(chromium() is None, reason="no chromium on this machine (Debian: apt-get install -y chromium)")
def test_renders_in_a_browser_without_console_errors_or_missing_images(report_input, tmp_path):
    png = tmp_path / "plot.png"  # a check's PNG plot, embedded as a data URI
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot([0, 1], [0, 1])
    plt.savefig(png)
    plt.close("all")
    report_input.verdicts[0].figures["plot"] = str(png)
    out = tmp_path / "report.html"
    out.write_text(HtmlReport(report_input).render())
    proc = render_in_chromium(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    images = re.search(r'data-images="(\d+) (\d+)"', proc.stdout)
    assert images, "the page's load handler did not run"
    assert images.group(1) == "1" and images.group(2) == "0", images.group(0)


@pytest.mark.skipif(chromium() is None, reason="no chromium on this machine (Debian: apt-get install -y chromium)")
def test_the_browser_check_sees_a_broken_image(tmp_path):
    """The render test above could not pass vacuously: a page with a broken image is caught."""
    from mergeqa.report.html import SCRIPT

    page = tmp_path / "broken.html"
    page.write_text(f'<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA" alt="broken">'
                    f"<script>{SCRIPT}</script></body></html>")
    proc = render_in_chromium(page)
    assert 'data-images="1 1"' in proc.stdout
    assert any("CONSOLE" in line and "image did not load: broken" in line for line in proc.stderr.splitlines())
