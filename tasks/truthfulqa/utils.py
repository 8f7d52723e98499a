"""TruthfulQA MC2 and an MC1-like variant, built from the original CSV (tasks/data/truthfulqa).

`load_truthfulqa_mc2` and `load_truthfulqa_mc1` are the tasks' `custom_dataset` (data found
relative to this file, so any working directory works); MC1 is derived at load time from the
same rows (no data file of its own). `process_results_mc2` is lm-eval's stock MC2 metric
(lm_eval/tasks/truthfulqa/utils.py), copied so this task needs none of the stock task's
extra imports (sacrebleu, rouge_score).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import numpy as np

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "truthfulqa" / "truthfulqa_mc2_csv.jsonl.gz"


def _read_rows() -> list[dict]:
    with gzip.open(DATA_FILE, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_truthfulqa_mc2(**_metadata) -> datasets.DatasetDict:
    """DatasetDict with one `validation` split (817 rows) like truthfulqa/truthful_qa
    `multiple_choice`, except that mc2_targets come from the CSV's Correct/Incorrect
    Answers (there is no mc1_targets). Extra keyword arguments are ignored."""
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(_read_rows())})


def _normalise_answer(answer: str) -> str:
    """As the data file's answers were built: stripped, a final '.' unless it ends in . ! ?"""
    answer = answer.strip()
    return answer if answer.endswith((".", "!", "?")) else answer + "."


def mc1_targets(row: dict) -> dict:
    """{choices, labels} of the MC1-like variant: the CSV's Best Answer (normalised like the
    other answers) first with label 1, then the row's incorrect_answers (already normalised)
    in their order, less any equal to the best answer, each with label 0."""
    best = _normalise_answer(row["best_answer"])
    wrong = [a for a in row["incorrect_answers"] if a != best]
    return {"choices": [best, *wrong], "labels": [1] + [0] * len(wrong)}


def load_truthfulqa_mc1(**_metadata) -> datasets.DatasetDict:
    """DatasetDict with one `validation` split (817 rows): the rows of `load_truthfulqa_mc2`
    plus `mc1_targets` (see `mc1_targets`), the layout of stock mc1_targets, but derived from
    the CSV (Best Answer vs the Incorrect Answers), not from the upstream choice file. Extra
    keyword arguments are ignored."""
    rows = [{**row, "mc1_targets": mc1_targets(row)} for row in _read_rows()]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


def process_results_mc2(doc, results):
    """Normalized probability mass on the true answers (stock lm-eval MC2)."""
    ll, _ = zip(*results)
    ll = np.array(ll)

    # Convert log-likelihoods to probabilities.
    probs = np.exp(ll)

    # Normalize probabilities.
    probs_norm = probs / np.sum(probs)

    labels = np.array(doc["mc2_targets"]["labels"])
    # Compute the normalized probability mass for the correct answer.
    pm_true = np.sum(probs_norm[labels == 1])

    return {"acc": pm_true}
