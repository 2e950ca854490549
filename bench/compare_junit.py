"""Compare two junit files of the gate: the same testcases, outcomes, property names and values.

    .venv/bin/python bench/compare_junit.py before/junit.xml after/junit.xml

Values that no run can repeat are compared by name only and counted apart: wall-clock
measurements (`mergeqa.cost.{prefill,decode,latency}.*`), and paths (of the cache entries and of
the report directory, which name the run, not the model; each model's content hash is compared).
Exit 0 when everything else is identical, 1 with the differences listed otherwise.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET

TIMED = re.compile(r"^mergeqa\.cost\.(prefill|decode|latency)\.")
PATHS = re.compile(r"(\.path|\.plot|\.provenance)$")


def load(path: str) -> tuple[dict, dict]:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    meta = {p.get("name"): p.get("value") for p in suite.find("properties") or []}
    cases = {}
    for case in suite.iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        props = [(p.get("name"), p.get("value")) for p in case.iter("property")]
        cases[f"{case.get('classname')}::{case.get('name')}"] = (outcome, props)
    return meta, cases


def volatile(name: str) -> bool:
    return bool(TIMED.match(name) or PATHS.search(name))


def compare(a: str, b: str) -> list[str]:
    (meta_a, cases_a), (meta_b, cases_b) = load(a), load(b)
    problems = [f"testcase only in {a}: {k}" for k in sorted(set(cases_a) - set(cases_b))]
    problems += [f"testcase only in {b}: {k}" for k in sorted(set(cases_b) - set(cases_a))]
    skipped = 0
    for key in sorted(set(cases_a) & set(cases_b)):
        (out_a, props_a), (out_b, props_b) = cases_a[key], cases_b[key]
        if out_a != out_b:
            problems.append(f"{key}: {out_a} -> {out_b}")
        if [n for n, _ in props_a] != [n for n, _ in props_b]:
            problems.append(f"{key}: property names differ")
            continue
        for (name, va), (_, vb) in zip(props_a, props_b):
            if volatile(name):
                skipped += va != vb
            elif va != vb:
                problems.append(f"{key}: {name} = {va} -> {vb}")
    for name in sorted(set(meta_a) | set(meta_b)):
        if meta_a.get(name) != meta_b.get(name) and not volatile(name):
            problems.append(f"run metadata {name}: {meta_a.get(name)} -> {meta_b.get(name)}")
    n_props = sum(len(p) for _, p in cases_a.values())
    print(f"{len(cases_a)} testcases, {n_props} properties, {len(meta_a)} run properties compared; "
          f"{skipped} wall-clock or path values differ (compared by name only); "
          f"{len(problems)} other differences")
    return problems


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    found = compare(sys.argv[1], sys.argv[2])
    for line in found:
        print("  " + line)
    sys.exit(1 if found else 0)
