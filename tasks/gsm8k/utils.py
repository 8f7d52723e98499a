"""Offline loader for the bundled GSM8K (tasks/data/gsm8k).

Used as `custom_dataset` so the data is found relative to this file (lm-eval 0.4.13 would
resolve a relative `dataset_kwargs.data_files` against the current working directory).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "gsm8k"


def _read(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_gsm8k(**_metadata) -> datasets.DatasetDict:
    """DatasetDict with `train` (7,473; the few-shot pool) and `test` (1,319) splits, fields
    question and answer, as openai/gsm8k `main`. Extra keyword arguments (lm-eval passes the
    task metadata) are ignored."""
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_list(_read(DATA_DIR / f"{split}.jsonl.gz")) for split in ("train", "test")}
    )
