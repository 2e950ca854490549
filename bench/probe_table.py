"""The probing table on the embedded default: phenomenon x model -> best layer, accuracy, selectivity.

Accuracy and selectivity (task probe minus control probe) come with their range over the probe
seeds; then, per phenomenon, the model pairs whose accuracies differ by more than that spread.

    .venv/bin/python bench/probe_table.py                      # cold: fresh probe cache, timed
    .venv/bin/python bench/probe_table.py --backends           # + torch vs scikit-learn timing
    .venv/bin/python bench/probe_table.py --behaviour b.json   # + divergence report (merge -> score)

The family and merges come from --cache (built there if missing); representations and probe
results go to --probe-cache, a fresh temporary directory by default, so the wall time printed is
that of a cold probing run (forward passes + probes for every model), not of a cache hit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/tmp/mqcache", metavar="DIR",
                    help="mergeqa cache holding the family and merges (default: /tmp/mqcache)")
    ap.add_argument("--probe-cache", default=None, metavar="DIR",
                    help="where representations and probes are cached (default: a fresh temp dir, removed after)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="default: cpu")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch intra-op threads outside the engine's own scope (default: torch's choice)")
    ap.add_argument("--out", default="mergeqa-report", metavar="DIR", help="plots (default: mergeqa-report)")
    ap.add_argument("--backends", action="store_true", help="also time torch vs scikit-learn probes")
    ap.add_argument("--behaviour", metavar="JSON", help="merge -> behaviour score, for the divergence report")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from mergeqa.decision.thresholds import load_thresholds
    from mergeqa.models.session import GateSession
    from mergeqa.probing.divergence import divergence_report, internal_scores
    from mergeqa.probing.engine import ProbingEngine
    from mergeqa.probing.plots import plot_phenomenon

    thresholds = load_thresholds(Path(__file__).resolve().parent.parent / "thresholds.toml")
    gate = GateSession.from_options(models=[], parents=None, base=None, merge_configs=[],
                                    cache_dir=args.cache, device=args.device, dtype="float32", seed=0)
    refs = [(gate.base(), "base")] + [(p, "parent") for p in gate.parents()] \
        + [(m, "merged") for m in gate.all_merged()]
    probe_cache = Path(args.probe_cache or tempfile.mkdtemp(prefix="mergeqa-probes-"))
    engine = ProbingEngine.from_thresholds(thresholds, cache_dir=probe_cache, device=args.device, dtype="float32")
    for ref, _ in refs:  # load every model first: the timing below is probing, not disk reads
        ref.model(engine.device, "float32")

    print(f"probing {len(refs)} models x {len(engine.datasets)} phenomena on {engine.device}, "
          f"torch threads {torch.get_num_threads()}, os.cpu_count() {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}, probe cache {probe_cache}")
    from mergeqa.probing.representations import representations

    results, spent = {}, {"forward": 0.0, "probes": 0.0}
    from mergeqa.probing.engine import threads_for

    for ref, _ in refs:
        t0 = time.perf_counter()
        with threads_for(ref, engine.device):  # what engine.results does first
            representations(ref, list(engine.datasets.values()), device=engine.device, dtype="float32",
                            cache_dir=probe_cache)
        t1 = time.perf_counter()
        results[ref.name] = engine.results(ref)  # reads the representations just cached
        t2 = time.perf_counter()
        spent["forward"] += t1 - t0
        spent["probes"] += t2 - t1
        print(f"  {ref.name:<16} forward passes {t1 - t0:5.2f} s, probes {t2 - t1:5.2f} s")
    cold = spent["forward"] + spent["probes"]
    t = time.perf_counter()
    for ref, _ in refs:
        ProbingEngine.from_thresholds(thresholds, cache_dir=probe_cache, device=args.device,
                                      dtype="float32").results(ref)
    warm = time.perf_counter() - t

    print()
    print(table(engine, refs, results))
    print()
    print(differing_pairs(engine, refs, results))
    print(f"\nwall time, cold (forward passes + {len(refs) * len(engine.datasets)} probe sets of "
          f"{engine.settings.seeds} seeds x task/control x every layer): {cold:.1f} s "
          f"(forward passes {spent['forward']:.1f} s, probes {spent['probes']:.1f} s); "
          f"warm (from the probe cache): {warm:.2f} s")

    out = Path(args.out)
    for name, dataset in engine.datasets.items():
        path = plot_phenomenon(dataset, [(ref.name, role, results[ref.name][name]) for ref, role in refs],
                               out / f"probing-{name}.png")
        print(f"plot: {path}")

    merges = [ref.name for ref, role in refs if role == "merged"]
    internals = internal_scores(results)
    print("\ninternals (mean best-layer accuracy over phenomena): "
          + ", ".join(f"{n} {internals[n]:.4f}" for n in sorted(internals, key=lambda n: -internals[n])))
    if args.behaviour:
        behaviour = json.loads(Path(args.behaviour).read_text())
        parents = [ref.name for ref, role in refs if role == "parent"]
        report = divergence_report({m: behaviour[m] for m in merges}, {m: internals[m] for m in merges},
                                   min_tau=thresholds.get("probing", "divergence_tau"),
                                   parents_behaviour={p: behaviour[p] for p in parents if p in behaviour},
                                   parents_internals={p: internals[p] for p in parents})
        print(report.summary())
    if args.backends:
        compare_backends(engine, refs[0][0], probe_cache)
    if args.probe_cache is None:
        shutil.rmtree(probe_cache, ignore_errors=True)
    return 0


def table(engine, refs, results) -> str:
    """Markdown: one row per (phenomenon, model), accuracy and selectivity with their range over
    the probe seeds."""
    lines = ["| phenomenon | model | role | best layer | accuracy (best) | seed range | macro-F1 | control | "
             "selectivity | seed range | accuracy (last) | selectivity (last) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in engine.datasets:
        for ref, role in refs:
            r = results[ref.name][name]
            b, last = r.summary(r.best_layer), r.summary(r.last_layer)
            acc, sel = seed_figures(r)
            lines.append(f"| {name} | {ref.name} | {role} | {r.best_layer} | {b['accuracy']:.3f} | "
                         f"{acc.min():.3f}..{acc.max():.3f} | {b['macro_f1']:.3f} | {b['control']:.3f} | "
                         f"{b['selectivity']:+.3f} | {sel.min():+.3f}..{sel.max():+.3f} | "
                         f"{last['accuracy']:.3f} | {last['selectivity']:+.3f} |")
    return "\n".join(lines)


def seed_figures(r):
    """Test accuracy and selectivity (task minus control) at the best layer, one per probe seed."""
    layer = r.best_layer
    acc = r.accuracy()[layer]
    return acc, acc - r.accuracy(control=True)[layer]


def differing_pairs(engine, refs, results) -> str:
    """Per phenomenon, the model pairs whose best-layer accuracies differ by more than the probes'
    seed spread: the two ranges over the seeds do not overlap. The seed spread is the probe fit's
    noise only, not the test items' (a pair one test item apart can pass it), so the pairs apart
    by more than 0.05 are counted too."""
    from itertools import combinations

    lines = []
    for name in engine.datasets:
        acc = {ref.name: seed_figures(results[ref.name][name])[0] for ref, _ in refs}
        pairs = [(a, b) for a, b in combinations(acc, 2)
                 if acc[a].min() > acc[b].max() or acc[b].min() > acc[a].max()]
        spread = max(float(x.max() - x.min()) for x in acc.values())
        wide = sum(abs(acc[a].mean() - acc[b].mean()) > 0.05 for a, b in pairs)
        shown = ", ".join(f"{a}/{b}" for a, b in pairs) if pairs else "none"
        lines.append(f"{name}: {len(pairs)} of {len(acc) * (len(acc) - 1) // 2} pairs differ beyond the "
                     f"seed spread (largest seed range {spread:.3f}), {wide} of them by more than 0.05: {shown}")
    return "\n".join(lines)


def compare_backends(engine, ref, probe_cache: Path) -> None:
    """Time the same probes with torch (batched L-BFGS) and scikit-learn (one lbfgs fit each)."""
    from dataclasses import replace

    import numpy as np

    from mergeqa.probing.engine import threads_for
    from mergeqa.probing.probes import probe
    from mergeqa.probing.representations import representations

    feats = representations(ref, list(engine.datasets.values()), device=engine.device, dtype="float32",
                            cache_dir=probe_cache)
    print(f"\nprobe backends on {ref.name}, {len(engine.datasets)} phenomena, "
          f"{engine.settings.seeds} seeds x (task + control) x every layer:")
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)  # sklearn at the same max_iter as torch
    timings, preds = {}, {}
    for backend in ("torch", "sklearn"):
        settings = replace(engine.settings, backend=backend)
        probe(next(iter(engine.datasets.values())), next(iter(feats.values())), settings,
              device=engine.device)  # warm-up (imports, first kernels)
        with threads_for(ref, engine.device):  # the same threading the engine uses
            t = time.perf_counter()
            preds[backend] = {n: probe(d, feats[n], settings, device=engine.device)
                              for n, d in engine.datasets.items()}
            timings[backend] = time.perf_counter() - t
    for n in engine.datasets:
        t, s = preds["torch"][n], preds["sklearn"][n]
        print(f"  {n:<16} test acc by layer torch {np.round(t.accuracy().mean(1), 3)} "
              f"sklearn {np.round(s.accuracy().mean(1), 3)}; same prediction on "
              f"{(t.preds == s.preds).mean():.1%} of (layer, probe, item)")
    print(f"  torch {timings['torch']:.2f} s, scikit-learn {timings['sklearn']:.2f} s "
          f"({timings['sklearn'] / timings['torch']:.1f}x)")


if __name__ == "__main__":
    raise SystemExit(main())
