"""The policy: one `Verdict` type and one `decide()`, the paired tests behind statistical verdicts
(`significance`) and the thresholds they apply (`thresholds`, the schema of thresholds.toml).

Pure decisions on numbers: nothing here loads or runs a model.
"""
