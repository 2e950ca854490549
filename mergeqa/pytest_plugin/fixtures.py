"""The gate's fixtures: the models under test, their references, thresholds and evaluations.
Each docstring shows a use in a test of your own."""

from __future__ import annotations

import pytest

from mergeqa.core.progress import say  # lines on the terminal (mergeqa.pytest_plugin.progress)
from mergeqa.core.state import BUNDLED_TASKS, session_key, thresholds_key


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
def parent_models(mergeqa_session, merged_model):
    """The parents (list of ModelRef) this merge is compared with (each merge its own: those its
    merge config merges; a test using it runs once per merge, like merged_model)::

        def test_vocab(merged_model, parent_models):
            assert all(p.config["vocab_size"] == merged_model.config["vocab_size"] for p in parent_models)
    """
    return mergeqa_session.parents(merged_model.name)


@pytest.fixture(scope="session")
def base_model(mergeqa_session, merged_model):
    """This merge's base model (ModelRef), or None when there is none to compare with::

        def test_base(base_model):
            if base_model is None: pytest.skip("no --base given")
    """
    return mergeqa_session.base(merged_model.name)


@pytest.fixture(scope="session")
def thresholds(pytestconfig):
    """The validated thresholds.toml::

        def test_retention(thresholds):
            floor = thresholds.get("retention", "min_retention")
    """
    return pytestconfig.stash[thresholds_key]


def _eval_settings(config: pytest.Config):
    from mergeqa.evaluate.engine import EvalSettings

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
    from mergeqa.evaluate.executor import evaluate_on, make_executor, prefetch

    suite = thresholds.suite(thresholds.get("retention", "suite"))
    memo: dict = {}
    executor = make_executor(pytestconfig.option.executor, device=eval_settings.device,
                             dtype=eval_settings.dtype)

    def run(ref, tasks=None):
        if tasks is not None:  # a part of the suite (the sequential gate's fixed-n tasks), alone
            key = (ref.path, tuple(tasks))
            if key not in memo:
                memo[key] = evaluate_on(executor, ref, list(tasks), eval_settings,
                                        num_fewshot=suite.get("num_fewshot"), progress=say)
            return memo[key]
        if executor.distributed and not memo:  # every merge and model at once, as parallel jobs
            memo.update(prefetch(pytestconfig.stash[session_key], suite["tasks"], eval_settings,
                                 executor, num_fewshot=suite.get("num_fewshot"), progress=say))
        if ref.path not in memo:
            memo[ref.path] = evaluate_on(executor, ref, suite["tasks"], eval_settings,
                                         num_fewshot=suite.get("num_fewshot"), progress=say)
        return memo[ref.path]

    yield run
    if executor.distributed:
        executor.shutdown()


@pytest.fixture(scope="session")
def retention_verdicts(merged_model, parent_models, base_model, evaluations, eval_settings, thresholds):
    """{(task, kind): Verdict} for one merge: retention and regression against the parents."""
    from mergeqa.retention.assess import assess

    suite = thresholds.suite(thresholds.get("retention", "suite"))
    base_name = base_model.name if base_model is not None else "base"
    if thresholds.get("statistics", "sequential"):  # batches scored here; full tasks via the executor
        from mergeqa.retention.early_stop import evaluate_early

        early = evaluate_early(merged_model, list(parent_models), base_model, suite["tasks"], thresholds,
                               eval_settings, num_fewshot=suite.get("num_fewshot"), full=evaluations, progress=say)
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

