"""HumanEval: the problems and pass@k (`problems`), and the bubblewrap sandbox that runs
model-written code (`sandbox`). The lm-eval task in mergeqa/data/tasks/humaneval calls into it.
"""

from mergeqa.humaneval.problems import (
                                        DEFAULT_MEMORY_MB,
                                        DEFAULT_TIMEOUT_S,
                                        STATUSES,
                                        CheckResult,
                                        HumanEvalProblem,
                                        attack_completions,
                                        check_completion,
                                        check_completions,
                                        humaneval_data_file,
                                        load_problems,
                                        mean_pass_at_k,
                                        pass_at_k,
)

__all__ = ["DEFAULT_MEMORY_MB", "DEFAULT_TIMEOUT_S", "STATUSES", "CheckResult", "HumanEvalProblem",
           "attack_completions", "check_completion", "check_completions", "humaneval_data_file", "load_problems",
           "mean_pass_at_k", "pass_at_k"]
