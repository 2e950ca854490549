"""Root conftest of the mergeqa repository: settings for running its own test suite.

The plugin itself is loaded through its pytest11 entry point (pyproject.toml), exactly as for a
user who pip-installs mergeqa; nothing here is needed to gate a model.
"""

from mergeqa.operators import register_profiles

# hypothesis profiles for the operator kit: mergeqa-default (fast, derandomized, loaded here) and
# mergeqa-thorough (`pytest --hypothesis-profile=mergeqa-thorough`).
register_profiles()
