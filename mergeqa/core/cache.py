"""Where mergeqa keeps what it builds (the tiny family, merges, evaluation results), and how.

Every entry is content-addressed, built into a temporary sibling and moved into place with one
atomic rename under a file lock, so a killed run leaves no half entry and xdist workers that ask
for the same entry build it once. Not for user data: nothing here is ever written in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

ENV_VAR = "MERGEQA_CACHE_DIR"


def default_cache_dir() -> Path:
    """$MERGEQA_CACHE_DIR, else $XDG_CACHE_HOME/mergeqa, else ~/.cache/mergeqa."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mergeqa"


def digest(*parts: object) -> str:
    """A stable hex digest of JSON-serialisable parts (dict keys sorted)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def hash_files(paths: Iterable[Path], chunk: int = 1 << 22) -> str:
    """sha256 over the names and bytes of `paths`, in sorted name order."""
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def build_once(target: Path, build: Callable[[Path], None], *, on_build: Callable[[], None] | None = None) -> Path:
    """Return `target`, building it with `build(tmpdir)` first if it does not exist yet.

    The build writes into a temporary directory next to `target`, which is renamed into place only
    when `build` returns; a lock file serialises concurrent builders (xdist workers, two runs).
    """
    from filelock import FileLock

    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():  # another worker finished it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache entry is readable like any model dir
        try:
            build(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if on_build:
            on_build()
    return target


def log_event(cache_dir: Path, event: str, **fields: object) -> None:
    """Append one JSON line to <cache>/events.jsonl (what was built or evaluated, by which pid)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"event": event, "pid": os.getpid(), **fields}, default=str)
    with open(cache_dir / "events.jsonl", "a") as f:
        f.write(line + "\n")


def write_json(path: Path, data: object) -> None:
    """Write one JSON cache file atomically: a temporary file in the same directory, renamed over
    the target, so a reader sees the old entry or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
