"""The `mergeqa` command: `gate`, `family`, `init` and `plan` (see `mergeqa --help`)."""

from mergeqa.cli.main import main

__all__ = ["main"]
