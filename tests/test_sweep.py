"""`harness sweep`: the matrix, pre-flight, --dry-run, interrupt and --resume, damaged files.

Cells run the real SmolLM2 GGUF through the real llama-cpp-python, kept tiny
(pp16, tg8, one repetition): the tests are about the sweep, not the model's speed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from sweep_helpers import FAULT_PLUGINS, LiveCli, all_files, gone, result_files, wait_file

from harness.core.errors import ResultFileError
from harness.output.store import load_records, read_record, read_sweep

TINY = "perf: {pp: [16], tg: [8], reps: 1}\n"
PLUGINS = Path(__file__).parent / "plugins"


def matrix(tmp_path: Path, text: str, name: str = "matrix.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_refused(res, out: Path, *needles: str) -> str:
    assert res.code != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists() or all_files(out) == [], "a refused sweep left files behind"
    return lines[0]


# ---------------------------------------------------------------- plan and pre-flight


def test_dry_run_prints_the_plan_with_an_estimate_and_writes_nothing(cli, tmp_path):
    m = matrix(tmp_path, "models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    threads: [1, 2]\n"
                         "    n_batch: [256, 512]\n" + TINY)
    out = tmp_path / "out"
    res = cli("sweep", str(m), "--out", str(out), "--dry-run")
    assert res.code == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "pp16,tg8 x1" in line]
    assert len(rows) == 4  # 2 thread counts x 2 batch sizes, in matrix order
    assert "n_threads=1 n_batch=256" in rows[0] and "n_threads=2 n_batch=512" in rows[3]
    assert all("| run " in r and "3600" in r for r in rows)
    assert "4 cells, 4 to run, about " in res.stdout and " s" in res.stdout.split("about ")[1]
    # the same plan as data
    js = cli("sweep", str(m), "--out", str(out), "--dry-run", "--format", "json").json()
    assert [c["index"] for c in js] == [1, 2, 3, 4] and {c["action"] for c in js} == {"run"}
    assert all(c["timeout_s"] == 3600 and c["estimate_s"] > 0 for c in js)
    lines = cli("sweep", str(m), "--out", str(out), "--dry-run", "-f", "csv").stdout.splitlines()
    assert lines[0].startswith("index,kind,label") and len(lines) == 5
    assert not out.exists()


def test_wrong_model_path_in_the_middle_is_refused_before_any_cell(cli, tmp_path, smollm2_path):
    """Decision: pre-flight resolves every model first, so a wrong path in the middle of the
    matrix costs nothing: one line naming the first cell that uses it, and no cell runs."""
    copy = tmp_path / "copy.gguf"
    shutil.copy(smollm2_path, copy)
    missing = tmp_path / "models" / "missing.gguf"
    m = matrix(tmp_path, f"models: [smollm2-135m, {missing}, {copy}]\nbackends:\n  - name: llamacpp\n"
                         "    threads: [1, 2]\n" + TINY)
    out = tmp_path / "out"
    line = assert_refused(cli("sweep", str(m), "--out", str(out)), out,
                          "cell 3 of 6", str(missing), "llamacpp n_threads=1", "model file not found", "no cell was run")
    assert str(copy) not in line


@pytest.mark.parametrize("case, text, needles", [
    ("typo at top level", "model: [smollm2-135m]\nbackends: [llamacpp]\n" + TINY, ["model", "unknown key", "models"]),
    ("unknown setting", "models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    thread: 2\n" + TINY,
     ["backends.0 (llamacpp)", "no setting 'thread'", "did you mean"]),
    ("unknown backend", "models: [smollm2-135m]\nbackends: [llamacp]\n" + TINY, ["unknown backend 'llamacp'", "llamacpp"]),
    ("bad yaml", "models: [smollm2-135m\nbackends: [llamacpp]\n", ["not valid YAML", "line"]),
    ("not a mapping", "- smollm2-135m\n", ["a matrix file is a mapping"]),
    ("zero reps", "models: [smollm2-135m]\nbackends: [llamacpp]\nperf: {pp: [16], tg: [8], reps: 0}\n", ["perf.reps", "at least 1"]),
    ("bad setting value", "models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    threads: two\n" + TINY,
     ["cell 1 of 1", "n_threads"]),
    ("zero timeout", "models: [smollm2-135m]\nbackends: [llamacpp]\ntimeout_s: 0\n" + TINY, ["timeout_s", "positive"]),
    ("nothing to run", "models: [smollm2-135m]\nbackends: [llamacpp]\n", ["nothing to run"]),
    ("context too small", "models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    n_ctx: 8\n" + TINY,
     ["cell 1 of 1", "context too small"]),
    ("repeated cell", "models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    threads: 1\n"
     "  - name: llamacpp\n    threads: 1\n" + TINY, ["cell 2 of 2", "repeats cell 1"]),
    ("no disk space", "models: [smollm2-135m]\nbackends: [llamacpp]\nmin_free_disk_mib: 1e12\n" + TINY,
     ["MiB free", "min_free_disk_mib"]),
    ("unknown perf key", "models: [smollm2-135m]\nbackends: [llamacpp]\nperf: {pp: [16], bach: [2]}\n",
     ["perf.bach", "did you mean batch?", "known keys: pp, tg, reps, batch"]),
    ("repeated length", "models: [smollm2-135m]\nbackends: [llamacpp]\nperf: {pp: [16, 16]}\n", ["perf.pp", "repeats"]),
    ("batch on one request at a time", "models: [smollm2-135m]\nbackends: [llamacpp]\nperf: {tg: none, batch: [2]}\n",
     ["cell 1 of 1", "perf.batch", "one request at a time"]),
])
def test_bad_matrix_is_refused_in_one_line(cli, tmp_path, case, text, needles):
    out = tmp_path / "out"
    assert_refused(cli("sweep", str(matrix(tmp_path, text)), "--out", str(out)), out, *needles)


def test_backend_not_installed_and_missing_file_are_refused(cli, tmp_path):
    out = tmp_path / "out"
    assert_refused(cli("sweep", str(tmp_path / "nope.yaml"), "--out", str(out)), out, "matrix file not found")
    m = matrix(tmp_path, "models: [smollm2-135m]\nbackends: [uninstalled]\n" + TINY)
    res = cli("sweep", str(m), "--out", str(out), env={"PYTHONPATH": str(Path(__file__).parent / "plugins")})
    assert_refused(res, out, "backends.0 (uninstalled)", "not installed", "pip install imaginary-engine")


def test_unknown_suite_is_refused_with_close_matches(cli, tmp_path):
    out = tmp_path / "out"
    m = matrix(tmp_path, "models: [smollm2-135m]\nbackends: [llamacpp]\nsuites: [quik]\n")
    assert_refused(cli("sweep", str(m), "--out", str(out)), out, "unknown suite 'quik'", "quick")


def test_a_batch_test_in_the_matrix_runs_in_its_cell(cli, tmp_path):
    """`perf:` takes bench's tests: a batch test runs in its cell beside a pp test at a depth,
    and the cell's record has the batch result. The backend is llama.cpp taking requests at
    once (tests/plugins), so the bundled model runs a batch without a batching engine."""
    m = matrix(tmp_path, "models: [smollm2-135m]\nbackends:\n  - name: queued\n    threads: 1\n"
                         "perf: {pp: 16, tg: none, depth: [0, 8], batch: [2], batch_pp: 8, batch_tg: 4, reps: 1}\n")
    out = tmp_path / "out"
    res = cli("sweep", str(m), "--out", str(out), env={"PYTHONPATH": str(PLUGINS)})
    assert res.code == 0, res.stderr
    [c] = read_sweep(out / "sweep.json").cells
    assert c.status == "ok" and c.label.endswith("queued n_threads=1 pp16,pp16 @ d8,batch2 x1"), c.label
    assert (c.perf["batch"], c.perf["batch_pp"], c.perf["batch_tg"], c.perf["depth"]) == ([2], 8, 4, [0, 8])
    record = read_record(out / c.result_file)
    assert [p.test for p in record.perf] == ["pp16", "pp16 @ d8", "batch2"] and record.status == "ok"
    batch = record.perf[-1]
    assert (batch.batch, batch.n_prompt, batch.n_gen, batch.reps, batch.method) == (2, 8, 4, 1, "requests")
    assert batch.output_tps_mean > 0 and batch.total_tps_mean > batch.output_tps_mean


# ---------------------------------------------------- interrupt, resume, damaged files


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A two-cell sweep stopped by SIGINT while cell 2 runs, then resumed."""
    tmp = tmp_path_factory.mktemp("sweep")
    m = matrix(tmp, "models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    threads: [1, 2]\n" + TINY)
    out = tmp / "out"
    live = LiveCli("sweep", str(m), "--out", str(out))
    live.wait_for(r"cell 1/2 .*: ok")
    live.wait_for(r"cell 2 pp16 warm-up")  # cell 2's worker has loaded the model and is measuring
    workers = [w.pid for w in live.workers()]
    live.proc.send_signal(signal.SIGINT)
    code, stdout, stderr = live.finish()
    first = {"code": code, "stdout": stdout, "stderr": stderr, "workers": workers,
             "summary": read_sweep(out / "sweep.json"), "files": {p.name: p.read_bytes() for p in result_files(out)},
             "mtimes": {p.name: p.stat().st_mtime_ns for p in result_files(out)}}
    live = LiveCli("sweep", str(m), "--out", str(out), "--resume")
    code, stdout, stderr = live.finish()
    second = {"code": code, "stdout": stdout, "stderr": stderr, "summary": read_sweep(out / "sweep.json")}
    return m, out, first, second


@pytest.mark.slow
def test_sigint_ends_the_running_cell_and_keeps_the_finished_one(interrupted):
    _, out, first, _ = interrupted
    assert first["code"] == 130, first["stderr"]
    assert "cell 2/2" in first["stderr"] and "interrupted by SIGINT" in first["stderr"]
    summary = first["summary"]
    assert summary.status == "interrupted" and summary.interrupted_by == "SIGINT"
    ok, stopped = summary.cells
    assert ok.status == "ok" and ok.result_file in first["files"]
    assert stopped.status == "interrupted" and stopped.result_file is None and stopped.cause == "stopped by SIGINT"
    # only the finished cell has a result file, and it is whole
    assert list(first["files"]) == [ok.result_file]
    assert read_record(out / ok.result_file).status == "ok"
    assert first["workers"] and all(gone(pid) for pid in first["workers"])
    assert "| interrupted |" in first["stdout"]


@pytest.mark.slow
def test_resume_keeps_finished_cells_untouched_and_runs_the_rest(interrupted):
    _, out, first, second = interrupted
    assert second["code"] == 0, second["stderr"]
    summary = second["summary"]
    assert summary.status == "complete" and summary.sweep_id == first["summary"].sweep_id
    kept, rerun = summary.cells
    assert kept.reused and kept.attempts == 1 and "kept from an earlier run" in second["stderr"]
    assert "cell 1/2" in second["stderr"] and "cell 1 pp16" not in second["stderr"]  # cell 1 did not run again
    # the finished cell's result is byte for byte what it was, the file untouched
    assert (out / kept.result_file).read_bytes() == first["files"][kept.result_file]
    assert (out / kept.result_file).stat().st_mtime_ns == first["mtimes"][kept.result_file]
    assert kept.model_dump(exclude={"reused"}) == first["summary"].cells[0].model_dump(exclude={"reused"})
    assert rerun.status == "ok" and rerun.attempts == 2 and not rerun.reused
    record = read_record(out / rerun.result_file)
    assert record.backend.settings["n_threads"] == 2 and {p.test for p in record.perf} == {"pp16", "tg8"}
    assert [p.name for p in result_files(out)] == sorted([kept.result_file, rerun.result_file])


@pytest.mark.slow
def test_printers_accept_the_sweep_summary(cli, interrupted):
    _, out, _, second = interrupted
    md = cli("show", str(out / "sweep.json"))
    assert md.code == 0, md.stderr
    assert "(complete): 2 cells: 2 ok" in md.stdout and "ok (kept)" in md.stdout
    assert md.stdout.count("pp16") == 2 + 2  # two cell labels, then two perf rows
    csv_out = cli("show", str(out / "sweep.json"), "--format", "csv")
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0].startswith("sweep_id,index,label") and len(lines) == 3
    js = cli("show", str(out), "--format", "json").json()  # one list: the run records, then the summary
    runs, sweeps = [x for x in js if x["kind"] == "run"], [x for x in js if x["kind"] == "sweep"]
    assert len(sweeps) == 1 and len(runs) == 2 and js[-1]["kind"] == "sweep"
    assert {r["run_id"] for r in runs} == {c.run_id for c in second["summary"].cells}
    loaded = load_records([out / "sweep.json"])
    assert len(loaded.records) == 2 and loaded.sweeps[0].sweep_id == second["summary"].sweep_id
    # every reader of run records takes a summary as its cells' files: compare does
    assert sorted(loaded.files) == result_files(out) == load_records([out]).files
    cmp = cli("compare", str(out / "sweep.json"), str(out / "sweep.json"))
    assert cmp.code == 0 and "pp16" in cmp.stdout and "tg8" in cmp.stdout, cmp.stderr


@pytest.mark.slow
def test_dry_run_resume_keeps_everything_finished(cli, interrupted):
    m, out, _, _ = interrupted
    res = cli("sweep", str(m), "--out", str(out), "--resume", "--dry-run")
    assert res.code == 0, res.stderr
    assert res.stdout.count("keep (finished)") == 2 and "2 cells, 0 to run" in res.stdout


@pytest.mark.slow
def test_a_second_sweep_into_the_same_folder_needs_resume(cli, interrupted):
    m, out, _, _ = interrupted
    before = (out / "sweep.json").read_bytes()
    res = cli("sweep", str(m), "--out", str(out))
    assert res.code == 2 and "already holds a sweep" in res.stderr and "--resume" in res.stderr
    assert (out / "sweep.json").read_bytes() == before


@pytest.mark.slow
def test_truncated_result_file_is_refused_by_name(cli, interrupted, tmp_path):
    m, out, _, second = interrupted
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    victim = damaged / second["summary"].cells[0].result_file
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    summary_before = (damaged / "sweep.json").read_bytes()

    with pytest.raises(ResultFileError, match="truncated or damaged"):
        read_record(victim)
    res = cli("sweep", str(m), "--out", str(damaged), "--resume")
    assert res.code == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: cannot resume: ") and str(victim) in res.stderr and "Traceback" not in res.stderr
    assert (damaged / "sweep.json").read_bytes() == summary_before  # nothing rewritten, nothing run
    for args in (["show", str(damaged)], ["show", str(damaged / "sweep.json")], ["compare", str(damaged), str(out)]):
        res = cli(*args)
        assert res.code != 0 and str(victim) in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)


@pytest.mark.slow
def test_damaged_or_newer_summary_is_refused_by_name(cli, interrupted, tmp_path):
    m, out, _, _ = interrupted
    victim = tmp_path / "victim.json"  # outside the sweep's folder: --resume must never delete it
    victim.write_text("{}")

    def escaping(d: dict, name: str) -> dict:
        # a failed cell is rerun, and its earlier result file deleted once the rerun's is written
        d["cells"][1].update(status="failed", result_file=name)
        return d

    for name, edit, needle in (
        ("newer", lambda d: {**d, "schema_version": "9.0"}, "newer than this harness reads"),
        ("invalid", lambda d: {**d, "cells": "many"}, "fails schema validation at 'cells'"),
        ("parent", lambda d: escaping(d, "../victim.json"), "cell 2's result_file '../victim.json' is not a plain file name"),
        ("absolute", lambda d: escaping(d, str(victim)), "is not a plain file name"),
        ("superseded", lambda d: {**d, "superseded_files": ["../victim.json"]}, "superseded_files '../victim.json'"),
    ):
        folder = tmp_path / name
        shutil.copytree(out, folder)
        summary = folder / "sweep.json"
        summary.write_text(json.dumps(edit(json.loads(summary.read_text()))))
        res = cli("sweep", str(m), "--out", str(folder), "--resume")
        assert res.code == 2 and str(summary) in res.stderr and needle in res.stderr, res.stderr
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
        shown = cli("show", str(summary))
        assert shown.code == 2 and needle in shown.stderr, shown.stderr
    assert victim.read_text() == "{}"


@pytest.mark.slow
def test_sigterm_stops_a_hanging_cell_and_its_server(tmp_path):
    """SIGTERM during a cell stuck on a silent server: the sweep ends at once, the cell and
    the server it started are gone, the summary says interrupted."""
    state = tmp_path / "state"
    state.mkdir()
    m = matrix(tmp_path, f"models: [smollm2-135m]\nbackends:\n  - name: faulty\n    fault: hang_http\n"
                         f"    state_dir: {state}\n" + TINY)
    out = tmp_path / "out"
    live = LiveCli("sweep", str(m), "--out", str(out), env={"PYTHONPATH": str(FAULT_PLUGINS)})
    live.wait_for(r"cell 1/1 .*running")
    wait_file(state / "worker.pid")  # the worker has started its server and waits on it
    worker, server = int((state / "worker.pid").read_text()), int((state / "server.pid").read_text())
    live.proc.send_signal(signal.SIGTERM)
    code, stdout, stderr = live.finish(timeout=30)
    assert code == 143, stderr
    summary = read_sweep(out / "sweep.json")
    assert summary.interrupted_by == "SIGTERM" and summary.cells[0].status == "interrupted"
    assert gone(worker) and gone(server)
    assert result_files(out) == []


@pytest.mark.slow
def test_sweep_killed_outright_takes_its_worker_and_resume_reruns_the_cell(tmp_path):
    """SIGKILL of the harness itself: no cleanup runs, but the kernel ends the worker with
    it (PR_SET_PDEATHSIG); the summary says the cell was running, so --resume runs it again."""
    state = tmp_path / "state"
    state.mkdir()
    m = matrix(tmp_path, f"models: [smollm2-135m]\ntimeout_s: 4\nbackends:\n  - name: faulty\n    fault: hang_http\n"
                         f"    state_dir: {state}\n" + TINY)
    out = tmp_path / "out"
    env = {"PYTHONPATH": str(FAULT_PLUGINS)}
    live = LiveCli("sweep", str(m), "--out", str(out), env=env)
    wait_file(state / "worker.pid")
    worker, server = int((state / "worker.pid").read_text()), int((state / "server.pid").read_text())
    live.proc.kill()
    live.finish(timeout=30)
    try:
        for _ in range(100):
            if gone(worker):
                break
            time.sleep(0.05)
        assert gone(worker)
        summary = read_sweep(out / "sweep.json")
        assert summary.status == "running" and summary.cells[0].status == "running" and summary.cells[0].attempts == 1
    finally:
        # a server in a session of its own outlives a harness killed outright: nothing is left to end it
        if not gone(server):
            os.kill(server, signal.SIGKILL)
    (state / "worker.pid").unlink()
    live = LiveCli("sweep", str(m), "--out", str(out), "--resume", env=env)
    code, _, stderr = live.finish(timeout=60)
    assert code == 1, stderr
    c = read_sweep(out / "sweep.json").cells[0]
    assert c.status == "failed" and c.attempts == 2 and c.cause.startswith("timed out after 4 s")
    assert gone(int((state / "server.pid").read_text()))


# ------------------------------------------------------------------------ suite cells


def test_suite_cells_are_planned_and_checked_before_running(cli, tmp_path):
    pytest.importorskip("lm_eval")
    m = matrix(tmp_path, "models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    threads: [1, 2]\n" + TINY +
               "suites:\n  - quick\n  - tasks: [truthfulqa_mc2]\n    limit: 2\n")
    out = tmp_path / "out"
    res = cli("sweep", str(m), "--out", str(out), "--dry-run")
    assert res.code == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if "smollm2-135m llamacpp" in line]
    assert len(rows) == 6  # per thread count: the perf tests, the quick suite, the limited task
    assert "| suite | smollm2-135m llamacpp n_threads=1 suite quick " in rows[1]
    assert "tasks truthfulqa_mc2 limit 2" in rows[2] and "| perf " in rows[3]
    for text, needle in (("suites:\n  - tasks: [truthfulqa_mc2]\n    limit: 0\n", "limit must be at least 1"),
                         ("suites:\n  - {suite: quick, tasks: [gsm8k]}\n", "either suite: NAME or tasks"),
                         ("suites: [open-vs-closd]\n", "did you mean open-vs-closed")):
        bad = matrix(tmp_path, "models: [smollm2-135m]\nbackends: [llamacpp]\n" + text, name="bad.yaml")
        assert_refused(cli("sweep", str(bad), "--out", str(out)), out, needle)


def test_auto_stands_for_every_installed_backend_that_runs_unattended(cli, tmp_path):
    from harness.core.registry import unattended
    from harness.execution.matrix import backend_entries, load_matrix

    m = matrix(tmp_path, "models: [smollm2-135m]\nbackends:\n  - auto\n  - {name: llamacpp, threads: [1, 2]}\n" + TINY)
    entries, skipped = backend_entries(load_matrix(m)[0], m)
    ok, why = unattended()
    assert "llamacpp" in ok and "base_url" in why["openai"]
    # llamacpp is named with its settings, so auto leaves it to that entry: each cell once
    assert [(e, entry.name) for e, entry in entries] == [(0, name) for name in ok if name != "llamacpp"] + [(1, "llamacpp")]
    assert entries[-1][1].grid({}) == {"threads": [1, 2]}
    assert skipped == why
    res = cli("sweep", str(matrix(tmp_path, "models: [smollm2-135m]\nbackends: [{name: auto, threads: 1}]\n" + TINY)),
              "--out", str(tmp_path / "out"), "--dry-run")
    assert_refused(res, tmp_path / "out", "backends.0", "takes none (here: threads)")


@pytest.mark.slow
def test_auto_in_a_dry_run_lists_its_cells_and_what_it_left_out(cli, tmp_path):
    m = matrix(tmp_path, "models: [smollm2-135m]\nbackends: [auto]\n" + TINY)
    res = cli("sweep", str(m), "--out", str(tmp_path / "out"), "--dry-run", env={"PYTHONPATH": str(PLUGINS)})
    assert res.code == 0, res.stderr
    assert "| smollm2-135m llamacpp pp16,tg8 x1 " in res.stdout and "| smollm2-135m queued pp16,tg8 x1 " in res.stdout
    assert "backend openai left out of auto: needs base_url (not run unattended)" in res.stdout
    assert "backend uninstalled left out of auto: not installed" in res.stdout


@pytest.mark.slow
def test_a_suite_cell_without_the_cache_sends_every_request(cli, tmp_path):
    """`cache: false` (the nightly's): the suite cell's record names no request cache, and
    the cell is a different cell from the same one with the cache."""
    pytest.importorskip("lm_eval")
    from harness.execution.matrix import expand, load_matrix

    text = "models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    threads: 1\nsuites:\n  - tasks: [truthfulqa_mc2]\n    limit: 2\n"
    cached, uncached = matrix(tmp_path, text), matrix(tmp_path, text + "cache: false\n", name="uncached.yaml")
    keys = [expand(load_matrix(m)[0], m)[0].key for m in (cached, uncached)]
    assert keys[0] != keys[1]
    out = tmp_path / "out"
    res = cli("sweep", str(uncached), "--out", str(out))
    assert res.code == 0, res.stderr
    [c] = read_sweep(out / "sweep.json").cells
    record = read_record(out / c.result_file)
    assert c.status == "ok" and record.accuracy and record.evaluation.request_cache is None


@pytest.mark.slow
def test_suite_cell_runs_in_the_eval_worker_under_the_cell_timeout(cli, tmp_path):
    """A suite cell is harness eval's own worker process, with the cell's wall-clock limit:
    one too short to load lm-eval ends it, recorded like any other cell's failure."""
    pytest.importorskip("lm_eval")
    m = matrix(tmp_path, "models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    threads: 1\n"
                         "    timeout_s: 1.5\nsuites:\n  - tasks: [truthfulqa_mc2]\n    limit: 1\n")
    out = tmp_path / "out"
    res = cli("sweep", str(m), "--out", str(out))
    assert res.code == 1, res.stderr
    c = read_sweep(out / "sweep.json").cells[0]
    assert c.kind == "suite" and c.suite == "tasks truthfulqa_mc2 limit 1"
    assert c.status == "failed" and c.cause.startswith("timed out after 1.5 s"), c.cause
    record = read_record(out / c.result_file)
    assert record.status == "failed" and record.backend.name == "llamacpp" and record.model.ref == "smollm2-135m"
