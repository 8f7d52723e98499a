"""The OpenAI-compatible HTTP backend against real servers on 127.0.0.1.

llama-cpp-python's own server runs the bundled SmolLM2 (completions and chat); a small
scripted stdlib server answers 429/5xx/401 on cue for the retry and key tests.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from harness.backends.openai_client import (OpenAIClient, RetryPolicy, api_key_from_env, request_body, retry_after_s,
                                            safe_url)
from harness.backends.openai_http import OpenAIHttpBackend, OpenAISettings, remote_model_info
from harness.core.errors import BackendError, ConfigError
from cli_checks import assert_one_line_error
from loopback_servers import ScriptedServer, Stream, llamacpp_server, text_events

SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"


@pytest.fixture(scope="module")
def server_url(smollm2_path):
    with llamacpp_server(str(smollm2_path)) as url:
        yield url


def _backend(url: str, served: str = "smollm2", **kw) -> OpenAIHttpBackend:
    settings = OpenAISettings(base_url=url, **kw)
    b = OpenAIHttpBackend(remote_model_info(url, kw.get("model_name") or served), settings)
    b.load()
    return b


@pytest.mark.slow
def test_streamed_completion_times_every_chunk(server_url):
    b = _backend(server_url, api="completions")
    try:
        assert b.served_name == "smollm2"
        r = b.stream_request("The capital of France is", 8, ignore_eos=True)
        assert r.ok, r.error
        assert r.finish_reason == "length"
        assert r.text.strip()
        # one chunk per token from this server, each stamped in order after the send
        assert r.n_chunks == 8
        assert r.start_ns < r.chunk_ns[0] and r.chunk_ns == sorted(r.chunk_ns) and r.chunk_ns[-1] <= r.end_ns
        assert r.ttft_ns == r.chunk_ns[0] - r.start_ns > 0
        assert len(r.itl_ns) == 7 and all(g >= 0 for g in r.itl_ns)
        assert r.e2el_ns >= r.ttft_ns + sum(r.itl_ns)
    finally:
        b.close()


@pytest.mark.slow
def test_chat_generation_and_server_tokenizer(server_url, smollm2_path):
    from harness.measurement.traffic_prompts import LocalTokenizer

    from harness.core.backend import serves

    b = _backend(server_url, api="chat")
    try:
        # a text generator only: no prompt log-probabilities, no token-level evaluation
        assert type(b).capability_names(b.settings) == {"text_generator"}
        assert serves(type(b), b.settings, "generate") and not serves(type(b), b.settings, "loglikelihood")
        assert not serves(type(b), b.settings, "bench")
        g = b.complete([{"role": "user", "content": "Say hello."}], 6)
        assert g.text.strip() and g.finish_reason in ("stop", "length")
        # the server's tokenizer is the model's own: same ids as reading the GGUF locally
        local = LocalTokenizer(str(smollm2_path))
        text = "Benchmarks measure what they measure."
        assert b.tokenize(text, add_special=False) == local.tokenize(text)
        assert b.detokenize(local.tokenize(text)) == text
        assert not hasattr(b, "evaluate")
    finally:
        b.close()


@pytest.mark.slow
def test_wrong_model_name_names_what_is_served(server_url):
    settings = OpenAISettings(base_url=server_url, model_name="gpt-nonexistent")
    b = OpenAIHttpBackend(remote_model_info(server_url, "gpt-nonexistent"), settings)
    with pytest.raises(ConfigError, match="'gpt-nonexistent' is not served .* it serves: smollm2"):
        b.load()


def test_429_then_500_is_retried_honouring_retry_after():
    with ScriptedServer([(429, {"Retry-After": "1"}, "slow down"), 500]) as srv:
        client = OpenAIClient(srv.url, retry=RetryPolicy(max_retries=3, backoff_s=0.05))
        r = client.stream("completions", request_body("completions", "scripted", "hi", 3), "completions")
        client.close()
    assert r.ok, r.error
    assert r.retries == 2 and r.text == " w0 w1 w2" and r.usage_completion_tokens == 3
    posts = srv.posts()
    assert len(posts) == 3
    assert posts[1]["t"] - posts[0]["t"] >= 0.95  # the server asked for 1 s
    assert posts[2]["t"] - posts[1]["t"] < 0.9  # no Retry-After: the short backoff
    # latency counts from the first send, retries included, as a user waits
    assert r.e2el_ns / 1e9 >= 1.0


def test_5xx_counted_as_error_after_the_last_retry():
    with ScriptedServer([503] * 10, error_body="overloaded") as srv:
        client = OpenAIClient(srv.url, retry=RetryPolicy(max_retries=2, backoff_s=0.01))
        r = client.stream("completions", request_body("completions", "scripted", "hi", 3), "completions")
    assert not r.ok and r.error_kind == "http 503" and "overloaded" in r.error
    assert r.retries == 2 and len(srv.posts()) == 3


def test_client_errors_are_not_retried():
    with ScriptedServer([400, 400]) as srv:
        client = OpenAIClient(srv.url, retry=RetryPolicy(max_retries=3, backoff_s=0.01))
        r = client.stream("completions", request_body("completions", "scripted", "hi", 3), "completions")
    assert not r.ok and r.error_kind == "http 400" and len(srv.posts()) == 1


def test_key_is_sent_but_never_repeated(monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_KEY", SECRET)
    with ScriptedServer(require_key="the-right-key") as srv:
        settings = OpenAISettings(base_url=srv.url, api_key_env="HARNESS_TEST_KEY", max_retries=0)
        b = OpenAIHttpBackend(remote_model_info(srv.url, "scripted"), settings)
        with pytest.raises(BackendError) as err:
            b.load()
    assert srv.seen[0]["auth"] == f"Bearer {SECRET}"  # the key did go out, in the header
    message = str(err.value)
    assert "401" in message and SECRET not in message
    assert SECRET not in str(b.effective_settings())


def test_accepted_key_and_generation(monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_KEY", "plainkey42")
    with ScriptedServer(require_key="plainkey42") as srv:
        b = _backend(srv.url, "scripted", api="completions", api_key_env="HARNESS_TEST_KEY")
        assert b.complete("hi", 2).text == " w0 w1"
        b.close()


def test_missing_key_variable_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("HARNESS_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="no environment variable of the name given is set") as unset:
        api_key_from_env("HARNESS_NO_SUCH_KEY")
    with pytest.raises(ConfigError, match="takes the NAME of an environment variable") as shaped:
        api_key_from_env(SECRET[:12] + "=x")
    # the value given is never repeated: it may be the key itself
    assert "HARNESS_NO_SUCH_KEY" not in str(unset.value) and SECRET[:12] not in str(shaped.value)


def test_unreachable_server_is_one_line_after_retries():
    from loopback_servers import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.monotonic()
    b = OpenAIHttpBackend(remote_model_info(url, "x"), OpenAISettings(base_url=url, max_retries=2, backoff_s=0.05))
    with pytest.raises(BackendError, match=r"cannot reach .* \(after 3 attempts\)") as err:
        b.load()
    assert "\n" not in str(err.value) and time.monotonic() - t0 >= 0.15


def test_retry_after_forms_and_safe_urls():
    assert retry_after_s("3") == 3.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
    assert retry_after_s("soon") is None
    assert safe_url(f"https://user:{SECRET}@api.example.com/v1?key={SECRET}") == "https://api.example.com/v1"


def test_generate_applies_stops_beyond_the_servers_four():
    with ScriptedServer() as srv:
        b = _backend(srv.url, "scripted", api="completions")
        g = b.complete("hi", 4, stop=["a", "b", "c", "d", " w2"])  # the stream is " w0 w1 w2 w3"
        b.close()
    assert g.text == " w0 w1"
    (post,) = srv.posts()
    assert post["body"]["stop"] == ["a", "b", "c", "d"]  # the server was given only the first four


@pytest.mark.slow
def test_lm_eval_adapter_generate_until_runs_on_the_http_backend(server_url):
    """harness.measurement.accuracy's BackendLM drives generation through the text generator, no tokenizer asked."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from harness.measurement.accuracy import BackendLM

    b = _backend(server_url, api="completions", n_ctx=512)  # llama-cpp-python's model list has no context length
    try:
        lm = BackendLM(b, max_length=512, identity="openai-smollm2")
        context = "Question: What is 2 + 3?\nAnswer:"
        req = Instance("generate_until", {}, (context, {"until": ["\n"], "max_gen_toks": 12}), 0)
        (answer,) = lm.generate_until([req])
        direct = b.complete(context, 12, stop=["\n"]).text  # the same greedy request, stop applied by the server
        assert answer.strip() and "\n" not in answer
        assert answer.strip() == direct.strip()
    finally:
        b.close()


@pytest.mark.slow
def test_harness_eval_runs_a_generative_task_on_a_server(server_url, cli, tmp_path):
    """`harness eval --backend openai`: a closed model is measured the way an open one is, by
    name at its server; on the same GGUF behind llama-cpp-python's server the greedy answers
    are the ones the in-process backend gives."""
    pytest.importorskip("lm_eval")
    from harness.output.store import read_record

    task = "mmlu_snapshot_generative_elementary_mathematics"
    same = ["--tasks", task, "--limit", "2", "--num-fewshot", "2", "--log-samples", "--no-cache", "--format", "json"]
    served = cli("eval", "--backend", "openai", "--base-url", server_url, "--model", "smollm2", "--api", "completions",
                 "--set", "n_ctx=512", *same, "--out", str(tmp_path / "served"))
    assert served.code == 0, served.stderr
    local = cli("eval", "--backend", "llamacpp", *same, "--out", str(tmp_path / "local"))
    assert local.code == 0, local.stderr

    def answers(out):
        (path,) = out.glob("*.json")
        record = read_record(path)
        lines = Path(record.evaluation.samples_file).read_text().splitlines()
        return record, {(d["doc_id"], d["filter"]): d["resps"][0][0] for d in map(json.loads, lines)}

    record, served_answers = answers(tmp_path / "served")
    assert record.status == "ok"
    assert record.backend.name == "openai" and record.backend.settings["api"] == "completions"
    assert record.model.format == "openai-api" and record.model.name == "smollm2"
    rows = [a for a in record.accuracy if a.task == task and a.metric.startswith("exact_match")]
    assert rows and all(a.n == 2 and 0.0 <= a.value <= 1.0 for a in rows)
    assert {doc for doc, _ in served_answers} == {0, 1}
    assert all(a.strip() for a in served_answers.values())
    assert served_answers == answers(tmp_path / "local")[1]


@pytest.mark.slow
def test_eval_names_the_models_a_server_serves(server_url, cli, tmp_path):
    pytest.importorskip("lm_eval")
    r = cli("eval", "--backend", "openai", "--base-url", server_url, "--model", "gpt-4o", "--tasks", "gsm8k",
            "--limit", "1", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"model 'gpt-4o' is not served at .*; it serves: smollm2")



# ------------------------------------------------------------------ streams that cannot be trusted


def _stream_once(srv, api="completions", retries=3, timeout_s=30.0):
    client = OpenAIClient(srv.url, timeout_s=timeout_s, retry=RetryPolicy(max_retries=retries, backoff_s=0.01))
    try:
        path = "chat/completions" if api == "chat" else "completions"
        return client.stream(path, request_body(api, "scripted", "hi", 3), api)
    finally:
        client.close()


async def _astream_once(srv, deadline_s=None, retries=3, timeout_s=30.0):
    from harness.measurement.meters import now_ns

    client = OpenAIClient(srv.url, timeout_s=timeout_s, retry=RetryPolicy(max_retries=retries, backoff_s=0.01))
    async with client.async_client() as http:
        deadline = now_ns() + int(deadline_s * 1e9) if deadline_s is not None else None
        return await client.astream(http, "completions", request_body("completions", "scripted", "hi", 3),
                                    "completions", deadline_ns=deadline)


MALFORMED = [
    ("completions", {"choices": [None]}, "'choices\\[0\\]'|choices\\[0\\] is null"),
    ("completions", {"choices": "none"}, "'choices' is str"),
    ("completions", {"choices": {"text": "a"}}, "'choices' is dict"),
    ("completions", {"choices": [{"text": 5}]}, "'text' is int"),
    ("completions", {"choices": [{"text": "a", "finish_reason": 7}]}, "'finish_reason' is int"),
    ("completions", {"choices": [], "usage": {"completion_tokens": "3"}}, "usage.completion_tokens is '3'"),
    ("completions", {"choices": [], "usage": {"prompt_tokens": -1}}, "usage.prompt_tokens is -1"),
    ("completions", {"choices": [], "usage": []}, "'usage' is list"),
    ("completions", [1, 2], "not a JSON object"),
    ("completions", "data: {not json", "not JSON"),
    ("chat", {"choices": [{"delta": "hello"}]}, "'delta' is str"),
    ("chat", {"choices": [{"delta": {"content": ["a"]}}]}, "'content' is list"),
    ("chat", {"choices": [{"delta": {"content": "A"}, "logprobs": {"content": [{"token": "A", "logprob": "-1"}]}}]},
     "a logprob is '-1'"),
    ("chat", {"choices": [{"delta": {"content": "A"}, "logprobs": {"content": [{"token": "A", "logprob": 0.5}]}}]},
     "a logprob is 0.5, not a log-probability"),
    ("chat", {"choices": [{"delta": {"content": "A"}, "logprobs": {"content": ["A"]}}]}, "logprobs.content\\[0\\] is str"),
    ("chat", {"choices": [{"delta": {"content": "A"}, "logprobs": {"content": [
        {"token": "A", "logprob": -0.1, "top_logprobs": [{"token": 3, "logprob": -0.1}]}]}}]}, "'token' is int"),
]


def test_first_token_alternatives_are_read_once_each():
    """top_logprobs of the first answer token, the chosen token counted once whether or not the
    API lists it among them; later chunks' logprobs belong to later tokens."""
    from harness.backends.openai_client import RequestResult, StreamParser

    def first_chunk(top):
        return {"choices": [{"delta": {"content": "A"}, "finish_reason": None, "logprobs": {"content": [
            {"token": "A", "logprob": -0.5, "top_logprobs": top}]}}]}

    for top, want in (([{"token": "A", "logprob": -0.5}, {"token": " B", "logprob": -1.5}], [("A", -0.5), (" B", -1.5)]),
                      ([{"token": " B", "logprob": -1.5}], [(" B", -1.5), ("A", -0.5)]),
                      (None, [("A", -0.5)])):
        result = RequestResult()
        parser = StreamParser("chat", result)
        for i, chunk in enumerate([first_chunk(top), first_chunk([{"token": "C", "logprob": -0.1}])]):
            parser.feed("data: " + json.dumps(chunk), i)
        assert result.first_top_logprobs == want


@pytest.mark.parametrize("api, chunk, message", MALFORMED)
def test_a_malformed_chunk_is_that_requests_error_never_a_crash(api, chunk, message):
    """Each field of each chunk is type-checked; a chunk of the wrong shape ends the request
    as a "bad chunk" error (it is not retried: the stream has begun)."""
    good = text_events(1, api=api)[:1]  # one good text chunk first: the error comes mid-stream
    with ScriptedServer([Stream(good + [chunk] + text_events(1, api=api))]) as srv:
        r = _stream_once(srv, api)
    assert not r.ok and r.error_kind == "bad chunk", (r.error_kind, r.error)
    assert re.search(message, r.error), r.error
    assert len(srv.posts()) == 1


def test_text_after_the_finish_reason_is_a_bad_chunk():
    events = text_events(2)
    with ScriptedServer([Stream(events[:3] + [{"choices": [{"text": " late", "finish_reason": None}]}])]) as srv:
        r = _stream_once(srv)
    assert not r.ok and r.error_kind == "bad chunk" and "after the stream's finish_reason" in r.error


@pytest.mark.parametrize("events, done, message", [
    (text_events(2, finish=None, usage=False), False, "ended after 2 text chunks without a finish_reason or \\[DONE\\]"),
    (text_events(2, finish=None, usage=False), True, "ended after 2 text chunks without a finish_reason"),
    (text_events(2), False, "ended after finish_reason 'length' without \\[DONE\\]"),
    ([], False, "ended before any text without a finish_reason or \\[DONE\\]"),
])
def test_a_stream_without_its_end_is_an_error(events, done, message):
    """The issue's case: a stream cut short at a clean boundary used to count as a success."""
    with ScriptedServer([Stream(events, done=done)]) as srv:
        r = _stream_once(srv)
    assert not r.ok and r.error_kind == "cut short" and re.search(message, r.error), r.error
    assert len(srv.posts()) == 1


def test_a_stream_cut_after_text_is_never_retried():
    """The connection breaks after two text chunks: retrying would glue a second answer onto
    the first and corrupt TTFT and the ITLs, so it is that request's error."""
    with ScriptedServer([Stream(text_events(2, finish=None, usage=False), done=False, cut=True)]) as srv:
        r = _stream_once(srv, retries=3)
    assert not r.ok and r.error_kind == "cut short", (r.error_kind, r.error)
    assert "broke after 2 text chunks" in r.error and "not retried" in r.error
    assert r.retries == 0 and len(srv.posts()) == 1


def test_a_stream_cut_before_any_text_is_retried_clean():
    """Cut before its first text (only a role chunk came): retried, and the sample is the
    second attempt's alone, with its retry counted."""
    role_only = [{"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
    with ScriptedServer([Stream(role_only, done=False, cut=True)]) as srv:
        r = _stream_once(srv, api="chat", retries=3)
    assert r.ok, r.error
    assert r.retries == 1 and len(srv.posts()) == 2
    assert r.text == " w0 w1 w2" and r.n_chunks == 3 and r.usage_completion_tokens == 3


def test_the_async_stream_gives_the_same_verdicts():
    import asyncio

    with ScriptedServer([Stream([{"choices": [None]}]),
                         Stream(text_events(2, finish=None, usage=False), done=False),
                         Stream(text_events(1, finish=None, usage=False), done=False, cut=True)]) as srv:
        kinds = [asyncio.run(_astream_once(srv)) for _ in range(3)]
        fine = asyncio.run(_astream_once(srv))
    assert [(r.ok, r.error_kind, r.retries) for r in kinds] == [(False, "bad chunk", 0), (False, "cut short", 0),
                                                              (False, "cut short", 0)]
    assert fine.ok and fine.text == " w0 w1 w2" and len(srv.posts()) == 4


def test_a_trickling_stream_meets_the_requests_own_timeout():
    """A server that sends a chunk every 0.2 s never trips a per-read timeout; the request's
    timeout bounds the whole answer, in both the sync and the async client."""
    import asyncio

    trickle = Stream(text_events(200), gap_s=0.2)
    with ScriptedServer([trickle, trickle]) as srv:
        t0 = time.monotonic()
        r = _stream_once(srv, retries=0, timeout_s=1.0)
        sync_s = time.monotonic() - t0
        t0 = time.monotonic()
        a = asyncio.run(_astream_once(srv, retries=0, timeout_s=1.0))
        async_s = time.monotonic() - t0
    for res in (r, a):
        assert not res.ok and res.error_kind == "timeout" and "within the request's timeout (1 s)" in res.error
    assert sync_s < 3 and async_s < 3


def test_the_deadline_bounds_a_request_and_its_retries():
    import asyncio

    with ScriptedServer([Stream(text_events(200), gap_s=0.2)]) as srv:
        t0 = time.monotonic()
        r = asyncio.run(_astream_once(srv, deadline_s=1.0, timeout_s=300))
        streaming_s = time.monotonic() - t0
    assert not r.ok and r.error_kind == "deadline" and streaming_s < 3
    # waiting out a 5 s Retry-After would pass the deadline: stopped there, not slept through
    with ScriptedServer([(503, {"Retry-After": "5"}, "busy")]) as srv:
        t0 = time.monotonic()
        r = asyncio.run(_astream_once(srv, deadline_s=1.0))
        waiting_s = time.monotonic() - t0
    assert not r.ok and r.error_kind == "deadline" and "waiting to retry (http 503" in r.error
    assert waiting_s < 1.5 and len(srv.posts()) == 1


# ------------------------------------------------------------------ one stream timer


def _two_in_one_chunk() -> list:
    """A normal answer whose first two text lines come in one write, so in one chunk of bytes."""
    first, second, *rest = text_events(3)
    return [f"data: {json.dumps(first)}\n\ndata: {json.dumps(second)}", *rest]


def test_lines_of_one_chunk_share_its_arrival_whatever_the_caller_does_between():
    """A chunk is stamped once, on arrival: the sync client's on_text callback (slow here)
    runs after the chunk's lines are read and cannot push the next line's stamp later."""
    with ScriptedServer([Stream(_two_in_one_chunk())]) as srv:
        client = OpenAIClient(srv.url, retry=RetryPolicy(max_retries=0))
        try:
            r = client.stream("completions", request_body("completions", "scripted", "hi", 3), "completions",
                              on_text=lambda text: time.sleep(0.3))
        finally:
            client.close()
    assert r.ok, r.error
    assert r.text == " w0 w1 w2" and r.n_chunks == 3
    assert r.chunk_ns[1] == r.chunk_ns[0]  # one chunk of bytes, one arrival
    assert r.chunk_ns[2] - r.chunk_ns[1] >= 0.25e9  # the next chunk was read after the callback


def test_the_sync_and_async_streams_time_the_same_arrivals_alike():
    """The same scripted arrivals (a line every 0.2 s) through both clients: the same number
    of stamped chunks, and the same time to first token, gaps and end-to-end latency."""
    import asyncio

    gap_s = 0.2
    paced = Stream(text_events(3), gap_s=gap_s)  # 3 text lines, the finish, the usage, [DONE]
    with ScriptedServer([paced, paced]) as srv:
        timings = [_stream_once(srv, retries=0), asyncio.run(_astream_once(srv, retries=0))]
    for r in timings:
        assert r.ok, r.error
        assert r.n_chunks == 3 and len(r.itl_ns) == 2
        assert gap_s <= r.ttft_ns / 1e9 < gap_s + 0.15
        assert all(gap_s - 0.1 < g / 1e9 < gap_s + 0.1 for g in r.itl_ns)
        assert 6 * gap_s <= r.e2el_ns / 1e9 < 6 * gap_s + 0.3  # the stream ends after [DONE], the sixth line
    sync, async_ = timings
    assert abs(sync.ttft_ns - async_.ttft_ns) < 0.1e9
    assert abs(sync.e2el_ns - async_.e2el_ns) < 0.15e9
