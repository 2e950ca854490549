"""Run-wide state every layer may read: the pytest stash keys and the package's own paths.

A leaf module: it imports nothing of mergeqa, so anything may import it (the plugin writes these
keys, the checks, `decide` and the reports read them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent
CHECKS_DIR = PACKAGE_DIR / "checks"  # the built-in checks, collected by `pytest --model ...`
BUNDLED_TASKS = PACKAGE_DIR / "data" / "tasks"  # lm-eval task YAML shipped with mergeqa

session_key = pytest.StashKey["GateSession"]()  # the run's models (mergeqa.models.session)
thresholds_key = pytest.StashKey["Thresholds"]()  # the validated thresholds.toml
worker_metadata_key = pytest.StashKey[dict]()  # xdist controller: the run metadata each worker saw
ITEM_VERDICTS = pytest.StashKey[list]()  # the verdicts one test decided (on its item)
RUN_VERDICTS = pytest.StashKey[list]()  # every verdict of the run (on the controller's config)
run_record_key = pytest.StashKey["RunRecord"]()  # controller: every collected test and how it ended
run_status_key = pytest.StashKey[list]()  # controller: each merge's MergeStatus, once the run has ended
