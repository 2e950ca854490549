"""What every layer may import: errors (misuse vs bug), failure messages, the on-disk cache,
thread settings and the run-wide state (pytest stash keys, package paths). Imports nothing above it."""
