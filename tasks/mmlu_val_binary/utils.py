"""Offline loader for mmlu_val_binary: MMLU's val split (tasks/data/mmlu/val.jsonl.gz) as
two-choice questions.

Each question keeps its correct answer and one wrong one, the choice after the correct
answer in the original order (D wraps to A); the correct answer comes first in
even-numbered rows and second in odd-numbered rows, so a model that always picks the
same position scores 50%. The data is found relative to this file (no network, any
working directory), as tasks/mmlu_snapshot/utils.py does.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets

DATA = Path(__file__).resolve().parent.parent / "data" / "mmlu" / "val.jsonl.gz"


def two_choice(row: dict, index: int) -> dict:
    right = row["answer"]
    wrong = (right + 1) % 4
    pair = [row["choices"][right], row["choices"][wrong]]
    label = index % 2
    if label:
        pair.reverse()
    return {"subject": row["subject"], "question": row["question"], "choices": pair, "answer": label}


def load_mmlu_val_binary(**_metadata) -> datasets.DatasetDict:
    """DatasetDict with one `test` split of 1,542 two-choice questions (question, subject,
    choices [2], answer 0/1). lm-eval's extra keyword arguments (task metadata) are ignored."""
    with gzip.open(DATA, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list([two_choice(r, i) for i, r in enumerate(rows)])})
