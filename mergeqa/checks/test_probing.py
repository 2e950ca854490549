"""Probing competence: per phenomenon, the merge's best-layer and last-layer linear-probe accuracy
must be >= min(parents) - [probing] tolerance, decided with paired statistics over test items.

What is measured and which threshold applies; mergeqa.probing does the work (representations and
probes cached). Ids: test_probing[<merge>-<phenomenon>]. One PNG per phenomenon is written next
to the junit file (else ./mergeqa-report/): probing-<phenomenon>.png.
"""

from __future__ import annotations

import pytest


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "probing_phenomenon" in metafunc.fixturenames:
        from mergeqa.core.errors import MergeQAUsageError
        from mergeqa.core.state import thresholds_key
        from mergeqa.probing.engine import datasets_from_thresholds

        try:
            names = [d.name for d in datasets_from_thresholds(metafunc.config.stash[thresholds_key])]
        except MergeQAUsageError as exc:  # a bad [probing] entry: one line, at collection
            raise pytest.UsageError(str(exc)) from None
        metafunc.parametrize("probing_phenomenon", names, ids=names, scope="session")


@pytest.fixture(scope="session")
def probing_engine(mergeqa_session, thresholds):
    """The ProbingEngine of this run: probe results per (model, phenomenon), cached."""
    from mergeqa.probing.engine import ProbingEngine

    return ProbingEngine.from_thresholds(thresholds, cache_dir=mergeqa_session.cache_dir,
                                         device=mergeqa_session.device, dtype=mergeqa_session.dtype)


@pytest.fixture(scope="session")
def probing_plots(pytestconfig, mergeqa_session, probing_engine):
    """plot(name) -> Path: the phenomenon's PNG over every model of the run, written once per process."""
    from mergeqa.report.markdown import report_dir

    written: dict = {}

    def plot(name: str):
        if name not in written:
            from mergeqa.probing.plots import plot_phenomenon

            base = mergeqa_session.base()
            refs = ([(base, "base")] if base else []) + [(p, "parent") for p in mergeqa_session.parents()] \
                + [(m, "merged") for m in mergeqa_session.all_merged()]
            probing_engine.prepare([ref for ref, _ in refs])  # xdist workers share the models out
            curves = [(ref.name, role, probing_engine.result(ref, name)) for ref, role in refs]
            path = report_dir(pytestconfig) / f"probing-{name}.png"
            written[name] = plot_phenomenon(probing_engine.datasets[name], curves, path)
        return written[name]

    return plot


def test_probing(merged_model, parent_models, probing_phenomenon, probing_engine, probing_plots,
                 thresholds, request):
    from mergeqa.decision.verdict import decide
    from mergeqa.probing.engine import compare_with_parents

    name = probing_phenomenon
    merged = probing_engine.result(merged_model, name)
    parents = {p.name: probing_engine.result(p, name) for p in parent_models}
    plot = probing_plots(name)
    verdicts = compare_with_parents(
        merged, parents, tolerance=thresholds.get("probing", "tolerance"),
        alpha=thresholds.get("statistics", "alpha"), power=thresholds.get("statistics", "power"),
        correction=thresholds.get("statistics", "correction"), merge=merged_model.name,
        dataset=probing_engine.datasets[name], plot=plot)
    for v in verdicts:
        v.figures["plot"] = str(plot)
    decide(request, *verdicts)
