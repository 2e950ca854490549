"""The plugin's hooks: configure the run (validate every input up front), parametrise the checks
per merge, carry verdicts across xdist, write the run's reports and junit metadata at the end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mergeqa.core.cache import default_cache_dir
from mergeqa.core.errors import MergeQAUsageError
from mergeqa.core.state import CHECKS_DIR, session_key, thresholds_key, worker_metadata_key
from mergeqa.pytest_plugin.ledger import NOT_APPLICABLE_MARK, InterruptGuard, RunLedger, finish, merge_param
from mergeqa.pytest_plugin.progress import install_progress


def _share_cores(config: pytest.Config) -> None:
    """Under xdist, give each worker its share of the cores: torch's default (all cores in every
    worker) oversubscribes them, which measured 17x slower on 2 cores with 2 workers."""
    workerinput = getattr(config, "workerinput", None)
    from mergeqa.models.devices import pin_worker_gpus

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
    config.addinivalue_line("markers", f"{NOT_APPLICABLE_MARK}: a parameter skipped because its check does not apply")
    if not hasattr(config, "workerinput"):  # the process that writes the reports keeps the ledger
        config.pluginmanager.register(RunLedger(config), "mergeqa-ledger")
        config.pluginmanager.register(InterruptGuard(config), "mergeqa-interrupt-guard")
    install_progress(config)  # "mergeqa: ..." lines for every step that takes seconds
    if config.option.unsafe_exec:  # read where lm-eval runs the code: mergeqa.humaneval.sandbox.unsafe_exec_allowed
        os.environ["MERGEQA_UNSAFE_EXEC"] = "1"
    if config.pluginmanager.hasplugin("html"):  # pytest-html: each check's figures as its extras
        from mergeqa.report.html import HtmlExtras

        config.pluginmanager.register(HtmlExtras(), "mergeqa-html-extras")
    from mergeqa.decision.thresholds import load_thresholds
    from mergeqa.models.session import GateSession

    opt = config.option
    thresholds_path = opt.thresholds
    if thresholds_path is None and Path("thresholds.toml").is_file():
        thresholds_path = "thresholds.toml"
    try:
        config.stash[session_key] = GateSession.from_options(
            models=opt.model, parents=opt.parents, base=opt.base, merge_configs=opt.merge_config,
            cache_dir=opt.mergeqa_cache or default_cache_dir(), device=opt.device, dtype=opt.dtype,
            seed=opt.merge_seed)
        from mergeqa.evaluate.executor import make_executor
        from mergeqa.models.devices import check_backend

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
            from mergeqa.pytest_plugin.no_suite import NoSuiteNotice

            config.pluginmanager.register(NoSuiteNotice(thresholds), "mergeqa-no-suite")
        from mergeqa.probing.engine import datasets_from_thresholds

        try:
            datasets_from_thresholds(thresholds)
        except MergeQAUsageError as exc:
            raise MergeQAUsageError(f"{thresholds.path or 'thresholds'}: [probing] {exc}") from None
        from mergeqa.core.errors import MergeConfigWarning

        for message in gate.merge_config_warnings:  # the configs were checked by GateSession.from_options
            try:
                config.issue_config_time_warning(MergeConfigWarning(message), stacklevel=2)
            except MergeConfigWarning as exc:  # -W error::mergeqa.core.errors.MergeConfigWarning
                raise MergeQAUsageError(str(exc)) from None
        if gate.embedded and opt.gate:  # a broken install: one line now, not an error in every test
            from mergeqa.models.shipped_family import verify

            verify()
        from mergeqa.pytest_plugin.preflight import preflight

        preflight(config, thresholds, gate)  # what else a user can misspell, before any model loads
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
            from mergeqa.pytest_plugin.no_suite import no_suite_param

            metafunc.parametrize("retention_task", [no_suite_param(thresholds)], scope="session")
            return
        tasks = thresholds.suite(thresholds.get("retention", "suite"))["tasks"]
        metafunc.parametrize("retention_task", tasks, ids=tasks, scope="session")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A usage error met while a test runs (a corrupt file found at load) reads as one line; the
    verdicts a test decided travel on its report (plain dicts, so xdist ships them)."""
    report = yield
    report.mergeqa_merge = merge_param(item)  # the ledger's key, shipped by xdist with the report
    if call.excinfo is not None and call.excinfo.errisinstance(MergeQAUsageError):
        report.longrepr = f"mergeqa usage error: {call.excinfo.value}"
    if call.when == "call":
        from mergeqa.decision.verdict import ITEM_VERDICTS

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
            from mergeqa.decision.verdict import RUN_VERDICTS, Verdict

            self.config.stash.setdefault(RUN_VERDICTS, []).extend(Verdict.from_dict(d) for d in dicts)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    """comparison.md, divergence.md and summary.md from the run's verdicts, and one line per merge."""
    if hasattr(config, "workerinput"):
        return
    from mergeqa.report.markdown import write_run_reports

    write_run_reports(config, terminalreporter)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """xdist controller: collect the run metadata each worker saw (the models it loaded)."""
    meta = getattr(node, "workeroutput", {}).get("mergeqa_metadata", {})
    node.config.stash.setdefault(worker_metadata_key, {}).update(meta)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Run metadata once per run, as testsuite properties (before junitxml writes its file)."""
    from mergeqa.report.markdown import report_dir, run_metadata

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
    from mergeqa.decision.verdict import RUN_VERDICTS

    opt = config.option
    statuses = [] if opt.collectonly else finish(session, config.stash.get(RUN_VERDICTS, []))
    # report.html and the GitHub step summary (issue 15)
    if not opt.collectonly and (statuses or opt.model or opt.merge_config or opt.gate
                                or config.stash.get(RUN_VERDICTS, None)):
        from mergeqa.report.html import write_deployment_reports

        write_deployment_reports(config, config.stash.get(RUN_VERDICTS, []), report_dir(config))
