"""A cgroup v2 per sandbox, where the host delegates one: memory.max that counts what rlimits miss (/tmp's
pages, shared memory, kernel memory, charged page cache), pids.max, and memory.events for `memory_limit`.

For: saying whether this process can give each sandbox a cgroup of its own, and why not
(`cgroup_support`, `probe_cgroups`), and making, filling, reading and removing one (`SandboxCgroup`).
Not for starting the sandbox or deciding its status: `mergeqa.humaneval.sandbox` does both.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

#: A cgroup v2 directory to make the sandboxes' cgroups in, instead of this process's own cgroup
#: (which cannot hand memory and pids to children while this process is in it: docs/sandbox.md).
CGROUP_ENV = "MERGEQA_CGROUP"
CONTROLLERS = ("memory", "pids")
PIDS_MAX = 16  # bwrap and the interpreter's threads: the sandbox cannot make processes (seccomp)
NAME_PREFIX = "mergeqa-sandbox-"  # + caller pid + "-" + a counter
REMOVE_WAIT_S = 2.0  # how long `remove` waits for the cgroup to empty, once it has killed what is left in it
_names = itertools.count()


class CgroupFiles:
    """How this module touches cgroupfs: one read or one write() per file, mkdir and rmdir, nothing else (the
    kernel parses each write() on its own). The tests hand in a temporary tree that behaves like the kernel's."""

    def read(self, path: str) -> str:
        with open(path) as file:
            return file.read()

    def write(self, path: str, text: str) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def writable(self, path: str) -> bool:
        return os.access(path, os.W_OK)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)


KERNEL = CgroupFiles()


@dataclass(frozen=True)
class CgroupSupport:
    """Where each sandbox gets a cgroup v2 of its own: under `parent` (a directory whose cgroup.subtree_control
    has memory and pids), or nowhere, and `reason` says why (the fallback of docs/sandbox.md applies)."""

    parent: str | None
    reason: str
    files: CgroupFiles = field(default=KERNEL, compare=False, repr=False)

    @property
    def available(self) -> bool:
        return self.parent is not None

    def describe(self) -> str:
        """'cgroup v2 limits' or 'no cgroup v2 limits: <reason>', for `code_execution()`."""
        return "cgroup v2 limits" if self.available else f"no cgroup v2 limits: {self.reason}"


NOT_ASKED = CgroupSupport(None, "not probed (unsandboxed)")


@functools.cache
def cgroup_support() -> CgroupSupport:
    """`probe_cgroups` for this process (once per process: ~20 ms where cgroup v2 may apply, else ~0)."""
    def text(path: str) -> str:
        try:
            with open(path) as file:
                return file.read()
        except OSError:
            return ""

    return probe_cgroups(text("/proc/self/mountinfo"), text("/proc/self/cgroup"), os.environ.get(CGROUP_ENV) or None)


def probe_cgroups(mountinfo: str, membership: str, chosen: str | None = None, files: CgroupFiles = KERNEL
                  ) -> CgroupSupport:
    """Whether sandboxes can get cgroups under `chosen` (MERGEQA_CGROUP) or else this process's own cgroup, given
    the texts of /proc/self/mountinfo and /proc/self/cgroup: cgroup v2 mounted read-write, the directory writable,
    memory and pids in its cgroup.subtree_control (enabled here if they are only available: that fails, EBUSY,
    in a cgroup holding processes, which is why `chosen` exists; this process is never moved), and a trial
    cgroup made, given a process, emptied and removed. Stale cgroups of dead callers are removed on the way."""
    mounts = [m for m in _mounts(mountinfo) if m[0] == "cgroup2"]
    if not mounts:
        return CgroupSupport(None, "cgroup v2 is not mounted (cgroup v1 only)")
    own = next((line[3:].strip() for line in membership.splitlines() if line.startswith("0::")), None)
    where = _directory(mounts, own, chosen)
    if isinstance(where, str):
        return CgroupSupport(None, where)
    parent, options = where
    if "ro" in options:
        return CgroupSupport(None, f"cgroup v2 is mounted read-only at {parent} (a container's usual view)")
    available = _words(files, os.path.join(parent, "cgroup.controllers"))
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        v1 = {o for fstype, _, _, _, superoptions in _mounts(mountinfo) if fstype == "cgroup" for o in superoptions}
        held = "cgroup v1 holds them" if set(missing) <= v1 else "its parent cgroup does not delegate them"
        return CgroupSupport(None, f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not available to "
                                   f"{parent} ({held}; its cgroup.controllers: {' '.join(available) or 'none'})")
    if not (files.writable(parent) and files.writable(os.path.join(parent, "cgroup.procs"))):
        return CgroupSupport(None, f"{parent} is not writable by uid {os.geteuid()} (no delegated cgroup)")
    enable = [c for c in CONTROLLERS if c not in _words(files, os.path.join(parent, "cgroup.subtree_control"))]
    if enable:
        try:
            files.write(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in enable))
        except OSError as exc:
            why = (f"{parent} holds processes, this one among them, so it cannot hand {', '.join(enable)} to child "
                   f"cgroups (cgroup v2's no-internal-processes rule); set {CGROUP_ENV} to a cgroup that can, with "
                   "this process in a leaf below it (docs/sandbox.md)") if exc.errno == errno.EBUSY else (
                   f"enabling {', '.join(enable)} in {parent}/cgroup.subtree_control failed: {exc.strerror}")
            return CgroupSupport(None, why)
    try:
        _trial(parent, files)
    except OSError as exc:
        return CgroupSupport(None, f"a trial cgroup under {parent} failed: {exc}")
    _remove_stale(parent, files)
    return CgroupSupport(parent, "", files)


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str], set[str]]]:
    """(fstype, mount root, mount point, mount options, superblock options) for each line of a mountinfo text."""
    found = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if sep and len(fields) >= 6 and len(after) >= 3:
            unescape = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)  # noqa: E731 (\040: " ")
            found.append((after[0], unescape(fields[3]), unescape(fields[4]), set(fields[5].split(",")),
                          set(after[2].split(","))))
    return found


def _directory(mounts: list, own: str | None, chosen: str | None) -> tuple[str, set[str]] | str:
    """(the directory to make cgroups in, its mount's options), or why there is none."""
    if chosen is not None:
        path = os.path.normpath(chosen)
        mount = next((m for m in mounts if path == m[2] or path.startswith(m[2].rstrip("/") + "/")), None)
        if not os.path.isabs(chosen) or mount is None:
            where = ", ".join(m[2] for m in mounts)
            return f"{CGROUP_ENV}={chosen} is not a directory under a cgroup v2 mount ({where})"
        return path, mount[3] | mount[4]
    if own is None:
        return "this process is in no cgroup v2 hierarchy (/proc/self/cgroup has no 0:: line)"
    for _, root, mountpoint, options, superoptions in mounts:
        if root == "/" or own == root or own.startswith(root.rstrip("/") + "/"):
            below = own if root == "/" else own[len(root):]
            return os.path.normpath(mountpoint + "/" + below.lstrip("/")), options | superoptions
    return f"this process's cgroup {own} is outside every cgroup v2 mount's view"


def _words(files: CgroupFiles, path: str) -> list[str]:
    try:
        return files.read(path).split()
    except OSError:
        return []


def _trial(parent: str, files: CgroupFiles) -> None:
    """Make a cgroup as a sandbox gets it, move a waiting child process into it, end that process, remove it."""
    trial = SandboxCgroup(parent, 64 << 20, files)
    child = None
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", "import sys; sys.stdin.buffer.read(1)"],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        trial.add(child.pid)
    finally:
        if child is not None:
            child.stdin.close()
            child.wait()
        trial.remove()


def _remove_stale(parent: str, files: CgroupFiles) -> None:
    """Remove the sandbox cgroups of callers that are gone (killed before they could): empty, since each sandbox
    dies with its caller; one that is not empty yet is left for a later probe."""
    for name in files.listdir(parent):
        pid = name[len(NAME_PREFIX):].split("-")[0] if name.startswith(NAME_PREFIX) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            try:
                files.rmdir(os.path.join(parent, name))
            except OSError:
                pass


class SandboxCgroup:
    """One sandbox's cgroup, made under `parent` with memory.max `memory_bytes`, memory.swap.max 0 (where swap
    is accounted) and pids.max PIDS_MAX; `add` puts a process in, `memory_events` reads what the kernel counted,
    `remove` empties and removes it (idempotent). No io limits: see docs/sandbox.md."""

    def __init__(self, parent: str, memory_bytes: int, files: CgroupFiles = KERNEL):
        self.files, self.removed = files, False
        self.path = os.path.join(parent, f"{NAME_PREFIX}{os.getpid()}-{next(_names)}")
        files.mkdir(self.path)
        try:
            self._write("memory.max", str(memory_bytes))
            if files.exists(os.path.join(self.path, "memory.swap.max")):
                self._write("memory.swap.max", "0")
            self._write("pids.max", str(PIDS_MAX))
        except BaseException:
            self.remove()
            raise

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into this cgroup: what it allocates from now on is charged here."""
        self._write("cgroup.procs", str(pid))

    def memory_events(self) -> dict[str, int]:
        """memory.events as numbers ("oom", "oom_kill", "max", ...); {} if it cannot be read."""
        try:
            pairs = (line.split() for line in self.files.read(os.path.join(self.path, "memory.events")).splitlines())
            return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}
        except OSError:
            return {}

    def remove(self) -> None:
        """rmdir it once no process is left in it: a process still there (the caller stops and reaps the sandbox
        first, so none should be) is killed through cgroup.kill, or by pid where the kernel has no cgroup.kill;
        OSError if it is still busy after REMOVE_WAIT_S."""
        deadline, killed = time.monotonic() + REMOVE_WAIT_S, False
        while not self.removed:
            try:
                self.files.rmdir(self.path)
                self.removed = True
            except FileNotFoundError:
                self.removed = True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                if not killed:
                    self._kill_all()
                    killed = True
                time.sleep(0.01)

    def _kill_all(self) -> None:
        if self.files.exists(os.path.join(self.path, "cgroup.kill")):
            self._write("cgroup.kill", "1")
            return
        for pid in _words(self.files, os.path.join(self.path, "cgroup.procs")):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def _write(self, name: str, text: str) -> None:
        self.files.write(os.path.join(self.path, name), text)
