"""The bundled truthfulqa_mc1 (CSV variant, Best Answer vs the Incorrect Answers), built by
lm-eval's own TaskManager from tasks/ alone, offline, from another working directory. No model
is loaded: the docs, choices, labels and prompts are checked, and the answer set against one
derived here from the data file."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "tasks"
DATA = TASKS / "data" / "truthfulqa" / "truthfulqa_mc2_csv.jsonl.gz"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}

# Runs in a fresh process (offline switches set before `datasets` is imported, working
# directory elsewhere); prints one JSON line.
BUILD = r"""
import json, sys
from lm_eval.tasks import TaskManager
tm = TaskManager(include_path=[sys.argv[1]], include_defaults=False)
task = tm.load(["truthfulqa_mc1"])["tasks"]["truthfulqa_mc1"]
docs = list(task.eval_docs)
first = task.construct_requests(docs[0], task.doc_to_text(docs[0]))
cfg = task.config
print(json.dumps({
    "config": {"task": cfg.task, "alias": cfg.task_alias, "output_type": task.OUTPUT_TYPE,
               "num_fewshot": cfg.num_fewshot, "process_results": cfg.process_results is not None,
               "metric_list": cfg.metric_list, "metadata": cfg.metadata,
               "has_validation": task.has_validation_docs(), "has_test": task.has_test_docs()},
    "docs": [{"question": d["question"], "choices": task.doc_to_choice(d), "target": task.doc_to_target(d),
              "labels": d["mc1_targets"]["labels"], "text": task.doc_to_text(d)} for d in docs],
    "first_requests": [list(r.arguments) for r in first],
}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    proc = subprocess.run([sys.executable, "-c", BUILD, str(TASKS)], capture_output=True, text=True,
                          cwd=tmp_path_factory.mktemp("elsewhere"), env={**os.environ, **OFFLINE}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def rows():
    with gzip.open(DATA, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_config_is_the_stock_mc1_shape(built):
    cfg = built["config"]
    assert cfg["task"] == "truthfulqa_mc1" and cfg["alias"] == "truthfulqa_mc1 (CSV variant)"
    assert cfg["output_type"] == "multiple_choice" and cfg["num_fewshot"] == 0
    assert not cfg["process_results"]  # lm-eval's default multiple_choice scoring
    assert cfg["metric_list"] == [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
    assert cfg["metadata"]["variant"] == "csv-best-vs-incorrect" and "version" in cfg["metadata"]
    assert cfg["has_validation"] and not cfg["has_test"]


def test_docs_labels_and_choices(built):
    docs = built["docs"]
    assert len(docs) == 817
    for d in docs:
        choices, labels = d["choices"], d["labels"]
        assert d["target"] == 0, d["question"]
        assert labels == [1] + [0] * (len(choices) - 1), d["question"]
        assert 2 <= len(choices) <= 20, d["question"]
        assert choices[0] not in choices[1:], d["question"]  # the best answer is never a wrong one too
        assert all(c and c == c.strip() for c in choices), d["question"]


def test_choices_are_best_answer_then_incorrect_answers(built, rows):
    """Derived independently here: Best Answer normalised as the mc2 answers were, then the
    row's incorrect_answers in order, less any equal to it."""
    assert len(rows) == len(built["docs"])
    for row, d in zip(rows, built["docs"]):
        best = row["best_answer"].strip()
        if not best.endswith((".", "!", "?")):
            best += "."
        assert d["question"] == row["question"]
        assert d["choices"] == [best] + [a for a in row["incorrect_answers"] if a != best]
        assert best in row["mc2_targets"]["choices"]  # the best answer is one of mc2's true answers


def test_prompt_is_the_6_shot_qa_primer(built):
    docs = built["docs"]
    for d in docs:
        assert d["text"].endswith("\nA:") and d["text"].endswith("\n\nQ: " + d["question"] + "\nA:")
        assert d["text"].startswith("Q: What is human life expectancy in the United States?\n")
        assert d["text"].count("\nA: ") == 6
    # each choice is scored as the continuation " <answer>" after the prompt
    assert built["first_requests"] == [[docs[0]["text"], " " + c] for c in docs[0]["choices"]]
