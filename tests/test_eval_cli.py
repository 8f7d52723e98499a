"""`harness eval` as a user runs it: bundled tasks offline, bad input, real small runs.

Real runs use --threads 1: on a machine shared with other jobs, two spinning OpenMP
threads per small llama_decode call cost seconds each; one thread does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "tasks"
PLUGINS = Path(__file__).parent / "eval_plugins"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def _files(out: Path) -> list[Path]:
    return list(out.rglob("*")) if out.exists() else []


def _assert_refused(res, out: Path, *needles: str) -> str:
    assert res.code != 0, res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in lines[0], lines[0]
    assert _files(out) == [], "a refused run must write nothing"
    return lines[0]


# ----------------------------------------------------------------------------- tasks, offline


def test_bundled_tasks_load_offline(tmp_path):
    """Every bundled task builds with no network, from any working directory; the quick
    suite's fixed sample lists every leaf task (lm-eval runs a leaf missing from samples= in full)."""
    code = """
import json
from harness.measurement.eval_tasks import load_tasks, quiet_lm_eval
from harness.measurement.suites import bundled_tasks_dir, get_suite
quiet_lm_eval()
lt = load_tasks(["mmlu_snapshot", "mmlu_snapshot_generative", "gsm8k", "truthfulqa_mc2", "humaneval"], [str(bundled_tasks_dir())])
docs = {n: len(list(t.eval_docs)) for n, t in lt.leaves.items()}
quick = get_suite("quick")
leaves = set(load_tasks(quick.tasks, [str(bundled_tasks_dir())]).leaves)
print(json.dumps({"docs": docs, "types": lt.output_types(), "code": lt.executing_code(),
                  "logprobs": sorted(set(lt.needing_logprobs())), "quick_leaves": sorted(leaves),
                  "quick_samples": quick.samples}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    docs, types = out["docs"], out["types"]
    assert sum(v for k, v in docs.items() if k.startswith("mmlu_snapshot_") and "generative" not in k) == 14079
    assert sum(v for k, v in docs.items() if k.startswith("mmlu_snapshot_generative_")) == 14079
    assert len([k for k in docs if k.startswith("mmlu_snapshot_generative_")]) == 57
    assert (docs["gsm8k"], docs["truthfulqa_mc2"], docs["humaneval"]) == (1319, 817, 164)
    assert types["truthfulqa_mc2"] == "multiple_choice" and types["gsm8k"] == "generate_until"
    assert types["mmlu_snapshot_anatomy"] == "multiple_choice"
    assert types["mmlu_snapshot_generative_anatomy"] == "generate_until"
    assert out["code"] == ["humaneval"]
    assert "gsm8k" not in out["logprobs"] and "truthfulqa_mc2" in out["logprobs"]
    samples = out["quick_samples"]
    # 8 MMLU subjects (2 from each category, six questions each), TruthfulQA and GSM8K
    assert set(samples) == set(out["quick_leaves"]) and len(samples) == 10
    mmlu = [k for k in samples if k.startswith("mmlu_snapshot_")]
    assert len(mmlu) == 8 and all(len(samples[k]) == 6 for k in mmlu)
    assert (len(samples["truthfulqa_mc2"]), len(samples["gsm8k"])) == (20, 2)
    for name, idx in samples.items():
        assert idx == sorted(set(idx)) and idx and max(idx) < docs[name], name


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def broken_dir(tmp_path):
    d = tmp_path / "mytasks"
    d.mkdir()
    (d / "fine.yaml").write_text("task: fine_task\noutput_type: generate_until\n")
    (d / "broken.yaml").write_text("task: broken_task\noutput_type: generate_until\ndoc_to_text: [unclosed\nother: 1\n")
    return d


@pytest.fixture
def missing_data_dir(tmp_path):
    """A copy of the bundled truthfulqa task whose data file is not there."""
    d = tmp_path / "copied"
    shutil.copytree(TASKS / "truthfulqa", d / "truthfulqa")
    (d / "data" / "truthfulqa").mkdir(parents=True)
    return d


def test_unknown_task_lists_close_matches(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("eval", "--tasks", "mmlu_snaphot", "--limit", "1", "--out", str(out), env=OFFLINE)
    line = _assert_refused(res, out, "unknown task 'mmlu_snaphot'", "mmlu_snapshot")
    assert "close matches" in line


@pytest.mark.parametrize("case, args, needles", [
    ("unknown suite", ["--suite", "quik"], ["unknown suite 'quik'", "quick"]),
    ("no tasks", [], ["--tasks", "--suite"]),
    ("both", ["--tasks", "gsm8k", "--suite", "quick"], ["either"]),
    ("limit 0", ["--tasks", "gsm8k", "--limit", "0"], ["--limit: 0 is neither a count of at least 1 nor a fraction"]),
    ("negative shots", ["--tasks", "gsm8k", "--num-fewshot", "-1"], ["--num-fewshot"]),
    ("empty name", ["--tasks", "gsm8k,,truthfulqa_mc2"], ["empty name"]),
    ("code execution", ["--tasks", "humaneval", "--limit", "1"], ["humaneval", "--allow-code-execution"]),
    ("missing tasks dir", ["--tasks", "gsm8k", "--tasks-dir", "/nonexistent/tasks"], ["/nonexistent/tasks", "no such folder"]),
    ("unknown backend", ["--tasks", "gsm8k", "--backend", "llamacp"], ["unknown backend 'llamacp'"]),
    ("bad format", ["--tasks", "gsm8k", "--format", "xml"], ["--format"]),
    ("no server", ["--tasks", "gsm8k", "--backend", "openai"], ["needs the server's address: give --base-url URL"]),
    ("server option", ["--tasks", "gsm8k", "--base-url", "http://127.0.0.1:9/v1"], ["--base-url is for --backend openai"]),
    ("bad api", ["--tasks", "gsm8k", "-b", "openai", "--base-url", "http://127.0.0.1:9/v1", "--api", "soap"],
     ["openai setting 'api'"]),
    ("setting list", ["--tasks", "gsm8k", "--set", "n_threads=1,2"], ["--set n_threads: one value per evaluation"]),
    ("unknown setting", ["--tasks", "gsm8k", "--set", "base_urll=x"], ["backend 'llamacpp' has no setting 'base_urll'"]),
])
def test_bad_input_one_line(cli, tmp_path, case, args, needles):
    out = tmp_path / "out"
    res = cli("eval", *args, "--out", str(out), env=OFFLINE)
    _assert_refused(res, out, *needles)


def test_task_yaml_that_does_not_parse_names_file_and_line(cli, tmp_path, broken_dir):
    out = tmp_path / "out"
    res = cli("eval", "--tasks", "fine_task", "--tasks-dir", str(broken_dir), "--out", str(out), env=OFFLINE)
    _assert_refused(res, out, f"{broken_dir / 'broken.yaml'}:4", "does not parse")


def test_missing_data_file(cli, tmp_path, missing_data_dir):
    out = tmp_path / "out"
    res = cli("eval", "--tasks", "truthfulqa_mc2", "--tasks-dir", str(missing_data_dir), "--limit", "1",
              "--out", str(out), env=OFFLINE)
    _assert_refused(res, out, "truthfulqa_mc2", "data file is missing", "truthfulqa_mc2_csv.jsonl.gz")


@pytest.mark.slow
def test_backend_without_logprobs_is_told_what_it_can_run(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("eval", "--backend", "llamacpp-nologprobs", "--tasks", "mmlu_snapshot_anatomy,gsm8k", "--limit", "1",
              "--out", str(out), env={**OFFLINE, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{REPO}"})
    _assert_refused(res, out, "mmlu_snapshot_anatomy scores log-likelihoods, which needs a batch scorer or a step decoder",
                    "(backend 'llamacpp-nologprobs' has a text generator only)", "of the tasks asked for it can run gsm8k",
                    "the suite open-vs-closed runs on it")


# ----------------------------------------------------------------------------- real runs


RUN = ["--tasks", "truthfulqa_mc2,mmlu_snapshot_anatomy,mmlu_snapshot_generative_anatomy", "--limit", "3",
       "--threads", "1"]


@pytest.mark.slow
def test_small_real_eval_run_and_cached_rerun(cli, tmp_path):
    from harness.output.store import read_record

    out = tmp_path / "out"
    res = cli("eval", *RUN, "--format", "json", "--out", str(out), env=OFFLINE)
    assert res.code == 0, res.stderr[-3000:]
    (rec,) = res.json()
    assert rec["status"] == "ok" and rec["model"]["ref"] == "smollm2-135m"
    acc = {(a["task"], a["metric"], a["filter"]): a for a in rec["accuracy"]}
    tqa = acc[("truthfulqa_mc2", "acc", "none")]
    assert 0 <= tqa["value"] <= 1 and tqa["n"] == 3 and tqa["n_total"] == 817 and tqa["num_fewshot"] == 0
    assert tqa["alias"] == "truthfulqa_mc2 (CSV variant)" and tqa["stderr"] is not None
    anatomy = acc[("mmlu_snapshot_anatomy", "acc", "none")]
    assert anatomy["num_fewshot"] == 5 and anatomy["value"] in (0, 1 / 3, 2 / 3, 1)
    assert ("mmlu_snapshot_generative_anatomy", "exact_match", "strict-match") in acc
    assert ("mmlu_snapshot_generative_anatomy", "exact_match", "flexible-extract") in acc
    assert all(len(a["task_config_hash"]) == 64 for a in rec["accuracy"])
    ev = rec["evaluation"]
    assert ev["lm_eval_version"] == "0.4.13" and ev["limit"] == 3 and ev["num_fewshot"] is None
    assert set(ev["task_config_hashes"]) >= {"truthfulqa_mc2", "mmlu_snapshot_anatomy"}
    cost = ev["cost"]
    assert cost["requests_loglikelihood"] > 3 * 4 and cost["requests_generate"] == 3
    assert 0 < cost["tokens_evaluated"] < cost["tokens_without_reuse"]
    assert cost["tokens_saved_by_reuse"] == cost["tokens_without_reuse"] - cost["tokens_evaluated"]
    assert cost["model_load_s"] > 0 and cost["wall_s"] > cost["model_load_s"]
    assert rec["backend"]["settings"]["n_threads"] == 1 and rec["backend"]["settings"]["n_ctx"] >= 1024
    (path,) = out.glob("*.json")
    assert read_record(path).accuracy[0].task == rec["accuracy"][0]["task"]

    shown = cli("show", str(path))
    assert shown.code == 0
    assert "truthfulqa_mc2 (CSV variant)" in shown.stdout and "± " in shown.stdout and "saved by context reuse" in shown.stdout
    assert "  - anatomy" not in shown.stdout  # top-level tasks are not indented

    # same model file, backend and settings: every answer comes from lm-eval's request cache
    again = cli("eval", *RUN, "--format", "json", "--out", str(out), env=OFFLINE)
    assert again.code == 0, again.stderr[-3000:]
    (rec2,) = again.json()
    assert rec2["evaluation"]["cost"]["tokens_evaluated"] == 0
    assert [a["value"] for a in rec2["accuracy"]] == [a["value"] for a in rec["accuracy"]]
    assert rec2["evaluation"]["request_cache"] == ev["request_cache"] and Path(ev["request_cache"]).exists()


@pytest.mark.slow
def test_chat_template_and_logged_samples(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("eval", "--tasks", "mmlu_snapshot_generative_anatomy", "--limit", "1", "--threads", "1",
              "--apply-chat-template", "--log-samples", "--no-cache", "--format", "json", "--out", str(out), env=OFFLINE)
    assert res.code == 0, res.stderr[-3000:]
    (rec,) = res.json()
    ev = rec["evaluation"]
    assert ev["apply_chat_template"] and len(ev["chat_template_sha256"]) == 64 and ev["request_cache"] is None
    samples = [json.loads(line) for line in Path(ev["samples_file"]).read_text().splitlines()]
    assert {s["task"] for s in samples} == {"mmlu_snapshot_generative_anatomy"}
    context = samples[0]["arguments"][0][0] if isinstance(samples[0]["arguments"][0], list) else samples[0]["arguments"]["gen_args_0"]["arg_0"]
    # the request is the conversation (what a chat API would be sent) ...
    messages = json.loads(context)
    assert messages[0]["role"] == "system" and "anatomy" in messages[0]["content"] and messages[-1]["role"] == "user"
    # ... and beside it the text the model's chat template rendered it to
    prompt = samples[0]["rendered_prompt"]
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert messages[-1]["content"].strip() in prompt


@pytest.mark.slow
def test_a_crash_while_scoring_becomes_a_failed_record(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("eval", "--backend", "llamacpp-crash-in-eval", "--tasks", "truthfulqa_mc2", "--limit", "2",
              "--threads", "1", "--no-cache", "--format", "json", "--out", str(out),
              env={**OFFLINE, "PYTHONPATH": f"{PLUGINS}{os.pathsep}{REPO}"})
    assert res.code == 1
    assert "Traceback" not in res.stderr
    (rec,) = res.json()
    assert rec["status"] == "failed" and rec["accuracy"] == []
    assert "SIGSEGV" in rec["failures"][0]["cause"]
    assert len(list(out.glob("*.json"))) == 1
