"""Progress lines for the steps of a run that take more than a few seconds: building the tiny
family, a merge, an evaluation, generating answers, a judge request that stalls. Not a logger:
one short line per step, for the person watching the run.

Code anywhere in mergeqa calls `say("merge ties built in 3.2 s")`; the program running it decides
where the lines go with `install`: the pytest plugin writes them through pytest's terminal
reporter (mergeqa.pytest_plugin.progress), the `mergeqa` command to stderr, each line prefixed
"mergeqa: ". With nothing installed `say` prints nothing, so mergeqa used as a library is quiet.

    uninstall = install(lambda line: print(f"mergeqa: {line}", file=sys.stderr))
    say("family: building it")      # -> mergeqa: family: building it
"""

from __future__ import annotations

import time
from collections.abc import Callable

Sink = Callable[[str], None]
_sinks: list[Sink] = []


def install(sink: Sink) -> Callable[[], None]:
    """Send every line to `sink` (the newest installed sink wins) until the returned function is
    called."""
    _sinks.append(sink)

    def uninstall() -> None:
        if sink in _sinks:
            _sinks.remove(sink)

    return uninstall


def say(message: str) -> None:
    """One progress line (no "mergeqa: " prefix: the sink adds it); nothing without a sink."""
    if _sinks:
        _sinks[-1](message)


def duration(seconds: float) -> str:
    """'0.4 s', '41 s', '3 min 5 s': as precise as a person reading it needs."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


class Stages:
    """A long step reported in numbered stages, as the `log=` callback of a function that names
    its stages as it goes (mergeqa.family.build_family): a message starting with "step " is
    progress within the current stage (the trainer's "step 880/4400 loss 2.310"), any other
    message begins the next stage. Each line carries the stage's count and the time since the
    step began:

        family: training base on grammar ... (1/3), 6.1 s
        family: stage 1/3, step 880/4400 loss 2.310, 41 s
    """

    def __init__(self, what: str, total: int, *, report: Sink | None = None):
        self.what, self.total, self.report = what, total, report or say
        self.started = time.perf_counter()
        self.stage = 0

    def elapsed(self) -> str:
        return duration(time.perf_counter() - self.started)

    def __call__(self, message: str) -> None:
        if message.startswith("step ") and self.stage:
            self.report(f"{self.what}: stage {self.stage}/{self.total}, {message}, {self.elapsed()}")
            return
        self.stage += 1
        self.report(f"{self.what}: {message} ({self.stage}/{self.total}), {self.elapsed()}")

    def done(self, message: str) -> None:
        """The closing line: `message` and the whole step's time."""
        self.report(f"{self.what}: {message} in {self.elapsed()}")
