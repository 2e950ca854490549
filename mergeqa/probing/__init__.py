"""Probing competence: layer-wise linear probes of merged models against their parents and base.

`datasets` (what is probed: built-in phenomena from the family grammar and its skills, user JSONL sets),
`representations` (every layer's pooled hidden states, one forward pass per sentence, cached),
`probes` (logistic-regression probes, Hewitt & Liang control tasks, selectivity), `engine` (the
loop over models and phenomena the gate and the bench share), `divergence` (behaviour vs internals
rankings, "above both parents" per phenomenon) and `plots`. Nothing here decides pass or fail: `mergeqa/checks/test_probing.py` does.
"""
