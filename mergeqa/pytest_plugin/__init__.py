"""The pytest plugin (entry point `mergeqa`): options, fixtures and hooks. Nothing is measured here.

    pytest --model ./merged --parents ./a ./b --base ./base      # gate a merged checkpoint
    pytest --merge-config ties.yaml                              # build with mergekit, then gate
    pytest --gate                                                # gate the embedded tiny family

With --model, --merge-config or --gate and no test paths, the built-in checks (mergeqa.checks)
are collected; with explicit paths, those tests run and use these fixtures.

The only package that knows pytest's internals beyond `decide`; nothing in mergeqa imports it.
pytest registers this module, so the hooks and fixtures are gathered here from their modules.
"""

from mergeqa.pytest_plugin.fixtures import (
                                            base_model,
                                            eval_settings,
                                            evaluations,
                                            merged_model,
                                            mergeqa_session,
                                            parent_models,
                                            record_figure,
                                            retention_verdicts,
                                            thresholds,
)
from mergeqa.pytest_plugin.hooks import (
                                            pytest_configure,
                                            pytest_generate_tests,
                                            pytest_runtest_makereport,
                                            pytest_sessionfinish,
                                            pytest_terminal_summary,
                                            pytest_testnodedown,
)
from mergeqa.pytest_plugin.options import pytest_addoption

__all__ = ["base_model", "eval_settings", "evaluations", "merged_model", "mergeqa_session", "parent_models",
           "pytest_addoption", "pytest_configure", "pytest_generate_tests", "pytest_runtest_makereport",
           "pytest_sessionfinish", "pytest_terminal_summary", "pytest_testnodedown", "record_figure",
           "retention_verdicts", "thresholds"]
