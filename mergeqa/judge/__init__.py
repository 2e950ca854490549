"""Judged evaluation, MT-Bench style: two-turn answers of the merge and its parents, graded by a
judge (the reference judge by default, a local transformers model, or an OpenAI-compatible
endpoint), single-answer scores and pairwise A/B in both orders, BLEU and chrF, and the verdicts
of mergeqa/checks/test_judge.py.

Modules: questions (FastChat's question.jsonl), prompts (judge prompts and verdict-tag parsers),
judges (the judge interface and its three kinds), evaluation (scores, pairwise, verdicts).
"""

from .evaluation import JudgeSetup, ModelScores, Pairwise, ab_verdict, score_verdict
from .judges import EndpointJudge, Judge, JudgeUnavailable, Judgment, LocalJudge, PairItem, RateItem, ReferenceJudge
from .questions import Question, default_questions_path, read_questions

__all__ = ["EndpointJudge", "Judge", "JudgeSetup", "JudgeUnavailable", "Judgment", "LocalJudge", "ModelScores",
           "PairItem", "Pairwise", "Question", "RateItem", "ReferenceJudge", "ab_verdict", "default_questions_path",
           "read_questions", "score_verdict"]
