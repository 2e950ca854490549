"""The one exception type for misuse: bad paths, bad configs, bad thresholds.

A `MergeQAUsageError` is the user's to fix and its message says how; the plugin turns it into
pytest's usage error (exit code 4, one line, no traceback). A failed quality check is a test
failure with figures, and a bug is any other exception: never mix the three.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from pathlib import Path


class MergeQAUsageError(Exception):
    """Raised for input the user must fix; the message names the file and the fix."""


class MergeConfigWarning(UserWarning):
    """A merge config mistake mergekit tolerates (`pattern:` for `filter:`, a key it ignores): the
    plugin issues it at configure time; `-W error::mergeqa.core.errors.MergeConfigWarning` makes
    it an error."""


def did_you_mean(name: str, choices: Iterable[str], *, list_at_most: int = 40) -> str:
    """' Did you mean 'x'? Available: a, b, c' for an unknown name, as lm-eval's registry does
    (the list only when it is short enough to read)."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return hint + (f" Available: {', '.join(choices)}" if len(choices) <= list_at_most else "")


def read_jsonl_objects(path: str | Path, *, what: str, fix: str, example: str) -> list[tuple[str, dict]]:
    """(`file:line`, object) for each non-blank line of a JSONL file of `what`; an unreadable file,
    a line that is not a JSON object, or no lines at all is one usage error naming the file (and
    line) with `fix` or `example`. Field checks are the caller's, with the `file:line` given."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise MergeQAUsageError(f"{path}: cannot read the {what} ({exc.strerror}); {fix}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise MergeQAUsageError(f"{where}: not JSON ({exc}); one object per line, e.g. {example}") from None
        if not isinstance(row, dict):
            raise MergeQAUsageError(f"{where}: expected a JSON object, e.g. {example}")
        out.append((where, row))
    if not out:
        raise MergeQAUsageError(f"{path}: no {what}; write one JSON object per line, e.g. {example}")
    return out
