"""How often the family's models answer the consistency pairs' prompts wrongly, in generation.

The consistency check (`conflict.rate`) can only pass for a merge whose parents answer both orders
of a sum and both ways of ordering a list right, greedily, through the chat template. This prints,
for the base (asked in its own notation: `12 plus 7 =`, `flip [...]`, `order [...]`), each
parent and each default merge (asked in the task notation), the number of the pairs' distinct
prompts answered wrongly per skill, through the chat template and as plain text, with mergeqa's
own generation code.

    .venv/bin/python bench/family_generation.py [--merges]
"""

from __future__ import annotations

import argparse
import json


def truth(prompt: str) -> str:
    from mergeqa.family.skills import _fmt, list_answer

    words = prompt.split()
    if words[1] == "+":
        return str(int(words[0]) + int(words[2]))
    return _fmt(list_answer(words[0], tuple(int(w.strip("[]")) for w in words[1:-1])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--merges", action="store_true", help="also the five default merges (built if missing)")
    args = parser.parse_args()

    from mergeqa.conflict.consistency import default_pairs_path
    from mergeqa.core.cache import default_cache_dir
    from mergeqa.evaluate.generation import GenerationSettings, answer_conversations
    from mergeqa.family.skills import BASE_NOTATION
    from mergeqa.models.session import GateSession

    rows = [json.loads(line) for line in default_pairs_path().read_text().splitlines()]
    prompts = {skill: sorted({p for r in rows if r["skill"] == skill for p in (r["a"], r["b"])})
               for skill in ("arithmetic", "lists")}
    gate = GateSession.from_options(models=[], parents=None, base=None, merge_configs=[],
                                    cache_dir=default_cache_dir(), device="cpu", dtype="float32", seed=0)
    models = [(gate.base(), True)] + [(p, False) for p in gate.parents()]
    if args.merges:
        models += [(gate.merged(name), False) for name in gate.merged_names]
    print("| model | rendering | arithmetic wrong | lists wrong |")
    print("|---|---|---:|---:|")
    for ref, own_notation in models:
        model, tokenizer = ref.model("cpu", "float32"), ref.tokenizer()
        for chat in ("template", "plain"):
            cells = []
            for skill, asked in prompts.items():
                rendered = [" ".join(BASE_NOTATION.get(w, w) for w in p.split(" ")) if own_notation else p for p in asked]
                answers, *_ = answer_conversations(model, tokenizer, [[p] for p in rendered],
                                                   GenerationSettings(max_new_tokens=16, batch_size=64, chat=chat))
                wrong = sum(a[0] != truth(p) for p, a in zip(asked, answers))
                cells.append(f"{wrong}/{len(asked)}")
            print(f"| {ref.name} | {chat} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
