#!/usr/bin/env python3
"""Regenerate everything under tasks/ that is derived from the source data.

    python tasks/tools/build_data.py [--src /work/shared/datasets]

Reads the unchanged public originals (see tasks/README.md for origins and licenses) and
writes, deterministically (gzip mtime=0, sorted keys, fixed seeds):

  tasks/data/<dataset>/*.jsonl.gz     converted data, one JSON object per line
  tasks/data/<dataset>/LICENSE        upstream license (copied)
  tasks/data/<dataset>/ATTRIBUTION    origin, commit, license, what was changed
  tasks/mmlu_snapshot/mmlu_snapshot_<subject>.yaml              (57 files)
  tasks/mmlu_snapshot/mmlu_snapshot_generative_<subject>.yaml   (57 files)
  tasks/mmlu_snapshot/_mmlu_snapshot_quick.yaml                 (the quick suite's subjects)
  tasks/suites.yaml                   suites, with the materialized `quick` sample

Standard library only; it does not need lm-eval.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import shutil
from pathlib import Path

TASKS = Path(__file__).resolve().parent.parent
DATA = TASKS / "data"

# Subject -> category, as in lm-eval's stock mmlu (tasks/mmlu/default/*.yaml "tag").
CATEGORIES = {
    "stem": [
        "abstract_algebra", "anatomy", "astronomy", "college_biology",
        "college_chemistry", "college_computer_science", "college_mathematics",
        "college_physics", "computer_security", "conceptual_physics",
        "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science",
        "high_school_mathematics", "high_school_physics", "high_school_statistics",
        "machine_learning",
    ],
    "other": [
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts",
        "human_aging", "management", "marketing", "medical_genetics", "miscellaneous",
        "nutrition", "professional_accounting", "professional_medicine", "virology",
    ],
    "social_sciences": [
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics",
        "high_school_psychology", "human_sexuality", "professional_psychology",
        "public_relations", "security_studies", "sociology", "us_foreign_policy",
    ],
    "humanities": [
        "formal_logic", "high_school_european_history", "high_school_us_history",
        "high_school_world_history", "international_law", "jurisprudence",
        "logical_fallacies", "moral_disputes", "moral_scenarios", "philosophy",
        "prehistory", "professional_law", "world_religions",
    ],
}
SUBJECT_CATEGORY = {s: c for c, subs in CATEGORIES.items() for s in subs}

# The quick suite must leave `make bench` (pp512, tg128 and quick) under 3 minutes on 2 CPU
# cores with the 135M default model. Its cost is prompt tokens: an MMLU subject's 5-shot
# prefix is about 620 tokens (2,600 for European history), a GSM8K prompt with its own
# drawn 5 exemplars about 1,000, while TruthfulQA's documents share one 6-shot prefix. A
# subject's questions share its prefix, so each further question costs about 90 tokens:
# 6 questions from each of 8 subjects (2 per category) cost 8.5k tokens, less than one
# question from each of 16 subjects (10.8k), for three times the documents. Measured on
# 2 cores: the suite's 12.6k tokens took 90 s and 102 s (pp512 at 197 and 178 t/s), and
# make bench 119 s and 134 s; 10 questions per subject took make bench to 183 s when
# this VM's pp512 fell to 151 t/s.
QUICK_SEED = 1234
QUICK_MMLU_SUBJECTS_PER_CATEGORY = 2
QUICK_MMLU_PER_SUBJECT = 6
QUICK_SIZES = {"truthfulqa_mc2": 20, "gsm8k": 2}

ATTRIBUTION = {
    "mmlu": (
        "MMLU (Hendrycks et al. 2021, 'Measuring Massive Multitask Language Understanding'). "
        "Origin: https://github.com/hendrycks/test, commit 785eba5 (2020-09-08), data/ "
        "(an early snapshot: 14,079 test rows; the final public release has 14,042). "
        "License: MIT (LICENSE, beside this file). "
        "Converted: data/dev/*.csv, data/val/*.csv and data/test/*.csv -> dev.jsonl.gz, val.jsonl.gz, "
        "test.jsonl.gz with fields subject, question, choices [A, B, C, D], answer (0-3), rows in file "
        "order per subject, subjects in alphabetical order; text unchanged. The val split feeds the "
        "held-out two-choice task mmlu_val_binary (tasks/mmlu_val_binary)."
    ),
    "gsm8k": (
        "GSM8K (Cobbe et al. 2021, 'Training Verifiers to Solve Math Word Problems'). "
        "Origin: https://github.com/openai/grade-school-math, commit 3101c7d, "
        "grade_school_math/data/. License: MIT (LICENSE, beside this file). "
        "Converted: train.jsonl, test.jsonl -> train.jsonl.gz, test.jsonl.gz, rows and fields "
        "(question, answer) unchanged."
    ),
    "truthfulqa": (
        "TruthfulQA (Lin et al. 2022, 'TruthfulQA: Measuring How Models Mimic Human Falsehoods'). "
        "Origin: the original TruthfulQA.csv of https://github.com/sylinrl/TruthfulQA, as mirrored in "
        "https://github.com/benedictflorance/truthfulqa_experiments datasets/. "
        "License: Apache-2.0 (the upstream repository's license; LICENSE beside this file). "
        "Converted (a derived MC2 variant, NOT the upstream mc_task.json choice file): "
        "truthfulqa_mc2_csv.jsonl.gz, one row per CSV row (817), with question, type, category, "
        "best_answer, source, correct_answers, incorrect_answers, and "
        "mc2_targets {choices: correct answers then incorrect answers, labels: 1/0}, built from "
        "the '; '-separated 'Correct Answers' and 'Incorrect Answers' columns: each answer "
        "stripped, empty items dropped, exact duplicates within a list dropped, answers that appear "
        "in both lists dropped from both, and a final '.' appended when an answer does not already "
        "end in '.', '!' or '?'. "
        "Derived at load time, with no file of its own "
        "(tasks/truthfulqa/utils.py:load_truthfulqa_mc1, task truthfulqa_mc1): an MC1-like "
        "variant, NOT the upstream mc1_targets, whose mc1_targets {choices, labels} are the row's "
        "'Best Answer' (stripped, a final '.' appended when it does not already end in '.', '!' "
        "or '?') with label 1, then the row's incorrect_answers above, less any equal to it, in "
        "their order, with label 0."
    ),
    "humaneval": (
        "HumanEval (Chen et al. 2021, 'Evaluating Large Language Models Trained on Code'). "
        "Origin: https://github.com/openai/human-eval, commit 6d43fb9, data/HumanEval.jsonl.gz. "
        "License: MIT (LICENSE, beside this file). Converted: none, the file is copied byte for byte "
        "(164 problems: task_id, prompt, canonical_solution, test, entry_point)."
    ),
}


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    buf = io.BytesIO()
    # mtime=0 and no file name in the header make the output byte-reproducible.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())


def read_csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def finish(name: str, src_license: Path | None, license_text: str | None = None) -> None:
    out = DATA / name
    if src_license is not None:
        shutil.copyfile(src_license, out / "LICENSE")
    else:
        (out / "LICENSE").write_text(license_text, encoding="utf-8")
    (out / "ATTRIBUTION").write_text(ATTRIBUTION[name] + "\n", encoding="utf-8")


# ------------------------------------------------------------------------- MMLU
def build_mmlu(src: Path) -> dict[str, int]:
    out = DATA / "mmlu"
    out.mkdir(parents=True, exist_ok=True)
    subjects = sorted(p.name[: -len("_test.csv")] for p in (src / "mmlu/test").glob("*_test.csv"))
    assert sorted(subjects) == sorted(SUBJECT_CATEGORY), "subject list differs from stock mmlu"
    counts = {}
    for split in ("dev", "val", "test"):
        rows = []
        for subject in subjects:
            recs = read_csv_rows(src / f"mmlu/{split}/{subject}_{split}.csv")
            for r in recs:
                assert len(r) == 6 and r[5] in "ABCD", (subject, split, r)
                rows.append({
                    "subject": subject,
                    "question": r[0],
                    "choices": r[1:5],
                    "answer": "ABCD".index(r[5]),
                })
            if split == "test":
                counts[subject] = len(recs)
        write_jsonl_gz(out / f"{split}.jsonl.gz", rows)
    finish("mmlu", src / "mmlu/LICENSE")
    return counts


MC_TEMPLATE = """\
"task": "mmlu_snapshot_{subject}"
"task_alias": "{alias}"
"tag": "mmlu_snapshot_{category}_tasks"
"include": "_default_template_yaml"
"dataset_kwargs":
  "subject": "{subject}"
"description": "The following are multiple choice questions (with answers) about {words}.\\n\\n"
"""

GEN_TEMPLATE = """\
"task": "mmlu_snapshot_generative_{subject}"
"task_alias": "{alias}"
"tag": "mmlu_snapshot_generative_{category}_tasks"
"include": "_generative_template_yaml"
"dataset_kwargs":
  "subject": "{subject}"
"description": "The following are multiple choice questions (with answers) about {words}.\\n\\n"
"""


def write_mmlu_yamls() -> None:
    d = TASKS / "mmlu_snapshot"
    d.mkdir(exist_ok=True)
    header = "# Generated by tasks/tools/build_data.py; edit the template there, not here.\n"
    for subject, category in sorted(SUBJECT_CATEGORY.items()):
        kw = dict(subject=subject, category=category, alias=subject, words=subject.replace("_", " "))
        (d / f"mmlu_snapshot_{subject}.yaml").write_text(header + MC_TEMPLATE.format(**kw))
        (d / f"mmlu_snapshot_generative_{subject}.yaml").write_text(header + GEN_TEMPLATE.format(**kw))


# ------------------------------------------------------------------------ GSM8K
def build_gsm8k(src: Path) -> dict[str, int]:
    out = DATA / "gsm8k"
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "test"):
        with (src / f"gsm8k/{split}.jsonl").open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        for r in rows:
            assert set(r) == {"question", "answer"} and "#### " in r["answer"]
        write_jsonl_gz(out / f"{split}.jsonl.gz", rows)
        counts[split] = len(rows)
    finish("gsm8k", src / "gsm8k/LICENSE")
    return counts


# ------------------------------------------------------------------- TruthfulQA
def _split_answers(cell: str) -> list[str]:
    seen, out = set(), []
    for a in cell.split(";"):
        a = a.strip()
        if a and a not in seen:
            seen.add(a)
            out.append(a)
    return out


def _with_period(a: str) -> str:
    return a if a.endswith((".", "!", "?")) else a + "."


def build_truthfulqa(src: Path, apache_license: Path) -> int:
    out = DATA / "truthfulqa"
    out.mkdir(parents=True, exist_ok=True)
    with (src / "truthfulqa/TruthfulQA.csv").open(newline="", encoding="utf-8") as fh:
        recs = list(csv.DictReader(fh))
    rows = []
    for r in recs:
        correct = _split_answers(r["Correct Answers"])
        incorrect = _split_answers(r["Incorrect Answers"])
        both = set(correct) & set(incorrect)
        correct = [_with_period(a) for a in correct if a not in both]
        incorrect = [_with_period(a) for a in incorrect if a not in both]
        assert correct and incorrect, r["Question"]
        assert len(set(correct + incorrect)) == len(correct + incorrect), r["Question"]
        rows.append({
            "type": r["Type"],
            "category": r["Category"],
            "question": r["Question"].strip(),
            "best_answer": r["Best Answer"].strip(),
            "correct_answers": correct,
            "incorrect_answers": incorrect,
            "mc2_targets": {
                "choices": correct + incorrect,
                "labels": [1] * len(correct) + [0] * len(incorrect),
            },
            "source": r["Source"],
        })
    write_jsonl_gz(out / "truthfulqa_mc2_csv.jsonl.gz", rows)
    text = (
        "TruthfulQA (https://github.com/sylinrl/TruthfulQA) is licensed under the Apache License,\n"
        "Version 2.0. The text of that license follows.\n\n" + apache_license.read_text(encoding="utf-8")
    )
    finish("truthfulqa", None, text)
    return len(rows)


# -------------------------------------------------------------------- HumanEval
def build_humaneval(src: Path) -> int:
    out = DATA / "humaneval"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "humaneval/HumanEval.jsonl.gz", out / "HumanEval.jsonl.gz")
    with gzip.open(out / "HumanEval.jsonl.gz", "rt", encoding="utf-8") as fh:
        n = sum(1 for line in fh if line.strip())
    finish("humaneval", src / "humaneval/LICENSE")
    return n


# ----------------------------------------------------------------------- suites
def sample_indices(task: str, n_docs: int, k: int, seed: int = QUICK_SEED) -> list[int]:
    """The fixed sample: k distinct doc indices of `task`'s evaluation split, sorted.

    A string seed is hashed (sha512) by random.Random, so this is stable across
    Python versions and platforms; one generator per leaf task keeps tasks independent.
    """
    rng = random.Random(f"{seed}:{task}")
    return sorted(rng.sample(range(n_docs), min(k, n_docs)))


SUITES_HEADER = """\
# Benchmark suites over the bundled tasks in this directory.
# Generated by tasks/tools/build_data.py (edit the template there; the `samples` lists
# are materialized from the seed so a loader never has to re-derive them).
#
# Format (format_version 1):
#   suites.<name>.description           one line, for --help / listings
#   suites.<name>.tasks                 lm-eval task or group names, passed as given to
#                                       TaskManager(include_path=<tasks dir>).load(...) or
#                                       simple_evaluate(tasks=...)
#   suites.<name>.code_execution_tasks  tasks that execute model-written code; run them only
#                                       when the user opted in (--allow-code-execution, which
#                                       sets HARNESS_ALLOW_CODE_EXECUTION=1 and must pass
#                                       confirm_run_unsafe_code=True), else skip and record why
#   suites.<name>.requires_loglikelihood  true when some task scores log-likelihoods (a chat
#                                       API without logprobs cannot run the suite)
#   suites.<name>.letter_tasks          (optional) multiple-choice tasks or groups of the suite
#                                       scored by letters (harness/measurement/letters.py), as with
#                                       `harness eval --mc-scoring letters`
#   suites.<name>.sample                (optional) how `samples` was drawn: seed, sizes
#   suites.<name>.samples               (optional) leaf task name -> sorted, distinct doc
#                                       indices into that task's evaluation split; pass as
#                                       simple_evaluate(samples=...) (do not also pass limit).
#                                       When present, every leaf task of the suite is listed
#                                       (lm-eval runs a leaf that is absent IN FULL).
# This file sits in the task directory, but lm-eval's task index skips it (it has no
# top-level `task` or `group` key).
format_version: 1
suites:
"""


def quick_mmlu_subjects(seed: int = QUICK_SEED) -> list[str]:
    """The quick suite's MMLU subjects: a seeded draw from each category, sorted."""
    picked: list[str] = []
    for category, subjects in CATEGORIES.items():
        rng = random.Random(f"{seed}:mmlu_snapshot_quick:{category}")
        picked += rng.sample(sorted(subjects), QUICK_MMLU_SUBJECTS_PER_CATEGORY)
    return sorted(picked)


def write_quick_mmlu_group(subjects: list[str]) -> None:
    leaves = "".join(f"  - mmlu_snapshot_{s}\n" for s in subjects)
    (TASKS / "mmlu_snapshot" / "_mmlu_snapshot_quick.yaml").write_text(f"""\
# Generated by tasks/tools/build_data.py (quick_mmlu_subjects); edit it there, not here.
# The quick suite's part of the bundled MMLU snapshot: {len(subjects)} subjects drawn with seed
# {QUICK_SEED}, {QUICK_MMLU_SUBJECTS_PER_CATEGORY} per category ({QUICK_MMLU_PER_SUBJECT} questions each: suites.yaml), the same
# prompts as mmlu_snapshot.
# A score of this group is not an mmlu_snapshot score, so it carries its own name.
group: mmlu_snapshot_quick
group_alias: mmlu_snapshot_quick
task:
{leaves}aggregate_metric_list:
  - metric: acc
    weight_by_size: true
metadata:
  version: 1
""", encoding="utf-8")


def write_suites(mmlu_counts: dict[str, int], n_tqa: int, n_gsm: int) -> None:
    subjects = quick_mmlu_subjects()
    write_quick_mmlu_group(subjects)
    samples: dict[str, list[int]] = {}
    for subject in subjects:
        leaf = f"mmlu_snapshot_{subject}"
        samples[leaf] = sample_indices(leaf, mmlu_counts[subject], QUICK_MMLU_PER_SUBJECT)
    samples["truthfulqa_mc2"] = sample_indices("truthfulqa_mc2", n_tqa, QUICK_SIZES["truthfulqa_mc2"])
    samples["gsm8k"] = sample_indices("gsm8k", n_gsm, QUICK_SIZES["gsm8k"])
    n_mmlu = sum(len(v) for k, v in samples.items() if k.startswith("mmlu_snapshot_"))
    per = QUICK_MMLU_SUBJECTS_PER_CATEGORY

    lines = [SUITES_HEADER]
    lines.append(f"""\
  # quick: a smoke-sized, fixed sample (same docs every run, every machine) that keeps
  # `make bench` under 3 minutes on 2 CPU cores with a ~135M model: {n_mmlu} MMLU questions
  # ({QUICK_MMLU_PER_SUBJECT} from each of {len(subjects)} subjects, {per} per category: group mmlu_snapshot_quick),
  # {QUICK_SIZES['truthfulqa_mc2']} TruthfulQA MC2, {QUICK_SIZES['gsm8k']} GSM8K generations; no code execution.
  # Scores on it have wide error bars (use for plumbing and regressions, not for claims).
  quick:
    description: "Fixed seeded sample: {n_mmlu} MMLU (mmlu_snapshot_quick: {QUICK_MMLU_PER_SUBJECT} from each of {len(subjects)} subjects), {QUICK_SIZES['truthfulqa_mc2']} truthfulqa_mc2, {QUICK_SIZES['gsm8k']} gsm8k; about 2 minutes on 2 CPU cores"
    tasks: [mmlu_snapshot_quick, truthfulqa_mc2, gsm8k]
    code_execution_tasks: []
    requires_loglikelihood: true
    sample:
      seed: {QUICK_SEED}
      sizes: {{mmlu_snapshot_quick: "{per} subjects per category, {QUICK_MMLU_PER_SUBJECT} questions each", truthfulqa_mc2: {QUICK_SIZES['truthfulqa_mc2']}, gsm8k: {QUICK_SIZES['gsm8k']}}}
      subjects: "sorted(random.Random(f'{{seed}}:mmlu_snapshot_quick:{{category}}').sample(sorted(category_subjects), {per}))"
      method: "sorted(random.Random(f'{{seed}}:{{leaf_task}}').sample(range(n_docs), k))"
    samples:
""")
    for leaf, idx in samples.items():
        lines.append(f"      {leaf}: [{', '.join(map(str, idx))}]\n")
    lines.append("""\

  # standard: every bundled set in full, in its reference form (MMLU 5-shot log-likelihood
  # letters, TruthfulQA MC2, GSM8K 5-shot, HumanEval pass@1 when code execution is allowed).
  standard:
    description: "All bundled sets in full: mmlu_snapshot, truthfulqa_mc2, gsm8k, humaneval (if code execution is allowed)"
    tasks: [mmlu_snapshot, truthfulqa_mc2, gsm8k, humaneval]
    code_execution_tasks: [humaneval]
    requires_loglikelihood: true

  # open-vs-closed: what a chat API can run, the same way on both sides: the generative
  # forms (the same prompts and answer extraction), and the multiple-choice sets scored by
  # letters (lettered choices through the chat template, the letters' probabilities at the
  # first generated token: harness/measurement/letters.py). HumanEval joins only with --allow-code-execution.
  open-vs-closed:
    description: "What chat APIs can run: mmlu_snapshot_generative, gsm8k, mmlu_snapshot and truthfulqa_mc1 scored by letters, humaneval (if code execution is allowed)"
    tasks: [mmlu_snapshot_generative, gsm8k, mmlu_snapshot, truthfulqa_mc1, humaneval]
    code_execution_tasks: [humaneval]
    letter_tasks: [mmlu_snapshot, truthfulqa_mc1]
    requires_loglikelihood: false
""")
    (TASKS / "suites.yaml").write_text("".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=Path("/work/shared/datasets"))
    ap.add_argument("--apache-license", type=Path, default=None,
                    help="a copy of the Apache-2.0 license text (for TruthfulQA); "
                         "default: keep tasks/data/truthfulqa/LICENSE's text if present")
    args = ap.parse_args()

    apache = args.apache_license
    if apache is None:
        existing = DATA / "truthfulqa/LICENSE"
        if not existing.exists():
            raise SystemExit("pass --apache-license PATH (the Apache-2.0 text) on a first build")
        text = existing.read_text(encoding="utf-8")
        marker = "The text of that license follows.\n\n"
        tmp = DATA / "truthfulqa/.apache.tmp"
        tmp.write_text(text.split(marker, 1)[1] if marker in text else text, encoding="utf-8")
        apache = tmp
    mmlu_counts = build_mmlu(args.src)
    write_mmlu_yamls()
    gsm = build_gsm8k(args.src)
    n_tqa = build_truthfulqa(args.src, apache)
    if apache.name == ".apache.tmp":
        apache.unlink()
    n_he = build_humaneval(args.src)
    write_suites(mmlu_counts, n_tqa, gsm["test"])
    print(f"mmlu test rows: {sum(mmlu_counts.values())} over {len(mmlu_counts)} subjects")
    print(f"gsm8k: {gsm}; truthfulqa: {n_tqa}; humaneval: {n_he}")


if __name__ == "__main__":
    main()
