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
    group.addoption("--backend", choices=("mergeqa-hf", "hf", "vllm"), default="mergeqa-hf",
                    help="lm-eval scorer: mergeqa's prefix-sharing one, lm-eval's hf, or lm-eval's vllm "
                         "where vLLM is installed (default: mergeqa-hf)")
    group.addoption("--executor", metavar="local|ray|ray://HOST:PORT", default="local",
                    help="where merges, evaluations and probes run: here, or as jobs on a Ray cluster "
                         "(pip install mergeqa[ray]) (default: local)")
    group.addoption("--device-map", choices=("none", "auto"), default="none",
                    help="auto: shard each model over the GPUs this process sees (accelerate) (default: none)")
    group.addoption("--tasks-path", nargs="+", action="extend", metavar="DIR", default=[],
                    help="extra directories of lm-eval task YAML (default: none)")
    group.addoption("--eval-limit", type=int, metavar="N", default=None,
                    help="evaluate at most N items per task, for smoke runs (default: all)")
    group.addoption("--report-dir", metavar="DIR", default=None,
                    help="where the comparison table and plots go (default: next to --junitxml, else ./mergeqa-report)")
    group.addoption("--gate", action="store_true", default=False,
                    help="collect mergeqa's built-in checks even without --model/--merge-config (default: off)")
    group.addoption("--unsafe-exec", action="store_true", default=False,
                    help="run model-written code (HumanEval) even where bubblewrap cannot sandbox it; "
                         "reports then say 'unsandboxed' (default: off: refuse)")
    group.addoption("--conflict-pairs", metavar="JSONL", default=None,
                    help="consistency pairs for the conflict checks (default: [conflict] pairs, else the embedded set)")
    group.addoption("--questions", metavar="JSONL", default=None,
                    help="MT-Bench question.jsonl for the judged checks (default: [judge] questions, else the embedded set)")
    group.addoption("--judge", metavar="PATH", default=None,
                    help="judge: 'reference' or a local transformers model directory (default: [judge] judge, 'reference')")
    group.addoption("--judge-url", metavar="URL", default=None,
                    help="OpenAI-compatible endpoint to judge with, e.g. http://127.0.0.1:8000/v1 (default: [judge] url; "
                         "key from $OPENAI_API_KEY or [judge] api_key_env)")
    group.addoption("--judge-model", metavar="NAME", default=None,
                    help="model name the --judge-url endpoint serves (default: [judge] model)")


def _share_cores(config: pytest.Config) -> None:
    """Under xdist, give each worker its share of the cores: torch's default (all cores in every
    worker) oversubscribes them, which measured 17x slower on 2 cores with 2 workers."""
    workerinput = getattr(config, "workerinput", None)
    from .devices import pin_worker_gpus

    pin_worker_gpus(workerinput)  # and its own GPUs: CUDA_VISIBLE_DEVICES from the worker id
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
    if config.option.unsafe_exec:  # read where lm-eval runs the code: mergeqa.sandbox.unsafe_exec_allowed
        os.environ["MERGEQA_UNSAFE_EXEC"] = "1"
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
        from .devices import check_backend
        from .executor import make_executor

        make_executor(opt.executor)  # an unknown spec, or Ray missing: a usage error now
        check_backend(opt.backend)
        gate = config.stash[session_key]
        # the family's defaults fit only the family
        thresholds = config.stash[thresholds_key] = load_thresholds(thresholds_path, embedded=gate.embedded)
        if thresholds.path is not None or gate.embedded:
            thresholds.check_parents(gate.parent_names())
        # Names the checks are parametrised by: a wrong one is a usage error now, not a
        # collection error later.
        if thresholds.get("retention", "suite"):
            thresholds.suite(thresholds.get("retention", "suite"))
        else:  # no suite (a model that is not the family, no thresholds file): one line says so
            from .init import NoSuiteNotice

            config.pluginmanager.register(NoSuiteNotice(thresholds), "mergeqa-no-suite")
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
    if "merged_model" in metafunc.fixturenames or "retention_verdicts" in metafunc.fixturenames:
        names = metafunc.config.stash[session_key].merged_names
        metafunc.parametrize("merged_model", names, ids=names, indirect=True, scope="session")
    if "retention_task" in metafunc.fixturenames:
        thresholds = metafunc.config.stash[thresholds_key]
        if not thresholds.get("retention", "suite"):
            from .init import no_suite_param

            metafunc.parametrize("retention_task", [no_suite_param(thresholds)], scope="session")
            return
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
    suite = thresholds.get("retention", "suite")
    tasks = thresholds.suite(suite)["tasks"] if suite else []
    paths = [str(BUNDLED_TASKS)] + list(opt.tasks_path)
    if any(t.startswith("family") for t in tasks):
        paths.insert(0, str(gate.family().tasks_dir))
    return EvalSettings(cache_dir=gate.cache_dir, device=gate.device, dtype=gate.dtype,
                        backend=opt.backend, limit=opt.eval_limit, task_paths=tuple(paths),
                        device_map=None if opt.device_map == "none" else opt.device_map)


@pytest.fixture(scope="session")
def eval_settings(pytestconfig):
    """EvalSettings for the engine (cache, device, dtype, backend, task paths)::

        def test_arith(merged_model, eval_settings):
            result = evaluate(merged_model, ["family_arithmetic"], eval_settings)
    """
    return _eval_settings(pytestconfig)


@pytest.fixture(scope="session")
def evaluations(pytestconfig, eval_settings, thresholds):
    """evaluations(ref) -> EvalResult on the retention suite, evaluated once per model and cache;
    evaluations(ref, tasks) on those tasks only."""
    from .engine import evaluate
    from .executor import make_executor, prefetch

    suite = thresholds.suite(thresholds.get("retention", "suite"))
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    quiet = pytestconfig.get_verbosity() < 0 or reporter is None
    progress = None if quiet else (lambda msg: reporter.write_line(f"mergeqa: {msg}"))
    memo: dict = {}
    executor = make_executor(pytestconfig.option.executor, device=eval_settings.device,
                             dtype=eval_settings.dtype)

    def run(ref, tasks=None):
        if tasks is not None:  # a part of the suite (the sequential gate's fixed-n tasks), alone
            key = (ref.path, tuple(tasks))
            if key not in memo:
                memo[key] = evaluate(ref, list(tasks), eval_settings, executor=executor,
                                     num_fewshot=suite.get("num_fewshot"), progress=progress)
            return memo[key]
        if executor.distributed and not memo:  # every merge and model at once, as parallel jobs
            memo.update(prefetch(pytestconfig.stash[session_key], suite["tasks"], eval_settings,
                                 executor, num_fewshot=suite.get("num_fewshot"), progress=progress))
        if ref.path not in memo:
            memo[ref.path] = evaluate(ref, suite["tasks"], eval_settings, executor=executor,
                                      num_fewshot=suite.get("num_fewshot"), progress=progress)
        return memo[ref.path]

    yield run
    if executor.distributed:
        executor.shutdown()


@pytest.fixture(scope="session")
def retention_verdicts(merged_model, parent_models, base_model, evaluations, eval_settings, thresholds):
    """{(task, kind): Verdict} for one merge: retention and regression against the parents."""
    from .retention import assess

    suite = thresholds.suite(thresholds.get("retention", "suite"))
    base_name = base_model.name if base_model is not None else "base"
    if thresholds.get("statistics", "sequential"):  # batches scored here; full tasks via the executor
        from .early_stop import evaluate_early

        early = evaluate_early(merged_model, list(parent_models), base_model, suite["tasks"], thresholds,
                               eval_settings, num_fewshot=suite.get("num_fewshot"), full=evaluations)
        return assess(merged_model.name, early.merged, early.parents, suite["tasks"], thresholds,
                      base=early.base, base_name=base_name, early=early)
    parents = {p.name: evaluations(p) for p in parent_models}
    base = evaluations(base_model) if base_model is not None else None
    return assess(merged_model.name, evaluations(merged_model), parents, suite["tasks"], thresholds,
                  base=base, base_name=base_name)


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
    """comparison.md, divergence.md and summary.md from the run's verdicts, and one line per merge."""
    if hasattr(config, "workerinput"):
        return
    from .report import write_run_reports

    write_run_reports(config, terminalreporter)


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
