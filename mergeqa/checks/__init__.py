"""The gate's built-in checks, collected by `pytest --model ...` (see mergeqa.pytest_plugin.hooks).

Each module says what it measures and which threshold applies; the engine does the work.
"""
