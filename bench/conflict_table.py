"""Conflict detection on the embedded default: conflict rates with Clopper-Pearson intervals for the base,
the parents and each merge, the paired (McNemar) and skill-owner verdicts of each merge, the
first three conflicting pairs of the worst merge, a planted case (a parent whose answers to one
side of every pair are perturbed), and the embedding model: load time, embeddings/s on CPU, run
in a network namespace without any network (`unshare -rn`).

    .venv/bin/python bench/conflict_table.py [--pairs pairs.jsonl] [--texts 512]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

EMBED_SNIPPET = r"""
import json, socket, sys, time
t0 = time.perf_counter()
try:
    socket.create_connection(("1.1.1.1", 443), timeout=2); net = "reachable"
except OSError as exc:
    net = f"no network ({type(exc).__name__})"
from mergeqa.evaluate.agreement import Embedder
from mergeqa.family.grammar import corpus
t1 = time.perf_counter()
import sentence_transformers  # noqa: F401
t2 = time.perf_counter()
e = Embedder.from_setting("")
e.model()
t3 = time.perf_counter()
texts = list(dict.fromkeys(corpus(7, 3 * int(sys.argv[1]))))[:int(sys.argv[1])]
t4 = time.perf_counter()
vectors = e.encode(texts)
t5 = time.perf_counter()
sims = e.similarities([("The cat sits on the mat.", "A cat is sitting on a mat."),
                       ("The cat sits on the mat.", "Stock markets fell sharply today.")])
print(json.dumps({"network": net, "import_s": t2 - t1, "load_s": t3 - t2, "texts": len(texts),
                  "dim": int(vectors.shape[1]), "encode_s": t5 - t4, "per_s": len(texts) / (t5 - t4),
                  "paraphrase": sims[0], "unrelated": sims[1], "path": str(e.path)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default=None, help="consistency pairs JSONL (default: the embedded set)")
    parser.add_argument("--texts", type=int, default=512, help="sentences embedded for the throughput figure")
    args = parser.parse_args()
    from mergeqa.conflict.consistency import (
        ConflictSetup,
        owner_verdict,
        paired_verdicts,
        planted_run,
        rate_figures,
        rate_verdict,
    )
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.decision.thresholds import load_thresholds
    from mergeqa.models.session import GateSession

    gate = GateSession.from_options(models=[], parents=None, base=None, merge_configs=[],
                                    cache_dir=default_cache_dir(), device="cpu", dtype="float32", seed=0)
    base, parents, merges = gate.base(), gate.parents(), gate.all_merged()
    thresholds = load_thresholds(Path(__file__).resolve().parent.parent / "thresholds.toml")
    setup = ConflictSetup.from_thresholds(thresholds, args.pairs, default_cache_dir(), "cpu", "float32")
    alpha = setup.alpha
    print(f"pairs: {setup.source} ({len(setup.pairs)}: {sum(p.consistent for p in setup.pairs)} must agree, "
          f"{sum(not p.consistent for p in setup.pairs)} must differ); {100 * (1 - 2 * alpha):g}% Clopper-Pearson; "
          f"max_conflict_rate {setup.max_rate:g}\n")
    print("| model | role | conflicts / pairs | rate | Clopper-Pearson interval | rate.conflict (verdict) |")
    print("|---|---|---:|---:|---|---|")
    runs = {}
    for ref in [base, *parents, *merges]:
        run = runs[ref.name] = setup.run(ref)
        f = rate_figures(run, alpha)
        verdict = rate_verdict(run, setup.max_rate, alpha).outcome if ref.role == "merged" else "-"
        print(f"| {ref.name} | {ref.role} | {f['conflicts']} / {f['n']} | {f['rate']:.3f} | "
              f"{f['ci_low']:.3f}..{f['ci_high']:.3f} | {verdict} |")

    print("\n| merge | vs parent: conflicts merge / parent, McNemar p (Holm) -> outcome | owner agreement (floor "
          f"{setup.floor:g}) |")
    print("|---|---|---|")
    by_name = {p.name: p for p in parents}
    for m in merges:
        paired = paired_verdicts(runs[m.name], {p.name: runs[p.name] for p in parents}, alpha, setup.correction)
        vs = "; ".join(f"{v.check.rsplit('.', 1)[1]}: {v.figures['obtained']:.3f} / {v.figures['reference']:.3f}, "
                       f"p={v.figures['p_more_conflicts']:.2g} -> {v.outcome}" for v in paired)
        owners = []
        for skill, owner in setup.owners.items():
            v = owner_verdict(runs[m.name], runs[owner], skill, setup.skill_prompts(skill), setup.floor, alpha,
                              setup.rule)
            owners.append(f"{skill} ({owner}): {v.obtained:.2f} [{v.figures['ci_low']:.2f}..{v.figures['ci_high']:.2f}]"
                          f" -> {v.outcome}")
        print(f"| {m.name} | {vs} | {'; '.join(owners)} |")

    worst = max(merges, key=lambda m: runs[m.name].rate)
    print(f"\nworst merge: {worst.name} (rate {runs[worst.name].rate:.3f}); its first three conflicting pairs:")
    for line in runs[worst.name].first_conflicts(3):
        print(f"  - {line}")

    # the planted case: the arithmetic parent, its answers to the b side of every pair perturbed
    clean = runs[parents[0].name]
    planted = planted_run(clean, setup.pairs, setup.rule)
    v = rate_verdict(planted, setup.max_rate, alpha)
    paired = paired_verdicts(planted, {clean.model: clean}, alpha)[0]
    print(f"\nplanted ({parents[0].name}'s answers, b side perturbed: last number + 1, a 0 added to the last list): rate {planted.rate:.3f} "
          f"[{v.figures['ci_low']:.3f}..{v.figures['ci_high']:.3f}] -> conflict.rate {v.outcome}; "
          f"vs {clean.model} ({clean.rate:.3f}) McNemar p={paired.figures['p_more_conflicts']:.2g} -> {paired.outcome}")
    print("  message: " + v.message().splitlines()[0])

    cmd = [sys.executable, "-c", EMBED_SNIPPET, str(args.texts)]
    isolated = shutil.which("unshare") is not None
    proc = subprocess.run((["unshare", "-rn"] if isolated else []) + cmd, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path),
                               "OMP_NUM_THREADS": "2"})
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        raise SystemExit(proc.returncode)
    e = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nembedding model ({e['path']}), {'unshare -rn: ' if isolated else ''}{e['network']}:")
    print(f"  import sentence_transformers {e['import_s']:.1f} s, load all-MiniLM-L6-v2 {e['load_s']:.1f} s; "
          f"{e['texts']} sentences in {e['encode_s']:.2f} s = {e['per_s']:.0f} embeddings/s (dim {e['dim']}, CPU, 2 threads)")
    print(f"  cosine: paraphrase {e['paraphrase']:.3f}, unrelated {e['unrelated']:.3f}")


if __name__ == "__main__":
    main()
