"""lm-eval `custom_dataset` for the family's tasks: JSONL files named relative to the task YAML.

`write_tasks` copies this file into the tasks directory, next to the YAML that names it with
`custom_dataset: !function jsonl_dataset.load`, so a built family can be moved or copied and its
tasks still find their data. Not a general loader: local JSON lines only.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(data_files: dict[str, str], **_metadata):
    """A DatasetDict of {split: JSONL path relative to this file's directory}."""
    import datasets

    files = {split: str(HERE / name) for split, name in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
