"""Faults that really happen during a sweep, and what survives each.

One sweep of six cells meets them in turn (the real SmolLM2 through the real
llama-cpp-python where a cell measures; the fault backends in tests/fault_plugins,
found through the entry-point group, where it fails):

1. ok: measured.
2. hangs on a loopback server that accepts the connection and never answers; the
   server was started by the cell itself, in a session of its own: the timeout must
   kill the worker and the server.
3. SIGKILLed by this test while it measures.
4. aborts (SIGABRT) after printing secrets from its environment to stderr.
5. its model file is deleted by this test after pre-flight.
6. ok: the sweep went on.
7. starts a server in a session of its own and exits at once: the orphaned server
   must not outlive the cell.

The sweep runs with fake secrets in its environment; none may appear in any output,
result file or log.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest
from sweep_helpers import FAULT_PLUGINS, LiveCli, all_files, gone, result_files, wait_file

from harness.output.store import read_record, read_sweep

SECRETS = {
    "OPENAI_API_KEY": "sk-test-4f9a8b7c6d5e4f3a2b1c",
    "HF_TOKEN": "hf_TestTokenAbCdEfGhIjKlMn",
    # no recognisable prefix: caught because its variable's name says it is a secret
    "MY_SERVICE_PASSWORD": "correct-horse-battery-staple",
}
HANG_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def fault_sweep(tmp_path_factory, smollm2_path):
    tmp = tmp_path_factory.mktemp("faults")
    state = tmp / "state"
    orphan = state / "orphan"
    orphan.mkdir(parents=True)
    doomed = tmp / "doomed.gguf"
    shutil.copy(smollm2_path, doomed)
    m = tmp / "faults.yaml"
    m.write_text(f"""\
models: [smollm2-135m]
perf: {{pp: [16], tg: [8], reps: 1}}
backends:
  - name: llamacpp
    threads: 1
  - name: faulty
    fault: hang_http
    state_dir: {state}
    timeout_s: {HANG_TIMEOUT_S}
  - name: llamacpp
    threads: 1
    perf: {{pp: [16], tg: [256], reps: 1}}
  - name: faulty
    fault: abort_with_env
  - name: llamacpp
    models: [{doomed}]
    threads: 2
    perf: {{pp: [16], tg: [4], reps: 1}}
  - name: llamacpp
    threads: 2
  - name: faulty
    fault: orphan_server
    state_dir: {orphan}
""")
    out = tmp / "out"
    env = {"PYTHONPATH": str(FAULT_PLUGINS), **SECRETS}
    live = LiveCli("sweep", str(m), "--out", str(out), env=env)
    live.wait_for(r"cell 2/7 .*running")
    doomed.unlink()  # after pre-flight, before its cell
    wait_file(state / "worker.pid")
    hang = {"worker": int((state / "worker.pid").read_text()), "server": int((state / "server.pid").read_text())}
    live.wait_for(r"cell 3 pp16 warm-up")
    victims = live.workers()
    assert len(victims) == 1
    victims[0].send_signal(signal.SIGKILL)
    code, stdout, stderr = live.finish()
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out, "state": state, "hang": hang,
            "killed": victims[0].pid, "summary": read_sweep(out / "sweep.json"), "matrix": m, "env": env}


def cell(fault_sweep, n: int):
    return fault_sweep["summary"].cells[n - 1]


@pytest.mark.slow
def test_sweep_goes_on_and_records_every_cell(fault_sweep):
    assert fault_sweep["code"] == 1, fault_sweep["stderr"]  # some cells failed
    summary = fault_sweep["summary"]
    assert summary.status == "complete"
    assert [c.status for c in summary.cells] == ["ok", "failed", "failed", "failed", "failed", "ok", "failed"]
    # one whole, valid result file per cell, nothing half-written
    out = fault_sweep["out"]
    files = result_files(out)
    assert sorted(c.result_file for c in summary.cells) == [p.name for p in files]
    for c in summary.cells:
        record = read_record(out / c.result_file)
        assert record.run_id == c.run_id and record.status == c.status
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert read_record(out / cell(fault_sweep, 6).result_file).perf[1].test == "tg8"


@pytest.mark.slow
def test_hanging_server_is_killed_by_the_timeout(fault_sweep):
    c = cell(fault_sweep, 2)
    assert c.cause.startswith(f"timed out after {HANG_TIMEOUT_S} s")
    assert HANG_TIMEOUT_S <= c.wall_s < HANG_TIMEOUT_S + 10
    # the worker, and the server it started outside its process group, are gone
    assert gone(fault_sweep["hang"]["worker"]) and gone(fault_sweep["hang"]["server"])


@pytest.mark.slow
def test_sigkill_mid_run_is_that_cells_failure(fault_sweep):
    c = cell(fault_sweep, 3)
    assert c.cause.startswith("worker died from SIGKILL")
    record = read_record(fault_sweep["out"] / c.result_file)
    assert record.perf == [] and record.failures[0].cause == c.cause
    assert gone(fault_sweep["killed"])


@pytest.mark.slow
def test_crash_keeps_the_stderr_tail_redacted(fault_sweep):
    c = cell(fault_sweep, 4)
    assert c.cause == "worker died from SIGABRT"
    for name in SECRETS:
        assert f"engine config: {name}=[REDACTED]" in c.stderr_tail
    record = read_record(fault_sweep["out"] / c.result_file)
    assert "OPENAI_API_KEY=[REDACTED]" in record.failures[0].stderr_tail


@pytest.mark.slow
def test_model_file_gone_after_preflight_fails_only_its_cell(fault_sweep):
    c = cell(fault_sweep, 5)
    assert c.cause.startswith("model file missing since pre-flight") and "doomed.gguf" in c.cause
    assert cell(fault_sweep, 6).status == "ok"


@pytest.mark.slow
def test_server_orphaned_by_a_dying_worker_is_killed(fault_sweep):
    c = cell(fault_sweep, 7)
    assert c.cause == "worker exited with code 5"
    assert gone(int((fault_sweep["state"] / "orphan" / "orphan.pid").read_text()))


@pytest.mark.slow
def test_no_secret_in_any_output_file_or_log(fault_sweep, cli, tmp_path):
    env = fault_sweep["env"]
    outputs = [fault_sweep["stdout"], fault_sweep["stderr"]]
    # more ways a secret could come out: the fingerprint, the plan, an error naming a path,
    # a usage error echoing a value, the printers over the results
    leaky_path = tmp_path / f"{SECRETS['OPENAI_API_KEY']}" / "model.gguf"
    for args in (["env"], ["sweep", str(fault_sweep["matrix"]), "--out", str(tmp_path / "plan"), "--dry-run"],
                 ["bench", "-m", str(leaky_path)], ["bench", "--reps", SECRETS["HF_TOKEN"]],
                 ["show", str(fault_sweep["out"]), "--format", "json"], ["show", str(fault_sweep["out"])]):
        res = cli(*args, env=env)
        outputs += [res.stdout, res.stderr]
    assert "[REDACTED]" in outputs[-4]  # the error about the leaky path was redacted, not dropped
    files = all_files(fault_sweep["out"], fault_sweep["state"])
    assert len(files) >= 7
    texts = outputs + [p.read_text(errors="replace") for p in files]
    for name, value in SECRETS.items():
        hits = [t[:200] for t in texts if value in t]
        assert not hits, f"{name} leaked into {hits}"


@pytest.mark.slow
def test_sigterm_ends_a_bench_and_every_process_it_started(tmp_path):
    # what a CI runner or `timeout` sends: the worker and the server it started in a session
    # of its own (as a vLLM engine's processes are) must go with the harness, not outlive it
    state, out = tmp_path / "state", tmp_path / "out"
    state.mkdir()
    live = LiveCli("bench", "-b", "faulty", "--set", "fault=hang_http", "--set", f"state_dir={state}",
                   "--pp", "16", "--tg", "none", "--reps", "1", "--out", str(out), env={"PYTHONPATH": str(FAULT_PLUGINS)})
    wait_file(state / "server.pid", timeout=120)
    wait_file(state / "worker.pid")
    worker, server = int((state / "worker.pid").read_text()), int((state / "server.pid").read_text())
    assert not gone(server)
    live.proc.send_signal(signal.SIGTERM)
    code, stdout, stderr = live.finish(timeout=60)
    assert code == 143, stderr
    assert stderr.strip().splitlines()[-1] == "error: interrupted (SIGTERM)" and "Traceback" not in stderr
    assert gone(worker) and gone(server)
    assert not result_files(out)


# ------------------------------------------------------------------ quick checks, no model


def test_exit_causes_tell_oom_from_other_deaths():
    from harness.execution.runner import exit_cause

    assert exit_cause(-9) == "worker died from SIGKILL (killed from outside, or out of memory)"
    assert exit_cause(-9, oom_killed=True).startswith("out of memory: the kernel's OOM killer")
    assert exit_cause(-6, "ggml_cuda: CUDA error: out of memory\n") == "out of GPU memory: worker died from SIGABRT"
    assert exit_cause(1, "torch.OutOfMemoryError: CUDA out of memory.") == "out of GPU memory: worker exited with code 1"
    assert exit_cause(3, "Traceback ...\nMemoryError\n") == "out of memory: worker exited with code 3"
    assert exit_cause(-11) == "worker died from SIGSEGV"
    assert exit_cause(2, "ValueError: bad\n") == "worker exited with code 2"


def test_redact_catches_keys_and_spares_ordinary_text(monkeypatch):
    from harness.core.environment import redact, register_secret

    monkeypatch.setenv("ACME_API_KEY", "plainvalue123")
    register_secret("named-by-the-user-42")
    for text, secret in [
        ("key=sk-proj-abcdefghijklmnop1234", "sk-proj-abcdefghijklmnop1234"),
        ("token hf_abcdefghijklmnopqrst here", "hf_abcdefghijklmnopqrst"),
        ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        ("https://user:hunter2hunter2@example.com/v1", "hunter2hunter2"),
        ("--api-key=zzzzzzzzzz", "zzzzzzzzzz"),
        ('{"password": "opensesame"}', "opensesame"),
        ("the key is plainvalue123.", "plainvalue123"),
        ("sent named-by-the-user-42 upstream", "named-by-the-user-42"),
        ("AKIAABCDEFGHIJKLMNOP and ghp_abcdefghijklmnopqrst", "AKIAABCDEFGHIJKLMNOP"),
    ]:
        assert secret not in redact(text) and "[REDACTED]" in redact(text), text
    for text in ('"tokenizer_name": "HuggingFaceTB/SmolLM2-135M"', '"max_tokens": 1234567', "n_threads=2 flash_attn=1",
                 "/home/me/disk-benchmarks/model.gguf", "token positions 1..512", "--api-key-env OPENAI_API_KEY",
                 "/work/hf_compare5/runs/eval-1.samples.jsonl", "pip install sk-learnkit", "ghp_cache2"):
        assert redact(text) == text
    blob = json.dumps({"detail": 'password=abc"def\\ghi', "cmd": ["x", "--token=abcdefgh"]})
    assert json.loads(redact(blob))  # redacting JSON text keeps it JSON


def test_per_sample_log_survives_a_torn_last_line(tmp_path, monkeypatch):
    from harness.core.errors import ResultFileError
    from harness.output.store import JsonlLog, read_jsonl

    monkeypatch.setenv("SOME_TOKEN", "t0psecretvalue")
    path = tmp_path / "samples.jsonl"
    with JsonlLog(path) as log:
        log.append({"doc": 0, "resp": "ok"})
        log.append({"doc": 1, "resp": "leaks t0psecretvalue"})
    with path.open("a") as fh:
        fh.write('{"doc": 2, "resp": "cut off mid-wri')  # a crash mid-line
    rows = read_jsonl(path)
    assert [r["doc"] for r in rows] == [0, 1] and "t0psecretvalue" not in path.read_text()
    path.write_text('{"doc": 0}\nnot json\n{"doc": 2}\n')
    with pytest.raises(ResultFileError, match="line 2"):
        read_jsonl(path)


def test_pickle_model_files_are_refused(cli, tmp_path):
    """Only GGUF is loaded: a PyTorch pickle (what torch.load would unpickle) never reaches an engine."""
    import pickle

    evil = tmp_path / "pytorch_model.bin"
    evil.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    res = cli("bench", "-m", str(evil), "--out", str(tmp_path / "out"))
    assert res.code == 2 and "not a GGUF file" in res.stderr and not (tmp_path / "out").exists()


def test_no_source_trusts_remote_code():
    root = Path(__file__).resolve().parent.parent
    sources = [p for d in ("harness", "backends") for p in (root / d).rglob("*.py")]
    assert len(sources) > 10
    offenders = [str(p) for p in sources if re.search(r"trust_remote_code\s*=\s*True", p.read_text())]
    assert offenders == []


def test_chat_templates_render_in_a_sandbox():
    pytest.importorskip("lm_eval")
    from harness.measurement.chat_template import ChatTemplate
    from harness.core.errors import EvalError

    ok = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    assert ok.render([{"role": "user", "content": "hi"}]) == "<user>hi"
    escape = ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(EvalError, match="sandbox"):
        escape.render([{"role": "user", "content": "hi"}])
    mutate = ChatTemplate("{% set x = messages.append({'role': 'system'}) %}{{ messages|length }}")
    with pytest.raises(EvalError, match="sandbox"):
        mutate.render([{"role": "user", "content": "hi"}])
