"""Scoring models on lm-eval tasks and generating answers, with per-item records cached by model
content hash: the engine, the prefix-sharing scorer, executors (local, Ray), generation, answer
agreement and which tasks' data is on this machine. Measures; decides nothing."""
