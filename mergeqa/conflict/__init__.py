"""Conflict detection: does a merge contradict itself on consistency pairs (`consistency`)."""

from mergeqa.conflict.consistency import (
                                          DATA_DIR,
                                          PAIR_KEYS,
                                          SHOWN_PAIRS,
                                          ConflictRun,
                                          ConflictSetup,
                                          ConsistencyPair,
                                          PairOutcome,
                                          conflict_run,
                                          default_pairs_path,
                                          outcomes,
                                          owner_verdict,
                                          paired_verdicts,
                                          perturb_answer,
                                          planted_run,
                                          prompts_of,
                                          rate_figures,
                                          rate_interval,
                                          rate_verdict,
                                          read_pairs,
)

__all__ = ["DATA_DIR", "PAIR_KEYS", "SHOWN_PAIRS", "ConflictRun", "ConflictSetup", "ConsistencyPair", "PairOutcome",
           "conflict_run", "default_pairs_path", "outcomes", "owner_verdict", "paired_verdicts", "perturb_answer",
           "planted_run", "prompts_of", "rate_figures", "rate_interval", "rate_verdict", "read_pairs"]
