"""mergeqa: a pytest quality gate for merged LLM checkpoints.

Import-light on purpose: torch, transformers, mergekit and lm_eval are imported where they are
used, so `pytest --help` and the statistics tests stay fast.
"""

__version__ = "0.1.0"
