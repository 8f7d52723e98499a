"""Closed models as they are: `harness eval -b openai` against a chat-only API.

The API is tests/chat_proxy.py in front of llama-cpp-python's real server on the bundled
SmolLM2: only /v1/models and /v1/chat/completions, behind a key, under another model
name, no prompt log-probabilities, 429s and a cut stream on cue, every request counted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chat_proxy import ChatProxy, PacedChatServer, messages_key
from cli_checks import assert_one_line_error
from conftest import REPO
from loopback_servers import llamacpp_server

KEY = "sk-closedlab-TESTKEY-0123456789abcdefXYZ"
TASK = "mmlu_snapshot_generative_marketing"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def upstream(smollm2_path):
    pytest.importorskip("lm_eval")
    with llamacpp_server(str(smollm2_path), n_ctx=2048) as url:
        yield url


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("CLOSED_LAB_KEY", KEY)
    return {"CLOSED_LAB_KEY": KEY}


def _eval_args(url: str, out: Path, *more: str) -> list[str]:
    return ["eval", "-b", "openai", "--base-url", url, "--api-key-env", "CLOSED_LAB_KEY", "--tasks", TASK,
            "--num-fewshot", "1", "--format", "json", "--out", str(out), *more]


def _record(out: Path) -> dict:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def _context_messages(sample: dict) -> list[dict]:
    """The chat messages lm-eval built for a document (its request's context)."""
    args = sample["arguments"]
    first = args[0] if isinstance(args, list) else next(iter(args.values()))
    context = first[0] if isinstance(first, (list, tuple)) else next(iter(first.values()))
    return json.loads(context)


def _samples(record: dict) -> dict[int, dict]:
    lines = Path(record["evaluation"]["samples_file"]).read_text().splitlines()
    return {d["doc_id"]: d for d in map(json.loads, lines) if d.get("filter") == "strict-match"}


def test_generative_task_through_the_chat_only_api_sends_what_in_process_renders(upstream, cli, tmp_path, key_env):
    system = "You answer multiple-choice questions with a single letter."
    same = ["--limit", "3", "--fewshot-as-multiturn", "--system-instruction", system, "--log-samples", "--no-cache"]
    with ChatProxy(upstream, KEY) as proxy:
        served = cli(*_eval_args(proxy.url, tmp_path / "api", *same, "--concurrency", "2"), env=key_env)
        assert served.code == 0, served.stderr[-3000:]
    rec = _record(tmp_path / "api")
    assert rec["status"] == "ok" and rec["model"]["name"] == "closed-model-1"
    assert KEY not in json.dumps(rec) and KEY not in served.stderr
    ev = rec["evaluation"]
    assert ev["apply_chat_template"] is True and ev["fewshot_as_multiturn"] is True and ev["concurrency"] == 2
    # usage from the API, per task; nothing asked of a tokenizer or the completions API
    usage = ev["usage"][TASK]
    assert usage["requests"] == 3 and usage["prompt_tokens"] > 3 * 50 and usage["completion_tokens"] > 0
    assert proxy.other_paths == [] and proxy.fates() == ["answered"] * 3
    bodies = [e["body"] for e in proxy.chat_posts]
    for body in bodies:  # greedy, seeded, the task's max tokens and stop sequences
        assert body["temperature"] == 0 and body["seed"] == 0 and body["max_tokens"] == 32
        assert body["stop"] == ["</s>", "\n"] and body["stream"] is True
        assert body["messages"][0] == {"role": "system", "content": body["messages"][0]["content"]}
        assert body["messages"][0]["content"].startswith(system)
        assert [m["role"] for m in body["messages"][1:]] == ["user", "assistant", "user"]  # one shot, multi-turn

    local = cli("eval", "-b", "llamacpp", "--tasks", TASK, "--num-fewshot", "1", "--apply-chat-template", *same,
                "--format", "json", "--out", str(tmp_path / "local"))
    assert local.code == 0, local.stderr[-3000:]
    api_docs, local_docs = _samples(rec), _samples(_record(tmp_path / "local"))
    assert sorted(api_docs) == sorted(local_docs) == [0, 1, 2]
    # the same protocol on both sides: the messages the API was sent are the messages the
    # in-process run rendered with the model's chat template, document by document
    sent = {messages_key({"messages": b["messages"]}) for b in bodies}
    for doc in api_docs:
        assert _context_messages(api_docs[doc]) == _context_messages(local_docs[doc])
        assert messages_key({"messages": _context_messages(api_docs[doc])}) in sent


def test_a_loglikelihood_task_is_refused_at_preflight(upstream, cli, tmp_path, key_env):
    with ChatProxy(upstream, KEY) as proxy:
        r = cli("eval", "-b", "openai", "--base-url", proxy.url, "--api-key-env", "CLOSED_LAB_KEY",
                "--tasks", "truthfulqa_mc2", "--limit", "2", "--out", str(tmp_path), env=key_env)
    assert_one_line_error(r, tmp_path, r"truthfulqa_mc2 scores log-likelihoods, which needs a batch scorer or a step "
                                       r"decoder; closed-model-1 at .* is a chat API without prompt log-probabilities"
                                       r".*the suite open-vs-closed runs on it")
    assert proxy.chat_posts == []  # refused before a single paid request


def test_bench_on_a_chat_api_is_refused_at_preflight(cli, tmp_path):
    with ChatProxy("http://127.0.0.1:9", KEY) as proxy:
        r = cli("bench", "-b", "openai", "--set", f"base_url={proxy.url}", "--pp", "16", "--tg", "8", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"pp/tg tests run on token ids, which needs a step decoder or .*"
                                       r"backend 'openai' has a text generator only.*harness load")
    assert proxy.chat_posts == []


def test_rate_limits_and_a_cut_stream_are_retried_and_counted(upstream, cli, tmp_path, key_env):
    with ChatProxy(upstream, KEY, rate_limit=(1,), retry_after_s=1.0, cut=(3,)) as proxy:
        r = cli(*_eval_args(proxy.url, tmp_path, "--limit", "3", "--no-cache"), env=key_env)
    assert r.code == 0, r.stderr[-3000:]
    assert proxy.fates() == ["429", "answered", "cut", "answered", "answered"]
    posts = proxy.chat_posts
    assert posts[1]["t"] - posts[0]["t"] >= 1.0  # Retry-After honoured
    assert posts[0]["body"] == posts[1]["body"] and posts[2]["body"] == posts[3]["body"]  # the same request again
    rec = _record(tmp_path)
    assert rec["status"] == "ok" and rec["evaluation"]["usage"][TASK]["retries"] == 2
    assert rec["evaluation"]["usage"][TASK]["requests"] == 3


def test_a_killed_run_resumes_from_its_cache_without_resending_an_answered_request(upstream, tmp_path, key_env):
    env = {**os.environ, **key_env, "HARNESS_CACHE_DIR": str(tmp_path / "cache")}
    args = _eval_args("{url}", tmp_path / "runs", "--limit", "4")
    with ChatProxy(upstream, KEY, hold_after=2) as proxy:
        first = subprocess.Popen([sys.executable, "-m", "harness.cli", *[a.replace("{url}", proxy.url) for a in args]],
                                 cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
        try:
            assert proxy.held.wait(timeout=300), "the run never reached its third request"
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # as an OOM killer or a lost machine would
            first.wait(timeout=60)
        answered_before = {messages_key(b) for b in proxy.answered}
        assert len(answered_before) == 2 and not list((tmp_path / "runs").glob("*.json"))
        n_before = len(proxy.chat_posts)
        proxy.hold_after = None
        proxy.release()
        second = subprocess.run([sys.executable, "-m", "harness.cli", *[a.replace("{url}", proxy.url) for a in args]],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    resent = [messages_key(e["body"]) for e in proxy.chat_posts[n_before:]]
    assert len(resent) == 2 and not answered_before & set(resent)  # only the two never answered went out
    ev = _record(tmp_path / "runs")["evaluation"]
    assert ev["requests_total"] == 4 and ev["requests_recalled"] == 2
    assert ev["usage"][TASK]["requests"] == 2


def test_concurrent_requests_overlap_on_a_slow_api(cli, tmp_path):
    with PacedChatServer(delay_s=0.5) as srv:
        t0 = time.monotonic()
        r = cli("eval", "-b", "openai", "--base-url", srv.url, "--tasks", TASK, "--limit", "8", "--num-fewshot", "0",
                "--concurrency", "4", "--no-cache", "--api-price", "paced=1.5/6", "--format", "json",
                "--out", str(tmp_path))
        wall = time.monotonic() - t0
    assert r.code == 0, r.stderr[-3000:]
    assert srv.most_in_flight == 4
    ev = _record(tmp_path)["evaluation"]
    assert ev["cost"]["generate_s"] >= 2 * 0.5  # 8 answers of 0.5 s, 4 at a time: at least two rounds
    assert ev["usage"][TASK]["prompt_tokens"] == 8 * 50 and ev["usage"][TASK]["completion_tokens"] == 8
    cost = ev["api_cost"]
    assert cost["price_name"] == "paced" and cost["cost"] == pytest.approx((400 * 1.5 + 8 * 6) / 1e6)
    assert wall < 60


def test_a_reasoning_model_is_timed_from_its_first_thought_and_scored_on_its_answer():
    from harness.backends.openai_http import OpenAIHttpBackend, OpenAISettings, remote_model_info
    from harness.core.backend import GenerationRequest

    with PacedChatServer(delay_s=0.05, answer=" C", reasoning=("Let me", " think."), reasoning_gap_s=0.3) as srv:
        b = OpenAIHttpBackend(remote_model_info(srv.url, "paced-model"), OpenAISettings(base_url=srv.url))
        b.load()
        try:
            (r,) = b.generate([GenerationRequest(prompt=[{"role": "user", "content": "Pick one."}], max_tokens=64)])
        finally:
            b.close()
    assert r.text == " C" and r.finish_reason == "stop"  # the answer is the content alone
    assert r.reasoning_tokens == 2 and r.completion_tokens == 3 and r.prompt_tokens == 50
    # the first token of either kind: the first thought, before the 2 x 0.3 s of thinking
    assert r.client_ttft_s < 0.3 < 0.6 <= r.client_e2e_s
