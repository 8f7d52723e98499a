"""`make nightly` run for real on the CPU, shrunk to seconds through its variables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compare_runs import BENCH, real_runs, write_variant  # noqa: F401  (session fixture)
from harness.core.registry import unattended

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)

pytestmark = pytest.mark.slow


def test_backends_that_need_a_server_are_skipped():
    # what `backends: [auto]` in benchmarks/nightly.yaml runs (the CPU test below names
    # llamacpp, so that a vLLM someone installed into the venv does not make it slow)
    ok, skipped = unattended()
    assert "llamacpp" in ok
    assert "openai" not in ok and "base_url" in skipped["openai"]


def tonights_matrix(tmp_path: Path) -> Path:
    """benchmarks/nightly.yaml shrunk to seconds: the configuration of real_runs.t1."""
    pp, tg, reps = BENCH[1], BENCH[3], BENCH[5]
    path = tmp_path / "nightly.yaml"
    path.write_text(f"models: smollm2-135m\nbackends: [{{name: llamacpp, threads: 1}}]\n"
                    f"perf: {{pp: {pp}, tg: {tg}, reps: {reps}}}\n")
    return path


def test_the_nightly_matrix_is_a_valid_sweep():
    from harness.execution.matrix import load_matrix

    matrix, _, _ = load_matrix(REPO / "benchmarks" / "nightly.yaml")
    assert [b.name for b in matrix.backends] == ["auto"] and matrix.suites and matrix.cache is False


def test_make_nightly_on_cpu(real_runs, tmp_path):
    history = tmp_path / "history"
    # last night: the same configuration as tonight, so tonight is compared with it
    def last_night(d):
        d["created_at"] = "2026-01-01T03:00:00Z"
    write_variant(real_runs.file(real_runs.t1), history / "20260101T030000Z", last_night)
    out = tmp_path / "nightly"
    summary = tmp_path / "step-summary.md"
    proc = subprocess.run(
        ["make", "--no-print-directory", "-o", str(VENV / "bin" / "harness"), "nightly", f"VENV={VENV}",
         f"NIGHTLY_MATRIX={tonights_matrix(tmp_path)}", "NIGHTLY_REPORT_ARGS=--power-w 20 --kwh-price 0.3", "NIGHTLY_FAIL_ON=",
         f"NIGHTLY_OUT={out}", f"HISTORY_DIR={history}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "GITHUB_STEP_SUMMARY": str(summary)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    nights = sorted(d.name for d in history.iterdir())
    assert len(nights) == 2 and nights[0] == "20260101T030000Z"
    tonight = sorted((history / nights[1]).glob("*.json"))
    assert sorted(f.name for f in tonight)[-1] == "sweep.json" and len(tonight) == 2  # the cell's record, the summary
    (record_file,) = [f for f in tonight if f.name != "sweep.json"]
    record = json.loads(record_file.read_text())
    assert record["backend"]["name"] == "llamacpp" and record["status"] == "ok"
    # last night's file is kept as it was: the history only grows
    assert (history / nights[0] / real_runs.file(real_runs.t1).name).exists()
    compare = (out / "compare.md").read_text()
    assert compare.startswith("**harness compare** base → head: same configurations") and "tg_tps" in compare
    trend = (out / "trend.md").read_text()
    assert "2026-01-01" in trend and record["created_at"][:10] in trend and "last vs previous" in trend
    assert (out / "trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the trend as a plot too
    assert (out / "report.html").exists() and list(out.glob("report-*.png"))
    text = (out / "summary.md").read_text()
    assert f"- smollm2-135m llamacpp n_threads=1 pp{BENCH[1]},tg{BENCH[3]} x{BENCH[5]}: ok" in text
    assert summary.read_text() == text


def test_nightly_fails_on_a_regression_against_the_previous_night(real_runs, tmp_path):
    history = tmp_path / "history"

    def faster_last_night(d):  # last night ran ten times faster: tonight is a regression
        d["created_at"] = "2026-01-01T03:00:00Z"
        for p in d["perf"]:
            p["samples_tps"] = [x * 10 for x in p["samples_tps"]]
            p["samples_ms"] = [x / 10 for x in p["samples_ms"]]
            p["tps_mean"] *= 10
            p["tps_stddev"] *= 10
    write_variant(real_runs.file(real_runs.t1), history / "20260101T030000Z", faster_last_night)
    out = tmp_path / "nightly"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.commands.nightly", "--matrix", str(tonights_matrix(tmp_path)),
         "--out", str(out), "--history", str(history),
         "--fail-on", "tg_tps:-10%,accuracy:-2pt"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    text = (out / "summary.md").read_text()
    assert "**Regression:** --fail-on: 1 flagged regression(s)" in text and "tg16" in text
    assert "**Failed:** regression" in text
    # everything else was still written: the comparison, the trend table and plot, the report
    assert "tg_tps" in (out / "compare.md").read_text() and (out / "trend.png").exists() and (out / "report.html").exists()


def test_a_refused_matrix_is_reported_and_fails_the_night(tmp_path):
    bad = tmp_path / "nightly.yaml"
    bad.write_text("models: smollm2-135m\nbackends: [llamacp]\nperf: {pp: 16, tg: 8, reps: 1}\n")
    out = tmp_path / "nightly"
    proc = subprocess.run([sys.executable, "-m", "harness.commands.nightly", "--matrix", str(bad), "--out", str(out),
                           "--history", str(tmp_path / "history")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    text = (out / "summary.md").read_text()
    assert f"- matrix {bad} refused, nothing run: " in text and "did you mean llamacpp" in text
    assert "No results tonight" in text and "**Failed:** matrix" in text


def _workflow(name: str) -> dict:
    import yaml

    data = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def test_workflows_keep_fork_code_off_the_gpu_runner():
    pr, comment, nightly = _workflow("pr-bench.yml"), _workflow("pr-bench-comment.yml"), _workflow("nightly.yml")
    # the pull-request job runs the PR's code: GitHub-hosted, read-only token
    assert set(pr["on"]) == {"pull_request"} and pr["permissions"] == {"contents": "read"}
    assert all(job["runs-on"] == "ubuntu-latest" for job in pr["jobs"].values())
    # the commenting job has a write token: it checks out nothing and runs nothing from the PR
    assert set(comment["on"]) == {"workflow_run"} and comment["on"]["workflow_run"]["workflows"] == [pr["name"]]
    steps = [s for job in comment["jobs"].values() for s in job["steps"]]
    assert not any("checkout" in s.get("uses", "") for s in steps) and not any("run" in s for s in steps)
    assert "harness-pr-bench" in json.dumps(steps)  # one marked comment, updated
    # the self-hosted runner is reached only by the schedule and manual runs
    assert set(nightly["on"]) == {"schedule", "workflow_dispatch"}
    # the pull-request table compares accuracy on the quick suite as well as speed
    pr_steps = " ".join(s.get("run", "") for job in pr["jobs"].values() for s in job["steps"])
    assert "harness eval $EVAL_ARGS" in pr_steps and "--suite quick" in pr["jobs"]["bench"]["env"]["EVAL_ARGS"]
    assert "accuracy:" in pr["jobs"]["bench"]["env"]["GATE"]
    (job,) = nightly["jobs"].values()
    assert "self-hosted" in job["runs-on"] and "fork" in job["if"]
    assert any("make nightly" in s.get("run", "") for s in job["steps"])
