"""The pytest plugin: options, the gate's fixtures and junit metadata. Nothing is measured here.

    pytest --model ./merged --parents ./a ./b --base ./base      # gate a merged checkpoint
    pytest --merge-config ties.yaml                              # build with mergekit, then gate
    pytest --gate                                                # gate the embedded tiny family

With --model, --merge-config or --gate and no test paths, the built-in checks (mergeqa.checks)
are collected; with explicit paths, those tests run and use the fixtures below.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .cache import default_cache_dir
from .errors import MergeQAUsageError

session_key = pytest.StashKey["GateSession"]()
thresholds_key = pytest.StashKey["Thresholds"]()
CHECKS_DIR = Path(__file__).resolve().parent / "checks"
BUNDLED_TASKS = Path(__file__).resolve().parent / "data" / "tasks"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mergeqa", "mergeqa: quality gate for merged checkpoints")
    group.addoption("--model", nargs="+", action="extend", metavar="PATH", default=[],
                    help="merged checkpoint directories under test (default: the embedded family's merges)")
    group.addoption("--parents", nargs="+", action="extend", metavar="PATH", default=None,
                    help="parent checkpoint directories (default: from --merge-config, else the embedded family)")
    group.addoption("--base", metavar="PATH", default=None,
                    help="base checkpoint the parents were fine-tuned from (default: from --merge-config's base_model)")
    group.addoption("--merge-config", nargs="+", action="extend", metavar="YAML", default=[],
                    help="mergekit YAML configs to build with mergekit and test (default: none)")
    group.addoption("--thresholds", metavar="PATH", default=None,
                    help="thresholds TOML (default: ./thresholds.toml if present, else built-in defaults)")
    group.addoption("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="where models run and merges are built (default: auto)")
    group.addoption("--dtype", choices=("float32", "bfloat16", "float16", "auto"), default="float32",
                    help="dtype models are loaded in for evaluation (default: float32)")
    group.addoption("--mergeqa-cache", metavar="DIR", default=None,
                    help=f"cache for the family, merges and results (default: $MERGEQA_CACHE_DIR or {default_cache_dir()})")
    group.addoption("--merge-seed", type=int, metavar="N", default=0,
                    help="random seed for mergekit (dare_* methods) (default: 0)")
    group.addoption("--backend", choices=("mergeqa-hf", "hf"), default="mergeqa-hf",
                    help="lm-eval scorer: mergeqa's prefix-sharing one or lm-eval's hf (default: mergeqa-hf)")
    group.addoption("--tasks-path", nargs="+", action="extend", metavar="DIR", default=[],
                    help="extra directories of lm-eval task YAML (default: none)")
    group.addoption("--eval-limit", type=int, metavar="N", default=None,
                    help="evaluate at most N items per task, for smoke runs (default: all)")
    group.addoption("--report-dir", metavar="DIR", default=None,
                    help="where the comparison table and plots go (default: next to --junitxml, else ./mergeqa-report)")
    group.addoption("--gate", action="store_true", default=False,
                    help="collect mergeqa's built-in checks even without --model/--merge-config (default: off)")


def _share_cores(config: pytest.Config) -> None:
    """Under xdist, give each worker its share of the cores: torch's default (all cores in every
    worker) oversubscribes them, which measured 17x slower on 2 cores with 2 workers."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // int(workerinput.get("workercount", 1)))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import sys

    if "torch" in sys.modules:  # already imported by another plugin: set it directly
        sys.modules["torch"].set_num_threads(threads)


def pytest_configure(config: pytest.Config) -> None:
    # No machine running the gate can reach a hub: fail fast instead of retrying the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    _share_cores(config)
    config.pluginmanager.register(VerdictCollector(config), "mergeqa-verdicts")
    if config.pluginmanager.hasplugin("html"):  # pytest-html: each check's figures as its extras
        from .html_report import HtmlExtras

        config.pluginmanager.register(HtmlExtras(), "mergeqa-html-extras")
    from .session import GateSession
    from .thresholds import load_thresholds

    opt = config.option
    thresholds_path = opt.thresholds
    if thresholds_path is None and Path("thresholds.toml").is_file():
        thresholds_path = "thresholds.toml"
    try:
        config.stash[session_key] = GateSession.from_options(
            models=opt.model, parents=opt.parents, base=opt.base, merge_configs=opt.merge_config,
            cache_dir=opt.mergeqa_cache or default_cache_dir(), device=opt.device, dtype=opt.dtype,
            seed=opt.merge_seed)
        thresholds = config.stash[thresholds_key] = load_thresholds(thresholds_path)
        # Names the checks are parametrised by: a wrong one is a usage error now, not a
        # collection error later.
        thresholds.suite(thresholds.get("retention", "suite"))
        from .probing.engine import datasets_from_thresholds

        try:
            datasets_from_thresholds(thresholds)
        except MergeQAUsageError as exc:
            raise MergeQAUsageError(f"{thresholds.path or 'thresholds'}: [probing] {exc}") from None
        if opt.merge_config:
            from .merging import read_merge_config

            for path in opt.merge_config:  # parse now: a YAML error is a usage error, not a test error
                read_merge_config(Path(path))
    except MergeQAUsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    gate_requested = opt.model or opt.merge_config or opt.gate
    if gate_requested and config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = [str(CHECKS_DIR)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "merged_model" in metafunc.fixturenames or "retention_findings" in metafunc.fixturenames:
        names = metafunc.config.stash[session_key].merged_names
        metafunc.parametrize("merged_model", names, ids=names, indirect=True, scope="session")
    if "retention_task" in metafunc.fixturenames:
        thresholds = metafunc.config.stash[thresholds_key]
        tasks = thresholds.suite(thresholds.get("retention", "suite"))["tasks"]
        metafunc.parametrize("retention_task", tasks, ids=tasks, scope="session")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A usage error met while a test runs (a corrupt file found at load) reads as one line; the
    verdicts a test decided travel on its report (plain dicts, so xdist ships them)."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(MergeQAUsageError):
        report.longrepr = f"mergeqa usage error: {call.excinfo.value}"
    if call.when == "call":
        from .verdict import ITEM_VERDICTS

        report.mergeqa_verdicts = [v.to_dict() for v in item.stash.get(ITEM_VERDICTS, [])]
    return report


class VerdictCollector:
    """Keeps every verdict of the run in `config.stash[RUN_VERDICTS]`, on the process that writes
    the reports (the xdist controller, or the only process)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    def pytest_runtest_logreport(self, report) -> None:
        dicts = getattr(report, "mergeqa_verdicts", None)
        if dicts and not hasattr(self.config, "workerinput"):
            from .verdict import RUN_VERDICTS, Verdict

            self.config.stash.setdefault(RUN_VERDICTS, []).extend(Verdict.from_dict(d) for d in dicts)


@pytest.fixture(scope="session")
def mergeqa_session(pytestconfig):
    """The run's GateSession: models under test, references, cache. Rarely needed directly::

        def test_cache_is_used(mergeqa_session):
            assert mergeqa_session.cache_dir.exists()
    """
    return pytestconfig.stash[session_key]


@pytest.fixture(scope="session")
def merged_model(request, mergeqa_session):
    """One merged model under test (a ModelRef); tests using it run once per merge::

        def test_generates(merged_model):       # ids: test_generates[ties], ...
            model = merged_model.model()         # loaded once per session and worker
    """
    return mergeqa_session.merged(request.param)


@pytest.fixture(scope="session")
def parent_models(mergeqa_session):
    """The parents (list of ModelRef) the merge is compared with::

        def test_vocab(merged_model, parent_models):
            assert all(p.config["vocab_size"] == merged_model.config["vocab_size"] for p in parent_models)
    """
    return mergeqa_session.parents()


@pytest.fixture(scope="session")
def base_model(mergeqa_session):
    """The base model (ModelRef) or None when there is none to compare with::

        def test_base(base_model):
            if base_model is None: pytest.skip("no --base given")
    """
    return mergeqa_session.base()


@pytest.fixture(scope="session")
def thresholds(pytestconfig):
    """The validated thresholds.toml::

        def test_retention(thresholds):
            floor = thresholds.get("retention", "min_retention")
    """
    return pytestconfig.stash[thresholds_key]


def _eval_settings(config: pytest.Config):
    from .engine import EvalSettings

    opt, gate, thresholds = config.option, config.stash[session_key], config.stash[thresholds_key]
    tasks = thresholds.suite(thresholds.get("retention", "suite"))["tasks"]
    paths = [str(BUNDLED_TASKS)] + list(opt.tasks_path)
    if any(t.startswith("family") for t in tasks):
        paths.insert(0, str(gate.family().tasks_dir))
    return EvalSettings(cache_dir=gate.cache_dir, device=gate.device, dtype=gate.dtype,
                        backend=opt.backend, limit=opt.eval_limit, task_paths=tuple(paths))


@pytest.fixture(scope="session")
def eval_settings(pytestconfig):
    """EvalSettings for the engine (cache, device, dtype, backend, task paths)::

        def test_arith(merged_model, eval_settings):
            result = evaluate(merged_model, ["family_arithmetic"], eval_settings)
    """
    return _eval_settings(pytestconfig)


@pytest.fixture(scope="session")
def evaluations(pytestconfig, eval_settings, thresholds):
    """evaluations(ref) -> EvalResult on the retention suite, evaluated once per model and cache."""
    from .engine import evaluate

    suite = thresholds.suite(thresholds.get("retention", "suite"))
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    quiet = pytestconfig.get_verbosity() < 0 or reporter is None
    progress = None if quiet else (lambda msg: reporter.write_line(f"mergeqa: {msg}"))
    memo: dict = {}

    def run(ref):
        if ref.path not in memo:
            memo[ref.path] = evaluate(ref, suite["tasks"], eval_settings,
                                      num_fewshot=suite.get("num_fewshot"), progress=progress)
        return memo[ref.path]

    return run


@pytest.fixture(scope="session")
def retention_findings(merged_model, parent_models, base_model, evaluations, thresholds):
    """{(task, kind): Finding} for one merge: retention and regression against the parents."""
    from .retention import assess

    suite = thresholds.suite(thresholds.get("retention", "suite"))
    parents = {p.name: evaluations(p) for p in parent_models}
    base = evaluations(base_model) if base_model is not None else None
    return assess(merged_model.name, evaluations(merged_model), parents, suite["tasks"], thresholds,
                  base=base)


@pytest.fixture
def record_figure(request):
    """record_figure(check, figure, value): a junit property `mergeqa.<check>.<figure>`::

        def test_ppl(record_figure):
            record_figure("sanity", "perplexity", 12.3)
    """
    def record(check: str, figure: str, value) -> None:
        request.node.user_properties.append((f"mergeqa.{check}.{figure}", value))

    return record


worker_metadata_key = pytest.StashKey[dict]()


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """The comparison table (base, parents, merges x tasks), from the result cache only."""
    def ran(test: str) -> bool:
        return any(getattr(r, "when", None) == "call" and f"{test}[" in getattr(r, "nodeid", "")
                   for reports in terminalreporter.stats.values() for r in reports)

    if not ran("test_retention") or hasattr(config, "workerinput"):
        return
    from .report import comparison_table, divergence_summary, report_dir

    thresholds = config.stash[thresholds_key]
    tasks = thresholds.suite(thresholds.get("retention", "suite"))["tasks"]
    gate, settings = config.stash[session_key], _eval_settings(config)
    sections = [("comparison", lambda: comparison_table(gate, tasks, settings))]
    if ran("test_probing"):
        sections.append(("divergence", lambda: divergence_summary(gate, thresholds, tasks, settings)))
    for name, make in sections:
        try:
            text = make()
        except Exception as exc:  # a summary must never hide the run's own result
            terminalreporter.write_line(f"mergeqa: no {name} report ({type(exc).__name__}: {exc})")
            continue
        out = report_dir(config) / f"{name}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        terminalreporter.write_sep("=", f"mergeqa {name}")
        terminalreporter.write_line(text)
        terminalreporter.write_line(f"(written to {out})")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller: collect the run metadata each worker saw (the models it loaded)."""
    meta = getattr(node, "workeroutput", {}).get("mergeqa_metadata", {})
    node.config.stash.setdefault(worker_metadata_key, {}).update(meta)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Run metadata once per run, as testsuite properties (before junitxml writes its file)."""
    from .report import report_dir, run_metadata

    config = session.config
    gate = config.stash.get(session_key, None)
    if gate is None:
        return
    meta = run_metadata(gate)
    if hasattr(config, "workerinput"):  # an xdist worker: hand it to the controller
        config.workeroutput["mergeqa_metadata"] = meta
        return
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    if xml is not None:
        meta.update(config.stash.get(worker_metadata_key, {}))
        for name, value in sorted(meta.items()):
            xml.add_global_property(name, value)
    from .verdict import RUN_VERDICTS

    opt = config.option  # report.html and the GitHub step summary (issue 15)
    if not opt.collectonly and (opt.model or opt.merge_config or opt.gate or config.stash.get(RUN_VERDICTS, None)):
        from .html_report import write_deployment_reports

        write_deployment_reports(config, config.stash.get(RUN_VERDICTS, []), report_dir(config))
