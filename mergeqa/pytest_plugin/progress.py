"""Where a run's progress lines (mergeqa.core.progress) go under pytest: through the terminal
reporter, as "mergeqa: ..." lines between the test dots, shown by default on a terminal and in
CI logs alike; `-q` silences them (pytest's "less output").

A line is written with output capturing suspended: a line written while a fixture or a test runs
would otherwise land in that test's captured output, shown only if it fails. Under xdist a
worker has no terminal (its stdout is xdist's channel), so it writes "[gw0] mergeqa: ..." to its
stderr, which xdist leaves connected to the controller's terminal.
"""

from __future__ import annotations

import contextlib
import sys

import pytest

from mergeqa.core import progress


class ProgressLines:
    """The sink `install`s in pytest_configure; removed again in pytest_unconfigure."""

    def __init__(self, config: pytest.Config):
        self.config = config
        worker = getattr(config, "workerinput", None)
        self.prefix = f"[{worker['workerid']}] mergeqa: " if worker else "mergeqa: "
        self.uninstall = progress.install(self)

    def __call__(self, message: str) -> None:
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
            if reporter is None or hasattr(self.config, "workerinput"):
                sys.stderr.write(self.prefix + message + "\n")
                sys.stderr.flush()
            else:
                reporter.write_line(self.prefix + message)
                reporter.flush()  # a CI log is a pipe: unflushed, the line would come minutes late

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.uninstall()


def install_progress(config: pytest.Config) -> None:
    """Progress lines for this run, unless `-q` asked for less output."""
    if config.get_verbosity() >= 0:
        config.pluginmanager.register(ProgressLines(config), "mergeqa-progress")

