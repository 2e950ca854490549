"""The one exception type for misuse: bad paths, bad configs, bad thresholds.

A `MergeQAUsageError` is the user's to fix and its message says how; the plugin turns it into
pytest's usage error (exit code 4, one line, no traceback). A failed quality check is a test
failure with figures, and a bug is any other exception: never mix the three.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MergeQAUsageError(Exception):
    """Raised for input the user must fix; the message names the file and the fix."""


def did_you_mean(name: str, choices: Iterable[str], *, list_at_most: int = 40) -> str:
    """' Did you mean 'x'? Available: a, b, c' for an unknown name, as lm-eval's registry does
    (the list only when it is short enough to read)."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return hint + (f" Available: {', '.join(choices)}" if len(choices) <= list_at_most else "")
