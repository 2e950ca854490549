"""Print the HumanEval sandbox table (markdown): what each kind of program gets, with and without
the audit guard, and the evidence that it stayed inside.

    .venv/bin/python bench/humaneval_sandbox_table.py [--timeout 2] [--workers 4]

Runs the 164 canonical solutions, the 164 `pass` stubs and each snippet of
`mergeqa.humaneval.hostile_programs` (~30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import time
from pathlib import Path

from mergeqa import humaneval as he


def bulk_row(label: str, completion_of, expected: str, workers: int) -> str:
    problems = he.load_problems()
    start = time.perf_counter()
    results = he.check_completions([(p, completion_of(p)) for p in problems], workers=workers)
    total = time.perf_counter() - start
    hits = sum(r.status == expected for r in results)
    others = sorted({f"{r.status}: {r.detail[:60]}" for r in results if r.status != expected})
    median_ms = statistics.median(r.wall_s for r in results) * 1000
    outcome = f"{hits}/{len(results)} {expected} ({total:.1f} s for all, {workers} at a time; median {median_ms:.0f} ms)"
    outcome += "".join(f"; {other}" for other in others)
    return f"| {label} | {outcome} | same (the guard never fires) | |"


def hostile_row(kind: str, timeout_s: float, os_layers_available: bool) -> str:
    cells, evidence = [], []
    for audit_guard in (True, False):
        if not audit_guard and not os_layers_available:
            cells.append("not run: no fresh uid or namespaces on this host")
            continue
        escape = Path(f"/tmp/mergeqa-escape-{secrets.token_hex(6)}")
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            program = he.hostile_programs(str(escape), listener.getsockname()[1])[kind]
            result = he.run_in_sandbox(program, timeout_s, 256, audit_guard=audit_guard)
            try:
                listener.accept()
                connected = True
            except BlockingIOError:
                connected = False
        left = he.sandbox_processes(result.run_id)
        escaped = escape.exists()
        escape.unlink(missing_ok=True)
        cells.append(f"`{result.status}` ({result.wall_s:.2f} s): {result.detail[:70]}")
        breaches = [f"{len(left)} processes left"] * bool(left)
        breaches += ["FILE OUTSIDE"] * escaped + ["CONNECTED"] * connected
        evidence.append(f"{'guard' if audit_guard else 'OS'}: {', '.join(breaches)}" if breaches else "")
    evidence = [e for e in evidence if e] or ["0 processes left, no file outside, nothing connected"]
    return f"| {kind} | {cells[0]} | {cells[1]} | {'; '.join(evidence)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=2.0, metavar="S", help="hostile runs' limit (default: 2)")
    parser.add_argument("--workers", type=int, default=4, metavar="N", help="parallel runs of the 164 (default: 4)")
    args = parser.parse_args()
    layers = he.sandbox_layers(audit_guard=False)
    os_layers = "fresh-uid" in layers or "pidns" in layers
    print(f"Layers on this host: {', '.join(he.sandbox_layers())} (hostile runs: {args.timeout:g} s, 256 MB)\n")
    print("| program | audit guard on: status (wall) | OS layers only: status (wall) | after both runs |")
    print("|---|---|---|---|")
    print(bulk_row("canonical solutions (164)", lambda p: p.canonical_solution, "passed", args.workers))
    print(bulk_row("`pass` stubs (164)", lambda p: "    pass\n", "failed", args.workers))
    for kind in he.hostile_programs("/tmp/x", 1):
        print(hostile_row(kind, args.timeout, os_layers))
    print(
        "\nOS layers only, `passed`: the write lands in the run's private tmpfs over /tmp (gone with the"
        "\nrun), and the subprocess runs as the run's uid inside its namespaces; neither reaches the host."
    )


if __name__ == "__main__":
    main()
