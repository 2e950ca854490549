"""Measure the timing channels left between sandboxes (samples of one problem): one sandbox sends random bits,
the next one (started after the first has ended) reads them back; prints the bit error rate of each channel.

    .venv/bin/python bench/humaneval_sample_channels.py [--bits 256]

- page cache, one-shot: the sender reads the stdlib files that stand for its 1 bits (warm), the receiver times a
  1-byte read of each (cold: the disk). Files can no longer be made cold from a sandbox (fadvise64 and
  madvise PAGEOUT are refused), so each cold file carries one bit, once: this bench makes the files cold from
  the host (root, POSIX_FADV_DONTNEED), as on a freshly booted CI machine.
- dentry cache: the sender looks up names that do not exist in the stdlib directory (the kernel caches each
  miss), the receiver times the lookup of each name. Unbounded: every new name is a fresh bit.
What they carry is bits, not verdicts: a check runs to its end whatever the answers (issue 28,
`mergeqa.humaneval.assertions`), so no sample learns whether its answers were right, and nothing it could send
forward helps a later sample pass. ~10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import glob
import os
import secrets
import statistics

from mergeqa.humaneval import sandbox as sb

SENDER = """
import os
def send(paths, bits, kind):
    for path, bit in zip(paths, bits):
        if bit:
            try:
                if kind == 'page cache':
                    with open(path, 'rb') as f:
                        f.read(1)
                else:
                    os.stat(path)
            except OSError:
                pass
    return True
"""

RECEIVER = """
import os, time
def receive(paths, kind):
    times = []
    for path in paths:
        start = time.perf_counter_ns()
        try:
            if kind == 'page cache':
                fd = os.open(path, os.O_RDONLY)
                os.pread(fd, 1, 0)
                os.close(fd)
            else:
                os.stat(path)
        except OSError:
            pass
        times.append(time.perf_counter_ns() - start)
    return times
"""


def run_in_sandbox(source: str, entry: str, *args):
    with sb.CandidateProcess(source, entry, timeout_s=30, memory_mb=256) as run:
        return run.call(*args)


def measure(kind: str, paths: list[str]) -> str:
    bits = [secrets.randbelow(2) for _ in paths]
    if kind == "page cache":
        for path in paths:  # cold, as on a fresh host
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    run_in_sandbox(SENDER, "send", paths, bits, kind)
    times = run_in_sandbox(RECEIVER, "receive", paths, kind)
    ones = [t for t, b in zip(times, bits) if b]
    zeros = [t for t, b in zip(times, bits) if not b]
    # the receiver's best threshold, chosen knowing the bits: what an attacker calibrating on a header could reach
    best = min((sum((t < cut) != b for t, b in zip(times, bits)), cut) for cut in sorted(set(times)))
    return (f"| {kind} | {len(paths)} | {statistics.median(ones) / 1000:.1f} us | "
            f"{statistics.median(zeros) / 1000:.1f} us | {best[0] / len(paths):.3f} "
            f"(threshold {best[1] / 1000:.1f} us) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=256, metavar="N", help="bits per channel (default: 256)")
    args = parser.parse_args()
    stdlib = sb.sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(f"{os.path.realpath(stdlib)}/**/*.py", recursive=True))
    files = [f for f in files if "/site-packages/" not in f and os.path.getsize(f) > 4096][-args.bits:]
    names = [f"{os.path.realpath(stdlib)}/mergeqa-{secrets.token_hex(8)}" for _ in range(args.bits)]
    print(f"sandbox: {sb.code_execution()}; {os.cpu_count()} CPUs\n")
    print("| channel | bits | median time of a 1 (sent) | of a 0 | bit error rate |")
    print("|---|---|---|---|---|")
    print(measure("page cache", files))
    print(measure("dentry cache", names))


if __name__ == "__main__":
    main()
