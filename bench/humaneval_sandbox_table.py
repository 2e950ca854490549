"""Print the HumanEval sandbox tables (markdown): the 164 canonical solutions and 164 `pass` stubs,
each attack class -> outcome and the evidence that nothing escaped, the venv-under-/tmp case, and
the refusal line / unsandboxed opt-in on a host without bubblewrap.

    .venv/bin/python bench/humaneval_sandbox_table.py [--timeout 2] [--workers 2]

~70 s on 2 cores (328 checks, 35 attacks, 8 cooperating samples and their control, a venv and four fresh
interpreters). Each attack row's evidence is measured outside the sandbox: files and connections that reached
the host, processes left in its pid namespace, the caller's descriptors and peak RSS, a secret (a 0600 file, an
environment variable) in what came back, and the host's MemAvailable, Shmem, Slab and free disk at their worst
while it ran.
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mergeqa.humaneval import problems as he
from mergeqa.humaneval import sandbox as sb

REPO = Path(__file__).resolve().parents[1]
SECRET_ENV = "MERGEQA_BENCH_SECRET"  # a secret in the caller's environment: must never come back
SAMPLES = 10  # per problem, for the pass@k rows


def bulk(label: str, completion_of, expected: str, workers: int) -> list:
    problems = he.load_problems()
    start = time.perf_counter()
    results = he.check_completions([(p, completion_of(p)) for p in problems], workers=workers)
    total = time.perf_counter() - start
    hits = sum(r.status == expected for r in results)
    others = sorted({f"{p.task_id} {r.status}: {r.detail[:60]}" for p, r in zip(problems, results)
                     if r.status != expected})
    walls = [r.wall_s * 1000 for r in results]
    print(f"| {label} | {hits}/{len(results)} {expected}{''.join(f'; {o}' for o in others)} | {total:.1f} s "
          f"({workers} at a time) | {total / len(results) * 1000:.0f} ms | {statistics.median(walls):.0f} ms "
          f"| {sum(r.calls for r in results)} |")
    return results


def pass_at_k_rows(canonical: list, stubs: list) -> None:
    """Per problem, SAMPLES samples of which c (0..SAMPLES, cycling) are the canonical solution:
    pass@k from the checks' verdicts against pass@k from the known c."""
    known, judged = [], []
    for i, (good, bad) in enumerate(zip(canonical, stubs)):
        c = i % (SAMPLES + 1)
        known.append((SAMPLES, c))
        judged.append((SAMPLES, c * good.passed + (SAMPLES - c) * bad.passed))
    for k in (1, 10):
        ours, truth = he.mean_pass_at_k(judged, k), he.mean_pass_at_k(known, k)
        print(f"| pass@{k} (164 problems x {SAMPLES} samples, c = i mod {SAMPLES + 1}) | {ours:.6f} "
              f"| {truth:.6f} (known c) | {'unchanged' if ours == truth else 'DIFFERS'} |")


class HostWatch:
    """Host figures sampled every 5 ms from outside while a check runs: the lowest MemAvailable and free disk
    (/ and /tmp), the highest Shmem and Slab, as changes from before it started (MB)."""

    def __init__(self):
        self.before = self.sample()
        self.worst = dict(self.before)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def sample() -> dict[str, float]:
        info = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in open("/proc/meminfo")}
        disk = {f"disk {path}": os.statvfs(path).f_bavail * os.statvfs(path).f_frsize / 2**20 for path in ("/", "/tmp")}
        return {"MemAvailable": info["MemAvailable"], "Shmem": info["Shmem"], "Slab": info["Slab"], **disk}

    def _run(self) -> None:
        while not self._done.wait(0.005):
            for key, value in self.sample().items():
                worse = min if key in ("MemAvailable", "disk /", "disk /tmp") else max
                self.worst[key] = worse(self.worst[key], value)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()

    def summary(self) -> str:
        return ", ".join(f"{key} {self.worst[key] - self.before[key]:+.0f}" for key in self.before)


def attack_row(kind: str, timeout_s: float) -> None:
    secret = Path.home() / f".mergeqa-secret-{secrets.token_hex(6)}"
    secret.write_text(f"secret-{secrets.token_hex(16)}")
    secret.chmod(0o600)
    with tempfile.TemporaryDirectory(prefix="mergeqa-escape-") as escape, \
            socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        completion = he.attack_completions(escape, listener.getsockname()[1], str(secret))[kind]
        fds, peak_kb = len(os.listdir("/proc/self/fd")), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            with HostWatch() as host:
                result, raised = he.check_completion(he.load_problems()[0], completion, timeout_s, 256), "none"
        except Exception as exc:  # noqa: BLE001 (the table reports it)
            result, raised = None, f"{type(exc).__name__}: {exc}"
        connections = 0
        try:
            while listener.accept():
                connections += 1
        except BlockingIOError:
            pass
        files = len(os.listdir(escape))
        fds = len(os.listdir("/proc/self/fd")) - fds
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kb) / 1024
    leaked = result is not None and any(s in result.detail + result.output
                                        for s in (secret.read_text(), os.environ[SECRET_ENV]))
    secret.unlink()
    if result is None:
        print(f"| {kind} | - | - | exception in the caller: {raised} |")
        return
    left = len(sb.sandbox_processes(result.pid_namespace))
    detail = result.detail[:90].replace("|", "/").replace("\n", " ")
    print(f"| {kind} | `{result.status}` ({result.wall_s:.2f} s): {detail} | {files} files outside, "
          f"{connections} connections, {left} processes left, secret in output: {'YES' if leaked else 'no'}, "
          f"output {len(result.output)} B, caller's descriptors {fds:+d}, caller's peak RSS +{grown_mb:.0f} MB, "
          f"exception in caller: {raised}; host at worst (MB): {host.summary()} |")


def cooperating_row(samples: int, timeout_s: float) -> None:
    """`samples` samples of one input-blind completion that tries to learn from earlier samples whether its guesses
    were right (`he.cooperating_completion`: from whether the check called again), one at a time, against the same
    samples unsandboxed sharing the host's /tmp (files only). The check runs to its end whatever the answers, so
    neither has anything to learn (before that, the control forged 5 of 8 passes)."""
    problem, token = he.load_problems()[0], secrets.token_hex(6)
    fds, peak_kb = len(os.listdir("/proc/self/fd")), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with HostWatch() as host:
        results = he.check_completions([(problem, he.cooperating_completion(token))] * samples, timeout_s, 256, 1)
    fds = len(os.listdir("/proc/self/fd")) - fds
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_kb) / 1024
    left = sum(len(sb.sandbox_processes(r.pid_namespace)) for r in results)
    control_code = he.cooperating_completion(token, page_cache=False)
    control = [he._run_check(problem, control_code, timeout_s, 256, sb.Host(None, "", "control")) for _ in range(samples)]
    for directory in ("/tmp", "/dev/shm", "/var/tmp"):
        Path(directory, f".mergeqa-coop-{token}").unlink(missing_ok=True)
    details = sorted({r.detail for r in results})
    print(f"| cooperating samples ({samples} of HumanEval/0, one at a time, trying to learn from the calls they get, "
          f"through files and page-cache bits) | {sum(r.passed for r in results)} of {samples} passed; each failed "
          f"with one of {details} | unsandboxed "
          f"control sharing /tmp: {sum(r.passed for r in control)} of {samples} passed (from sample "
          f"{next((i + 1 for i, r in enumerate(control) if r.passed), '-')}); {left} processes left, caller's "
          f"descriptors {fds:+d}, caller's peak RSS +{grown_mb:.0f} MB; host at worst (MB): {host.summary()} |")


def fresh_python(python: str, code: str, env: dict[str, str]) -> list[str]:
    site = sb.sysconfig.get_paths()["purelib"]
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}:{site}", **env}
    done = subprocess.run([python, "-c", code], env=full_env, capture_output=True, text=True, timeout=300)
    return done.stdout.splitlines() + done.stderr.strip().splitlines()[-1:]


CHECK = (
    "import socket\nfrom mergeqa.humaneval import problems as he, sandbox as sb\n"
    "print('code_execution():', sb.code_execution())\n"
    "p = he.load_problems()[0]\n"
    "with socket.create_server(('127.0.0.1', 0)) as server:\n"
    "    server.setblocking(False)\n"
    "    attacks = he.attack_completions('/tmp/none', server.getsockname()[1], '/none')\n"
    "    attack = attacks['socket from a sub-interpreter']\n"
    "    for label, completion in (('canonical', p.canonical_solution), ('network attack', attack)):\n"
    "        r = he.check_completion(p, completion)\n"
    "        print(f'{label}: {r.status} ({r.isolation})')\n"
    "    try:\n        server.accept()\n        print('CONNECTED')\n"
    "    except BlockingIOError:\n        print('nothing connected')\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=2.0, metavar="S", help="attack runs' limit (default: 2)")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="parallel checks of the 164 (default: 2)")
    args = parser.parse_args()
    print(f"code execution on this host: {sb.code_execution()}; seccomp filter: "
          f"{len(sb.seccomp_program()) // 8} BPF instructions ({sb.platform.machine()})\n")
    print("| completions | outcome | wall, all | per completion | median wall of one | calls to the candidate (the same for any answers) |")
    print("|---|---|---|---|---|---|")
    canonical = bulk("canonical solutions (164)", lambda p: p.canonical_solution, "passed", args.workers)
    stubs = bulk("`pass` stubs (164)", lambda p: "    pass\n", "failed", args.workers)
    print("\n| pass@k | from the checks | expected | |\n|---|---|---|---|")
    pass_at_k_rows(canonical, stubs)
    print(f"\nAttacks (completions of HumanEval/0 riding on a wrong answer; {args.timeout:g} s, 256 MB each):\n")
    print("| attack class | outcome (wall): detail | evidence |\n|---|---|---|")
    os.environ[SECRET_ENV] = f"env-secret-{secrets.token_hex(16)}"
    for kind in he.attack_completions("/x", 1, "/y"):
        attack_row(kind, args.timeout)
    cooperating_row(8, args.timeout)
    with tempfile.TemporaryDirectory(prefix="mergeqa-venv-") as tmp:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", f"{tmp}/venv"], check=True)
        print(f"\nFrom a venv under /tmp ({tmp}/venv/bin/python):\n")
        for line in fresh_python(f"{tmp}/venv/bin/python", CHECK, {}):
            print(f"    {line}")
    print("\nOn a host without bubblewrap (PATH=/nonexistent):\n")
    for line in fresh_python(sys.executable, CHECK, {"PATH": "/nonexistent"}):
        print(f"    {line}")
    print(f"\n... and with the opt-in ({sb.UNSAFE_EXEC_ENV}=1, what `pytest --unsafe-exec` sets):\n")
    for line in fresh_python(sys.executable, CHECK, {"PATH": "/nonexistent", sb.UNSAFE_EXEC_ENV: "1"}):
        print(f"    {line}")
    print("\nUnsandboxed is what it says: the attack reaches the listener. The verdict is still decided here.")
    with tempfile.TemporaryDirectory(prefix="mergeqa-planted-") as cwd:
        planted = Path(cwd, "bwrap")
        planted.write_text(f"#!/bin/sh\ntouch {cwd}/ran\necho 'bubblewrap 9.9'\n")
        planted.chmod(0o755)
        print("\nA `bwrap` planted in the working directory, PATH with an empty element (PATH=':/nonexistent'):\n")
        site = sb.sysconfig.get_paths()["purelib"]
        done = subprocess.run([sys.executable, "-c", CHECK], cwd=cwd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": f"{REPO}:{site}", "PATH": ":/nonexistent"})
        for line in done.stdout.splitlines() + done.stderr.strip().splitlines()[-1:]:
            print(f"    {line}")
        print(f"    planted bwrap ran: {'YES' if Path(cwd, 'ran').exists() else 'no'}")


if __name__ == "__main__":
    main()
