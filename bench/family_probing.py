"""Can the family show a merge whose probed competence is above both parents'? Parents fine-tuned
from the cached family's base with other recipes, the five default merges built with mergekit,
every model probed, and the paired "above both parents" test per merge.

For each variant (body lr, grammar replay, steps; the notation rows keep the recipe's token_lr),
both parents are trained from the family's base with the family's own trainer and data, and the
default merge configs are built from them. Every model is probed on the built-in phenomena and on
three contextual sets that no embedding can answer (the probe sits on the final "." or pools a
sentence whose words may be swapped), then each merge is tested against both parents (one-sided
paired sign-flip tests over the pooled test items, as `mergeqa family --table` does). The last
columns count wrong greedy answers to the consistency pairs' prompts through the chat template,
what the gate's `conflict.rate` reads.

    .venv/bin/python bench/family_probing.py      # the recipe, 3e-4,0.1,400, 1e-3,0,400, 3e-4,0.3,400,split
    .venv/bin/python bench/family_probing.py --variant 1e-3,0,400   # lr,replay,steps
    .venv/bin/python bench/family_probing.py --variant 3e-4,0.3,400,split

`split` replays different grammar to each parent: the arithmetic parent sentences with a pronoun
subject, the lists parent sentences with an attractor ("the dog near the cats runs"), so that each
could learn something linguistic that the other does not (complementary gains are what would put
task_arithmetic above both parents).

Costs about 2 minutes per variant on 2 CPU cores (the family is the shipped one).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONTEXTUAL_ITEMS = 1008


def contextual_sets():
    """Three probing sets whose label is not in the probed token's embedding: subject number and
    tense read at the final '.', and word order (two adjacent words swapped) pooled over the
    sentence, which an embedding-layer mean cannot see (it ignores order)."""
    from mergeqa.family.grammar import generate_sentence
    from mergeqa.probing.datasets import ProbeDataset, ProbeItem, default_split

    def at_end(sentence_text):
        return sentence_text, (len(sentence_text) - 1, len(sentence_text))

    def subject_number(rng, label):  # past tense: the verb does not mark number
        return at_end(generate_sentence(rng, tense="past", number=label, pronoun_rate=0.0).text)

    def tense(rng, label):
        return at_end(generate_sentence(rng, tense=label).text)

    def word_order(rng, label):
        words = list(generate_sentence(rng).words)
        if label == "swapped":
            i = rng.choice([j for j in range(len(words) - 1) if words[j] != words[j + 1]])
            words[i], words[i + 1] = words[i + 1], words[i]
        return at_end(" ".join(words) + " .")

    sets = []
    for name, draw, labels, pooling in (("subject_number_at_end", subject_number, ("pl", "sg"), "span"),
                                        ("tense_at_end", tense, ("past", "present"), "span"),
                                        ("word_order", word_order, ("original", "swapped"), "sentence")):
        rng, seen, items = random.Random(name), set(), []
        for i in range(CONTEXTUAL_ITEMS):
            label = labels[i % len(labels)]
            text, span = draw(rng, label)
            while (text, span) in seen:
                text, span = draw(rng, label)
            seen.add((text, span))
            items.append(ProbeItem(text, span, label, default_split(i), "."))
        sets.append(ProbeDataset(name, tuple(items), pooling=pooling, category="contextual"))
    return sets


SPLIT_REPLAY = {"arithmetic": {"pronoun_rate": 1.0}, "lists": {"pronoun_rate": 0.0, "attractor_rate": 1.0}}


def train_parents(family, out: Path, lr: float, replay: float, steps: int, split: bool = False) -> dict[str, Path]:
    """Both parents from the family's base, trained as the build trains them (`train_parent`) but
    with this body lr, replay and step count (and, `split`, each skill's own kind of replayed
    sentence)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergeqa.family.build import train_parent
    from mergeqa.family.grammar import corpus, generate_sentence
    from mergeqa.family.skills import skill_items

    recipe = family.recipe
    tokenizer = AutoTokenizer.from_pretrained(family.base)
    base = AutoModelForCausalLM.from_pretrained(family.base)
    grammar = corpus(recipe["seed"], recipe["grammar_sentences"])
    paths = {}
    for name, spec in recipe["parents"].items():
        if split:
            rng = random.Random(f"replay:{spec['skill']}")
            grammar = [generate_sentence(rng, **SPLIT_REPLAY[spec["skill"]]).text
                       for _ in range(recipe["grammar_sentences"])]
        train_items, _ = skill_items(spec["skill"], recipe["seed"], recipe["eval_items"])
        parent = train_parent(base, tokenizer, {**spec, "lr": lr, "replay": replay, "steps": steps},
                              train_items, grammar, recipe["seed"])
        paths[name] = out / name
        parent.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    return paths


def wrong_answers(ref, prompts) -> list[int]:
    from family_generation import truth

    from mergeqa.evaluate.generation import GenerationSettings, answer_conversations

    model, tokenizer = ref.model("cpu", "float32"), ref.tokenizer()
    out = []
    for asked in prompts.values():
        answers, *_ = answer_conversations(model, tokenizer, [[p] for p in asked],
                                           GenerationSettings(max_new_tokens=16, batch_size=64, chat="template"))
        out.append(sum(a[0] != truth(p) for p, a in zip(asked, answers)))
    return out


def run_variant(family, variant, datasets, work: Path, prompts) -> list[str]:
    import numpy as np

    from mergeqa.models.merging import build_merge
    from mergeqa.models.refs import ModelRef
    from mergeqa.models.session import DEFAULT_MERGES_DIR
    from mergeqa.probing.divergence import above_parents, shown_above
    from mergeqa.probing.engine import ProbingEngine
    from mergeqa.probing.probes import ProbeSettings

    lr, replay, steps, split = variant
    out = work / f"lr{lr:g}-replay{replay:g}-steps{steps}{'-split' if split else ''}"
    parents = train_parents(family, out, lr, replay, steps, split)
    label = f"{lr:g} / {replay:g}{' split' if split else ''} / {steps}"
    subs = {"base": str(family.base), **{n: str(p) for n, p in parents.items()}}
    refs = [ModelRef("base", family.base, "base")] + [ModelRef(n, p, "parent") for n, p in parents.items()]
    for config in sorted(DEFAULT_MERGES_DIR.glob("*.yaml")):
        refs.append(ModelRef(config.stem, build_merge(config, out / "merges", substitutions=subs, seed=0), "merged"))
    engine = ProbingEngine(datasets, ProbeSettings(), cache_dir=out / "probes", device="cpu")
    builtin = [d.name for d in datasets if d.category != "contextual"]
    items, means = {}, {}
    for ref in refs:
        results = engine.results(ref)
        for group, names in (("built-in", builtin), ("all", sorted(results))):
            items[ref.name, group] = np.concatenate([results[n].item_scores(results[n].best_layer) for n in names])
            means[ref.name, group] = float(items[ref.name, group].mean())
        means[ref.name, "contextual"] = float(np.mean([results[d.name].accuracy().mean(1)[results[d.name].best_layer]
                                                     for d in datasets if d.category == "contextual"]))
    lines = []
    for group in ("built-in", "all"):
        tests = [above_parents(r.name, items[r.name, group], {p: items[p, group] for p in parents})
                 for r in refs if r.role == "merged"]
        adjusted = shown_above(tests)
        for t in tests:
            lines.append(f"| {label} | {group} | {t.merge} | "
                         + " | ".join(f"{100 * t.diffs[p]:+.2f} (p {t.pvalues[p]:.2f})" for p in parents)
                         + f" | {adjusted[t.merge]:.2f} | {'yes' if adjusted[t.merge] <= 0.05 else 'no'} |")
    print(f"\nvariant lr {lr:g}, replay {replay:g}{' (split)' if split else ''}, {steps} steps: probe accuracy (best layer, mean) and "
          "wrong chat answers (arithmetic / lists)", flush=True)
    print("| model | built-in | contextual | wrong sums | wrong lists |\n|---|---:|---:|---:|---:|")
    for ref in refs:
        wrong = wrong_answers(ref, prompts) if ref.role != "base" else ["-", "-"]
        print(f"| {ref.name} | {means[ref.name, 'built-in']:.4f} | {means[ref.name, 'contextual']:.4f} | "
              + " | ".join(f"{w}/{len(p)}" if w != "-" else "-" for w, p in zip(wrong, prompts.values())) + " |",
              flush=True)
    return lines


def parse_variant(text: str) -> tuple[float, float, int, bool]:
    parts = text.split(",")
    if len(parts) not in (3, 4) or parts[3:] not in ([], ["split"]):
        raise SystemExit(f"--variant {text!r}: expected LR,REPLAY,STEPS or LR,REPLAY,STEPS,split")
    return float(parts[0]), float(parts[1]), int(parts[2]), parts[3:] == ["split"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", metavar="LR,REPLAY,STEPS",
                    help="parent recipe to try (repeatable): LR,REPLAY,STEPS[,split]; default: the "
                         "recipe's, 3e-4,0.1,400, 1e-3,0,400 and 3e-4,0.3,400,split")
    ap.add_argument("--work", default=None, metavar="DIR", help="where parents, merges and probes go (default: a temp dir)")
    args = ap.parse_args(argv)

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mergeqa.conflict.consistency import default_pairs_path
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.models.shipped_family import shipped_family
    from mergeqa.probing.datasets import GRAMMAR_PHENOMENA, builtin_dataset

    family = shipped_family(default_cache_dir())
    spec = next(iter(family.recipe["parents"].values()))
    variants = [parse_variant(v) for v in args.variant or []]
    variants = variants or [(spec["lr"], spec["replay"], spec["steps"], False), (3e-4, 0.1, 400, False),
                            (1e-3, 0.0, 400, False), (3e-4, 0.3, 400, True)]
    # the grammar's phenomena only: pooling the skill ones (each parent weak on the other's skill)
    # would put a merge that keeps both skills "above both" on the pool (see AboveParents)
    datasets = [builtin_dataset(n) for n in GRAMMAR_PHENOMENA] + contextual_sets()
    rows = [json.loads(line) for line in default_pairs_path().read_text().splitlines()]
    prompts = {skill: sorted({p for r in rows if r["skill"] == skill for p in (r["a"], r["b"])})
               for skill in ("arithmetic", "lists")}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        lines = [line for v in variants for line in run_variant(family, v, datasets, work, prompts)]
    parents = list(family.recipe["parents"])
    print("\nabove both parents? merge - parent in accuracy points (one-sided sign-flip p), best layer, "
          "pooled test items; Holm across the five merges, alpha 0.05")
    print("| lr / replay / steps | probes | merge | " + " | ".join(f"vs {p}" for p in parents)
          + " | adjusted p | shown |\n|---|---|---|" + "---:|" * len(parents) + "---:|---|")
    print("\n".join(lines))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
