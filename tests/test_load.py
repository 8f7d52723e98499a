"""`harness load` as a user runs it, against real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.output.store import read_record
from cli_checks import assert_one_line_error
from loopback_servers import REPO_ROOT, ScriptedServer, Stream, free_port, llamacpp_server, port_open, text_events

SECRET = "sk-load-DO-NOT-LEAK-9876543210fedcba"


@pytest.fixture(scope="module")
def server_url(smollm2_path):
    with llamacpp_server(str(smollm2_path)) as url:
        yield url


def _only_record(out_dir):
    files = sorted(out_dir.glob("*.json"))
    assert len(files) == 1, files
    return read_record(files[0]), files[0].read_text()


def _check_point_arithmetic(p):
    """Every summary figure follows from the raw samples kept beside it."""
    ok = [s for s in p.samples if s.ok]
    assert p.completed == len(ok) and p.requests == len(p.samples)
    assert p.total_output_tokens == sum(s.output_tokens for s in ok)
    assert p.output_tokens_per_s == pytest.approx(p.total_output_tokens / p.duration_s)
    assert p.request_throughput_per_s == pytest.approx(p.completed / p.duration_s)
    assert p.ttft_ms_median == pytest.approx(float(np.median([s.ttft_ms for s in ok])))
    assert p.e2el_ms_p99 == pytest.approx(float(np.percentile([s.e2el_ms for s in ok], 99)))
    all_itl = [x for s in ok for x in s.itl_ms]
    assert p.itl_ms_mean == pytest.approx(float(np.mean(all_itl)))
    for s in ok:
        assert len(s.itl_ms) == s.chunks - 1
        assert s.tpot_ms == pytest.approx((s.e2el_ms - s.ttft_ms) / (s.output_tokens - 1))
        assert 0 < s.ttft_ms <= s.e2el_ms


@pytest.mark.slow
def test_concurrency_points_against_llamacpp_server(cli, server_url, tmp_path):
    r = cli("load", "--base-url", server_url, "--model", "smollm2-135m", "--api", "completions",
            "-c", "1,2", "--requests", "2", "--input-len", "16", "--output-len", "6",
            "--slo", "ttft_ms=60000,tpot_ms=60000", "--out", str(tmp_path))
    assert r.code == 0, r.stderr
    assert "c=1" in r.stdout and "c=2" in r.stdout and "TTFT med ms" in r.stdout
    record, _ = _only_record(tmp_path)
    assert [p.label for p in record.load] == ["c=1", "c=2"]
    assert record.backend.name == "openai" and record.backend.settings["model_name"] == "smollm2"
    assert record.perf == [] and record.model_load is None  # model_load is a different thing
    for p in record.load:
        assert p.errors == 0 and p.completed == 2 and p.warmup_requests == 1
        # ignore_eos + min_tokens: every request gives exactly the asked-for length
        assert all(s.output_tokens == 6 and s.finish_reason == "length" for s in p.samples)
        assert p.short_outputs == 0 and p.token_count_disagreements == 0
        # the prompts re-tokenize to exactly the asked-for length
        assert all(s.prompt_tokens == 16 for s in p.samples) and p.total_input_tokens == 32
        assert p.goodput_per_s == pytest.approx(p.request_throughput_per_s)  # generous SLOs: all good
        _check_point_arithmetic(p)
    # this server runs one request at a time: at c=2 the second waits for the first
    c2 = record.load[1]
    assert max(s.ttft_ms for s in c2.samples) > min(s.e2el_ms for s in c2.samples) * 0.9


@pytest.mark.slow
def test_chat_rate_point_and_tight_slo(cli, server_url, tmp_path):
    r = cli("load", "--base-url", server_url, "--model", "smollm2-135m", "--api", "chat", "--rate", "4",
            "--requests", "3", "--input-len", "12", "--output-len", "5", "--warmup", "0",
            "--slo", "ttft_ms=0.001", "--format", "json", "--out", str(tmp_path))
    assert r.code == 0, r.stderr
    (printed,) = r.json()
    record, _ = _only_record(tmp_path)
    assert printed["run_id"] == record.run_id
    (p,) = record.load
    assert p.profile == "rate" and p.request_rate_per_s == 4 and p.api == "chat" and p.completed == 3
    assert p.goodput_per_s == 0.0  # nobody answers in a microsecond
    starts = [s.start_ms for s in p.samples]
    assert starts == sorted(starts) and starts[0] < 50  # the first arrival is at once
    _check_point_arithmetic(p)


@pytest.mark.slow
def test_serve_llamacpp_starts_and_always_stops_its_server(cli, tmp_path):
    # one server thread: on a shared 2-core machine that is faster than two fighting other work
    r = cli("load", "--serve", "llamacpp", "--model", "smollm2-135m", "--sweep", "1", "--requests", "2",
            "--input-len", "8", "--output-len", "4", "--out", str(tmp_path), "--format", "csv",
            "--serve-arg=--n_threads", "--serve-arg=1")
    assert r.code == 0, r.stderr
    port = int(re.search(r"127\.0\.0\.1:(\d+)", r.stderr).group(1))
    assert not port_open(port)
    record, text = _only_record(tmp_path)
    labels = [p.label for p in record.load]
    assert labels[:2] == ["sweep c=1", "sweep rate=inf"]
    assert len(labels) in (2, 3)  # a third rate only when all-at-once was faster than one at a time
    assert record.backend.settings["served_by"] == "llamacpp"
    assert record.backend.settings["serve_args"] == ["--n_threads", "1"]
    assert "llama-cpp-python" in record.backend.engine_version
    assert "load sweep c=1" in r.stdout  # the csv printer has a row per load point


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_the_started_server(tmp_path, sig, code):
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "load", "--serve", "llamacpp", "--model", "smollm2-135m",
         "--duration", "60", "-c", "1", "--input-len", "8", "--output-len", "16", "--warmup", "0",
         "--serve-arg=--n_threads", "--serve-arg=1", "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        # a shell's background job starts with SIGINT ignored; Ctrl-C must reach the harness here
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    port = None
    for line in proc.stderr:
        if m := re.search(r"127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
        if "load point" in line:
            break
    assert port and port_open(port)
    time.sleep(1.0)
    proc.send_signal(sig)
    rest = proc.stderr.read()  # read() keeps what the line iterator had buffered
    proc.wait(timeout=60)
    assert proc.returncode == code, rest
    assert "error: interrupted" in rest and "Traceback" not in rest
    assert not port_open(port)
    assert not list(tmp_path.glob("*.json"))


def test_key_reaches_the_server_and_nowhere_else(cli, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "one"}\n{"prompt": "two"}\n')
    with ScriptedServer(require_key=SECRET, model="m") as srv:
        r = cli("load", "--base-url", srv.url, "--api-key-env", "HARNESS_LOAD_KEY", "--dataset", str(prompts),
                "--requests", "4", "-c", "2", "--output-len", "3", "--out", str(tmp_path / "out"),
                env={"HARNESS_LOAD_KEY": SECRET})
    assert r.code == 0, r.stderr
    assert all(s["auth"] == f"Bearer {SECRET}" for s in srv.seen)
    record, text = _only_record(tmp_path / "out")
    assert SECRET not in text and SECRET not in r.stdout and SECRET not in r.stderr
    assert record.backend.settings["key_variable"] == "HARNESS_LOAD_KEY"
    (p,) = record.load
    assert p.completed == 4 and all(s.output_tokens_source == "usage" and s.output_tokens == 3 for s in p.samples)
    assert p.input_len is None and p.total_input_tokens == 12  # dataset prompts as they are; usage counts them


def test_rejected_key_is_not_repeated_in_the_error(cli, tmp_path):
    with ScriptedServer(require_key="another-key") as srv:
        r = cli("load", "--base-url", srv.url, "--api-key-env", "HARNESS_LOAD_KEY", "--out", str(tmp_path),
                env={"HARNESS_LOAD_KEY": SECRET})
    assert r.code != 0 and r.stderr.startswith("error: ") and "401" in r.stderr
    assert SECRET not in r.stderr and SECRET not in r.stdout


def test_errors_mid_run_are_counted_with_retries(cli, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    # warm-up succeeds on its second try; then one request fails for good (3 x 500)
    with ScriptedServer([503, None, 500, 500, 500]) as srv:  # None: a normal answer
        r = cli("load", "--base-url", srv.url, "--dataset", str(prompts), "--requests", "4", "--retries", "2",
                "--output-len", "2", "--out", str(tmp_path / "out"))
    assert r.code == 0, r.stderr
    record, _ = _only_record(tmp_path / "out")
    (p,) = record.load
    assert p.requests == 4 and p.completed == 3 and p.errors == 1 and p.error_kinds == {"http 500": 1}
    assert record.status == "partial" and "1 of 4 requests failed" in r.stderr


# ------------------------------------------------------------------ bad input: one line, no file


@pytest.mark.parametrize("args, pattern", [
    (["--concurrency", "0"], r"--concurrency: 0 is too small"),
    (["--concurrency", "-3"], r"--concurrency: -3 is too small"),
    (["--rate", "0"], r"--rate: 0 is not a positive request rate"),
    (["--rate", "-2"], r"--rate: -2 is not a positive request rate"),
    (["--sweep", "0"], r"--sweep: 0 must be at least 1"),
    (["--api-key-env", "HARNESS_UNSET_VAR"], r"--api-key-env: no environment variable of the name given is set"),
    (["--slo", "ttft=5"], r"--slo: 'ttft=5' is not KEY=MS"),
])
def test_bad_options(cli, tmp_path, args, pattern):
    with ScriptedServer() as srv:
        r = cli("load", "--base-url", srv.url, "--model", "smollm2-135m", *args, "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, pattern)
    assert not srv.posts()


def test_unreachable_url(cli, tmp_path):
    r = cli("load", "--base-url", f"http://127.0.0.1:{free_port()}", "--model", "smollm2-135m", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"cannot reach http://127\.0\.0\.1:\d+/v1: .* \(after 3 attempts\)")


def test_wrong_model_name(cli, tmp_path):
    with ScriptedServer(model="served-one") as srv:
        r = cli("load", "--base-url", srv.url, "--model-name", "other", "--model", "smollm2-135m", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"model 'other' is not served at .*; it serves: served-one")


def test_server_answering_errors(cli, tmp_path):
    with ScriptedServer([500] * 20, error_body="engine is down") as srv:
        r = cli("load", "--base-url", srv.url, "--model", "smollm2-135m", "--retries", "1", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"failed the warm-up request: http 500: engine is down \(after 1 retries\)")


def test_server_whose_model_list_fails(cli, tmp_path):
    with ScriptedServer(models_status=503, error_body="starting up") as srv:
        r = cli("load", "--base-url", srv.url, "--model", "smollm2-135m", "--retries", "1", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"answered HTTP 503 .* after 2 attempts: starting up")


def test_vllm_not_installed(cli, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    r = cli("load", "--serve", "vllm", "--model", "smollm2-135m", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"vllm is not installed, so --serve vllm cannot start a server")


def test_neither_url_nor_server(cli, tmp_path):
    r = cli("load", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"give either --base-url URL .* or --serve")


def test_warm_up_requests_are_sent_and_not_reused(cli, tmp_path):
    with ScriptedServer(model="m") as srv:
        r = cli("load", "--base-url", srv.url, "--model", "smollm2-135m", "--warmup", "2", "--requests", "3",
                "--input-len", "12", "--output-len", "2", "--out", str(tmp_path))
    assert r.code == 0, r.stderr
    prompts = [p["body"]["prompt"] for p in srv.posts()]
    assert len(prompts) == 5  # two warm-ups, then three timed
    # a prefix-caching server must not answer a timed request from a warm-up's cache
    assert not set(prompts[:2]) & set(prompts[2:]) and len(set(prompts)) == 5
    record, _ = _only_record(tmp_path)
    assert record.load[0].requests == 3 and record.load[0].warmup_requests == 2


# ------------------------------------------------------------------ broken streams, deadlines, no lost work


def _one_prompt(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    return prompts


def test_a_tail_percentile_needs_samples_enough_to_be_shown(cli, tmp_path):
    """12 requests of one ITL gap each: p90 rests on enough of them and is shown; p99 would lie
    between the two slowest, so its cell is blank with a note, and the record keeps the figure.
    With 100 requests every cell is filled and there is no note."""
    args = ["-c", "4", "--output-len", "2", "--percentile-metrics", "ttft,itl", "--metric-percentiles", "90,99"]
    with ScriptedServer() as srv:
        few = cli("load", "--base-url", srv.url, "--dataset", str(_one_prompt(tmp_path)), "--requests", "12", *args,
                  "--out", str(tmp_path / "few"))
        enough = cli("load", "--base-url", srv.url, "--dataset", str(_one_prompt(tmp_path)), "--requests", "100", *args,
                     "--out", str(tmp_path / "enough"))
    assert few.code == 0 and enough.code == 0, few.stderr + enough.stderr

    def cells(stdout):
        lines = [ln for ln in stdout.splitlines() if ln.startswith("|")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        return dict(zip(header, [c.strip() for c in lines[2].strip("|").split("|")]))

    record, _ = _only_record(tmp_path / "few")
    point = record.load[0]
    assert point.sample_count("ttft_ms") == 12 and point.sample_count("itl_ms") == 12
    row = cells(few.stdout)
    assert row["TTFT p99 ms"] == "" and row["ITL p99 ms"] == ""
    assert row["TTFT p90 ms"] == f"{point.percentiles['ttft_ms']['p90']:.1f}" and row["ITL p90 ms"] != ""
    assert point.ttft_ms_p99 is not None and point.percentiles["itl_ms"]["p99"] is not None
    assert "a blank tail percentile had fewer samples than it needs (p90 10, p99 100)" in few.stdout
    full = cells(enough.stdout)
    assert all(full[k] for k in ("TTFT p99 ms", "ITL p99 ms", "TTFT p90 ms")), full
    assert "a blank tail percentile" not in enough.stdout


def test_the_next_point_starts_only_once_the_last_is_on_disk(tmp_path):
    """The worker waits for the parent to handle each finished point: a slow disk (here a
    handler that takes 1 s) delays the next point instead of sharing the machine with it."""
    from harness.commands.traffic import run_traffic
    from harness.core.events import PointDone
    from harness.measurement.traffic_options import TrafficRequest

    handled = []

    def slow_disk(event):
        if isinstance(event, PointDone):
            time.sleep(1.0)
            handled.append(time.monotonic())

    with ScriptedServer() as srv:
        req = TrafficRequest(base_url=srv.url, dataset=_one_prompt(tmp_path), input_len=None, concurrency=[1, 2],
                             requests=2, warmup=0, output_len=2, out_dir=tmp_path / "out")
        outcome = run_traffic(req, slow_disk)
        arrivals = [s["t"] for s in srv.posts()]
    assert [p.label for p in outcome.record.load] == ["c=1", "c=2"] and len(arrivals) == 4
    assert len(handled) == 2 and arrivals[2] > handled[0]  # c=2's first request came after c=1 was handled


def test_a_malformed_chunk_is_that_requests_error(cli, tmp_path):
    """The issue's case: {"choices": [null]} crashed harness load with a traceback and no record."""
    with ScriptedServer([None, Stream([{"choices": [None]}])]) as srv:  # None: the warm-up's normal answer
        r = cli("load", "--base-url", srv.url, "--dataset", str(_one_prompt(tmp_path)), "--requests", "4",
                "--output-len", "2", "--out", str(tmp_path / "out"))
    assert r.code == 0 and "Traceback" not in r.stderr, r.stderr
    record, _ = _only_record(tmp_path / "out")
    (p,) = record.load
    assert p.completed == 3 and p.errors == 1 and p.error_kinds == {"bad chunk": 1}
    (bad,) = [s for s in p.samples if not s.ok]
    assert bad.error.startswith("bad chunk: a chunk's choices[0] is null")
    assert record.status == "partial" and "1 of 4 requests failed (bad chunk: 1)" in r.stderr


def test_streams_cut_short_are_errors_not_successes(cli, tmp_path):
    """The issue's case: four streams with no finish_reason and no [DONE] were recorded as
    four completed requests and no error."""
    cut = Stream(text_events(2, finish=None, usage=False), done=False)
    with ScriptedServer([None] + [cut] * 4) as srv:
        r = cli("load", "--base-url", srv.url, "--dataset", str(_one_prompt(tmp_path)), "--requests", "4",
                "--output-len", "2", "--out", str(tmp_path / "out"))
    assert_one_line_error(r, tmp_path / "out", r"every request of load point c=1 failed at .*: cut short: the stream "
                                               r"ended after 2 text chunks without a finish_reason or \[DONE\]")
    assert r.code == 1  # a measurement failed, not bad input


def test_a_stream_cut_after_text_is_not_retried_into_the_sample(cli, tmp_path):
    """The issue's case: a stream cut after text was retried and the two answers glued into
    one sample, with its TTFT and ITLs corrupted."""
    cut = Stream(text_events(1, finish=None, usage=False), done=False, cut=True)
    with ScriptedServer([None, cut]) as srv:
        r = cli("load", "--base-url", srv.url, "--dataset", str(_one_prompt(tmp_path)), "--requests", "3",
                "--retries", "2", "--output-len", "4", "--out", str(tmp_path / "out"))
        posts = len(srv.posts())
    assert r.code == 0, r.stderr
    assert posts == 1 + 3  # the warm-up and three requests: nothing resent
    (p,) = _only_record(tmp_path / "out")[0].load
    assert p.error_kinds == {"cut short": 1} and p.retried_requests == 0
    for s in p.samples:
        if s.ok:
            assert s.chunks == 4 and s.output_tokens == 4 and len(s.itl_ms) == 3
    _check_point_arithmetic(p)


def test_a_duration_point_stops_what_runs_past_its_deadline(cli, tmp_path):
    """A request that would stream for 40 s is stopped at the 2 s point's end, however long
    its own --timeout; it is counted apart from completed requests and errors."""
    slow = Stream(text_events(400), gap_s=0.1)
    with ScriptedServer([None, slow]) as srv:
        t0 = time.monotonic()
        r = cli("load", "--base-url", srv.url, "--dataset", str(_one_prompt(tmp_path)), "-c", "2", "--duration", "2",
                "--timeout", "300", "--output-len", "2", "--out", str(tmp_path / "out"))
        took = time.monotonic() - t0
    assert r.code == 0, r.stderr
    record, _ = _only_record(tmp_path / "out")
    (p,) = record.load
    # the slow one, and the other worker's request when it was in flight at that moment
    assert p.stopped_at_deadline in (1, 2) and p.errors == 0 and p.completed >= 1 and record.status == "ok"
    assert p.requests == p.completed + p.stopped_at_deadline
    stopped = [s for s in p.samples if not s.ok]
    assert all(s.error.startswith("deadline: still running at the load point's deadline") for s in stopped)
    assert stopped[0].start_ms < 100  # the slow request was among the first two sent
    assert 2.0 <= p.duration_s < 3.5 and took < 30
    assert re.search(r"load point c=2: [12] requests? still running at its 2 s deadline, stopped", r.stderr)


def test_finished_points_are_kept_when_a_later_point_fails(cli, tmp_path):
    """Point c=1 finishes; every request of c=2 fails: the record keeps c=1, says why the run
    stopped, and the one error line says where it is."""
    out = tmp_path / "out"
    with ScriptedServer([None, None, None, 500, 500]) as srv:
        r = cli("load", "--base-url", srv.url, "--dataset", str(_one_prompt(tmp_path)), "-c", "1,2",
                "--requests", "2", "--retries", "0", "--output-len", "2", "--out", str(out))
    assert r.code == 1 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("[harness]")]
    assert len(lines) == 1 and lines[0].startswith("error: every request of load point c=2 failed"), r.stderr
    record, _ = _only_record(out)
    assert lines[0].endswith(f"; the 1 finished load point is kept in {sorted(out.glob('*.json'))[0]}")
    assert [p.label for p in record.load] == ["c=1"] and record.load[0].completed == 2
    assert record.status == "partial"
    assert record.failures[0].cause.startswith("stopped after 1 load point: every request of load point c=2 failed")
    shown = cli("show", str(out))
    assert shown.code == 0 and "c=1" in shown.stdout and "FAILED" in shown.stdout


@contextlib.contextmanager
def _in_second_point(tmp_path, out):
    """`harness load -c 1,2` in the background, once point c=1 is done and c=2 streams slowly."""
    from sweep_helpers import LiveCli

    slow = Stream(text_events(600), gap_s=0.1)
    with ScriptedServer([None, None, slow]) as srv:
        live = LiveCli("load", "--base-url", srv.url, "--dataset", str(_one_prompt(tmp_path)), "-c", "1,2",
                       "--requests", "1", "--output-len", "2", "--out", str(out))
        live.wait_for(r"load point c=2")
        yield live


@pytest.mark.slow
def test_killed_outright_the_finished_points_stay_marked_incomplete(cli, tmp_path):
    """SIGKILL while the second point runs: nothing can clean up, and the first point is
    still on disk, whole, in a record that says it is incomplete."""
    out = tmp_path / "out"
    with _in_second_point(tmp_path, out) as live:
        live.proc.send_signal(signal.SIGKILL)
        live.finish(timeout=30)
    record, _ = _only_record(out)
    assert record.status == "incomplete" and [p.label for p in record.load] == ["c=1"]
    assert record.load[0].completed == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left by the rewrite
    shown = cli("show", str(out))
    assert shown.code == 0 and f"run {record.run_id} is incomplete" in shown.stdout
    compared = cli("compare", str(out), str(out))
    assert f"run {record.run_id} is incomplete" in compared.stderr


def test_a_worker_that_dies_after_a_point_leaves_it_kept(cli, tmp_path):
    """The load test's own process is killed while the second point runs: the harness says
    how it ended, in one line, and the first point is on disk as a partial record."""
    out = tmp_path / "out"
    with _in_second_point(tmp_path, out) as live:
        [worker] = live.workers("harness.execution.traffic_worker")
        worker.kill()
        code, _, stderr = live.finish(timeout=30)
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("[harness]")]
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("error: the load test's worker ended without its record: worker died from SIGKILL")
    record, _ = _only_record(out)
    assert lines[0].endswith(f"; the 1 finished load point is kept in {sorted(out.glob('*.json'))[0]}")
    assert record.status == "partial" and [p.label for p in record.load] == ["c=1"]
    assert record.failures[0].cause.startswith("stopped after 1 load point: the load test's worker ended")


@pytest.mark.slow
def test_killed_outright_with_serve_its_server_goes_too(tmp_path):
    """SIGKILL to the harness: nothing of it can clean up, yet the server its worker started
    does not outlive it (each child dies with the process that started it)."""
    from sweep_helpers import LiveCli

    live = LiveCli("load", "--serve", "llamacpp", "--model", "smollm2-135m", "--duration", "60", "-c", "1",
                   "--input-len", "8", "--output-len", "16", "--warmup", "0",
                   "--serve-arg=--n_threads", "--serve-arg=1", "--out", str(tmp_path))
    port = int(re.search(r"127\.0\.0\.1:(\d+)", live.wait_for(r"starting the llamacpp server")).group(1))
    live.wait_for(r"load point c=1")
    assert port_open(port)
    live.proc.send_signal(signal.SIGKILL)
    live.finish(timeout=30)
    deadline = time.monotonic() + 20
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_open(port)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_after_a_point_keeps_it(tmp_path, sig, code):
    out = tmp_path / "out"
    slow = Stream(text_events(600), gap_s=0.1)
    with ScriptedServer([None, None, slow]) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "load", "--base-url", srv.url, "--dataset", str(_one_prompt(tmp_path)),
             "-c", "1,2", "--requests", "1", "--output-len", "2", "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a foreground job gets it
        for line in proc.stderr:
            if "load point c=2" in line:
                break
        time.sleep(0.5)
        proc.send_signal(sig)
        stderr = proc.stderr.read()
        rc = proc.wait(timeout=30)
    assert rc == code and "Traceback" not in stderr, stderr
    record, _ = _only_record(out)
    assert record.status == "partial" and [p.label for p in record.load] == ["c=1"]
    assert record.failures[0].cause == f"stopped after 1 load point: interrupted ({signal.Signals(sig).name})"
    assert f"error: interrupted; the 1 finished load point is kept in {sorted(out.glob('*.json'))[0]}" in stderr
