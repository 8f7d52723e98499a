"""Offline loader for the bundled MMLU snapshot (tasks/data/mmlu).

lm-eval 0.4.13 hands `dataset_kwargs` unchanged to `datasets.load_dataset`, so a relative
`data_files` path would be resolved against the current working directory. Instead the
task YAMLs name this function as `custom_dataset`; it finds the data relative to this file,
so the tasks load from any working directory, without network access and without the
Hugging Face cache.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import datasets

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "mmlu"


@lru_cache(maxsize=None)
def _by_subject(split: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    with gzip.open(DATA_DIR / f"{split}.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                out.setdefault(row["subject"], []).append(row)
    return out


def load_mmlu(subject: str | None = None, **_metadata) -> datasets.DatasetDict:
    """DatasetDict with `test` and `dev` splits for one subject (fields as cais/mmlu:
    question, subject, choices, answer). lm-eval passes the task metadata as extra
    keyword arguments; they are ignored."""
    if subject is None:
        raise ValueError("mmlu_snapshot: dataset_kwargs.subject is required")
    splits = {}
    for split in ("test", "dev"):
        rows = _by_subject(split).get(subject)
        if not rows:
            raise ValueError(f"mmlu_snapshot: no {split} rows for subject {subject!r} in {DATA_DIR}")
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
