"""Judged evaluation on the embedded default: answer generation time and items/s on CPU (first run
into a fresh answers cache, then the cache hit), per-model two-turn judged scores with BLEU and
chrF, A/B win rates with Clopper-Pearson intervals and swap disagreement for each merge against each
parent, and the judge.score verdicts.

    .venv/bin/python bench/judge_table.py [--questions question.jsonl] [--threads 1]

Models come from mergeqa's cache (the family and the default merges are built if missing).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", default=None, help="an MT-Bench question.jsonl (default: the embedded set)")
    args = parser.parse_args()
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.decision.thresholds import load_thresholds
    from mergeqa.judge import ab_verdict, score_verdict
    from mergeqa.judge.evaluation import JudgeSetup
    from mergeqa.models.session import GateSession

    gate = GateSession.from_options(models=[], parents=None, base=None, merge_configs=[],
                                    cache_dir=default_cache_dir(), device="cpu", dtype="float32", seed=0)
    base, parents, merges = gate.base(), gate.parents(), gate.all_merged()
    thresholds = load_thresholds(Path(__file__).resolve().parent.parent / "thresholds.toml")
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for run in (1, 2):
            setup = JudgeSetup.from_thresholds(thresholds, Path(tmp), "cpu", "float32", questions=args.questions)
            rows, started = [], time.perf_counter()
            for ref in [base, *parents, *merges]:
                t = time.perf_counter()
                a = setup.answers(ref)
                rows.append((ref, a, time.perf_counter() - t))
            runs.append((setup, rows, time.perf_counter() - started))
        setup, rows, _ = runs[0]
        n_q = len(setup.questions)
        print(f"questions: {setup.source} ({n_q} two-turn), judge: {setup.judge.identity}, "
              f"greedy, max {setup.settings.max_new_tokens} new tokens, batch {setup.settings.batch_size}, 1 torch thread\n")
        print("| model | run 1: s | turns/s | new tokens/s | run 2 (cache): s | cached |")
        print("|---|---:|---:|---:|---:|---|")
        for (ref, a, s), (_, a2, s2) in zip(rows, runs[1][1]):
            turns = sum(len(t) for t in a.turns)
            print(f"| {ref.name} | {s:.2f} | {turns / a.seconds:.1f} | {a.new_tokens / a.seconds:.0f} | {s2:.3f} | {a2.cached} |")
        total_turns = sum(sum(len(t) for t in a.turns) for _, a, _ in rows)
        print(f"\nall {len(rows)} models: run 1 {runs[0][2]:.1f} s ({total_turns / runs[0][2]:.1f} turns/s incl. model "
              f"load), run 2 {runs[1][2]:.2f} s, every entry cached: {all(a.cached for _, a, _ in runs[1][1])}\n")

        print("| model | role | turn 1 | turn 2 | score (1-10) | BLEU | chrF |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for ref, _, _ in rows:
            s = setup.scores(ref).summary()
            print(f"| {ref.name} | {ref.role} | {s['turn1']:.2f} | {s['turn2']:.2f} | {s['score']:.2f} | "
                  f"{s['bleu']:.1f} | {s['chrf']:.1f} |")

        print("\n| merge | against | W / T / L | win rate | 90% Clopper-Pearson | swap disagreement | parse errors | outcome |")
        print("|---|---|---|---:|---|---:|---:|---|")
        for m in merges:
            for p in parents:
                ab = setup.pairwise(m, p)
                v = ab_verdict(setup, ab)
                lo, hi = v.figures.get("ci_low"), v.figures.get("ci_high")
                print(f"| {m.name} | {p.name} | {ab.count('win')} / {ab.count('tie')} / {ab.count('loss')} | "
                      f"{ab.win_rate:.3f} | {lo:.3f}..{hi:.3f} | {ab.swap_disagreement:.0%} | {ab.parse_errors} | "
                      f"{v.outcome} |")

        print("\n| merge | judged score | parents' mean | effect (90% CI) | p(non-inferiority) | outcome |")
        print("|---|---:|---:|---|---:|---|")
        parent_scores = {p.name: setup.scores(p) for p in parents}
        for m in merges:
            v = score_verdict(setup, setup.scores(m), parent_scores)
            f = v.figures
            print(f"| {m.name} | {f['obtained']:.2f} | {f['reference']:.2f} | {f['effect']:+.2f} "
                  f"({f['ci_low']:+.2f}..{f['ci_high']:+.2f}) | {f['p_noninferiority']:.3g} | {v.outcome} |")


if __name__ == "__main__":
    main()
