#!/usr/bin/env python3
"""The figures behind closed models through chat APIs and vLLM's eval speed (issue 11).

    python benchmarks/closed_models.py chat-vs-local [--task mmlu_snapshot_generative_marketing] [--limit 100]
    python benchmarks/closed_models.py concurrency [--limit 32] [--delay 0.5] [--rounds 2]
    python benchmarks/closed_models.py vllm-speed [--limit 20] [--rounds 1]

chat-vs-local: a generative multiple-choice task, greedy, two ways: through the chat-only
  proxy (tests/chat_proxy.py: /v1/models and /v1/chat/completions only, a key, another
  model name) in front of llama-cpp-python's server on the default model, and in process
  with --apply-chat-template. Prints both scores, their difference, and how many
  documents got the same extracted answer.
concurrency: a chat eval on a server whose latency dominates (every answer takes --delay
  seconds), --concurrency 8 against --concurrency 1 in alternating rounds (1, 8, 8, 1, ...);
  prints requests per second of each and the ratio of their means (the goal is close to 8).
vllm-speed: truthfulqa_mc2 on the same documents through vLLM and llama.cpp in
  alternating rounds; prints eval time without the model load (``cost.wall_s -
  cost.model_load_s``), their ratio (the goal is at most 3), and both scores.

Every run is `harness eval` as a user runs it (its own worker process). The machine is
shared: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

KEY = "sk-benchmark-proxy-key-0123456789abcdef"


def harness(*args: str, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args, "--format", "json"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"harness {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _record(out: dict) -> dict:
    return out[0] if isinstance(out, list) else out


def score(record: dict, task: str, metric: str = "exact_match", filt: str | None = None) -> float:
    rows = [a for a in record["accuracy"] if a["task"] == task and a["metric"] == metric
            and (filt is None or a["filter"] == filt)]
    if not rows:
        sys.exit(f"no {metric} for {task} in the record")
    return rows[0]["value"]


def eval_seconds(record: dict) -> float:
    cost = record["evaluation"]["cost"]
    return cost["wall_s"] - (cost["model_load_s"] or 0.0)


def answers(record: dict) -> dict[tuple[int, str], str]:
    lines = Path(record["evaluation"]["samples_file"]).read_text().splitlines()
    return {(d["doc_id"], d["filter"]): d["filtered_resps"][0] for d in map(json.loads, lines)}


def chat_vs_local(a) -> None:
    from chat_proxy import ChatProxy
    from harness.core.models import BUNDLED
    from loopback_servers import llamacpp_server

    out = Path(tempfile.mkdtemp(prefix="closed-vs-local-"))
    common = ["--tasks", a.task, "--limit", str(a.limit), "--log-samples", "--no-cache"]
    with llamacpp_server(str(BUNDLED["smollm2-135m"].locate()), n_ctx=4096) as upstream, ChatProxy(upstream, KEY) as proxy:
        t0 = time.monotonic()
        api = _record(harness("eval", "-b", "openai", "--base-url", proxy.url, "--api-key-env", "BENCH_KEY", *common,
                              "--out", str(out / "api"), env={"BENCH_KEY": KEY}))
        api_s = time.monotonic() - t0
    t0 = time.monotonic()
    local = _record(harness("eval", "-b", "llamacpp", "--apply-chat-template", *common, "--out", str(out / "local")))
    local_s = time.monotonic() - t0
    print(f"{a.task}, {a.limit} documents, greedy, default fewshot; chat path on both sides")
    for filt in ("strict-match", "flexible-extract"):
        s_api, s_local = score(api, a.task, filt=filt), score(local, a.task, filt=filt)
        print(f"  {filt:17s} chat-only proxy {s_api:.3f}   in process {s_local:.3f}   "
              f"difference {100 * (s_api - s_local):+.1f} points")
    x, y = answers(api), answers(local)
    same = sum(x[k] == y.get(k) for k in x if k[1] == "flexible-extract")
    print(f"  same extracted answer (flexible-extract): {same} of {sum(1 for k in x if k[1] == 'flexible-extract')}")
    print(f"  usage through the API: {api['evaluation']['usage'][a.task]}")
    print(f"  command times: proxy {api_s:.0f} s, in process {local_s:.0f} s (shared machine)")


def concurrency(a) -> None:
    from chat_proxy import PacedChatServer

    out = Path(tempfile.mkdtemp(prefix="chat-concurrency-"))
    rates: dict[int, list[float]] = {1: [], 8: []}
    order = []
    for r in range(a.rounds):
        order += [1, 8] if r % 2 == 0 else [8, 1]
    with PacedChatServer(delay_s=a.delay) as srv:
        for i, n in enumerate(order):
            rec = _record(harness("eval", "-b", "openai", "--base-url", srv.url, "--tasks",
                                  "mmlu_snapshot_generative_marketing", "--limit", str(a.limit), "--num-fewshot", "0",
                                  "--concurrency", str(n), "--no-cache", "--out", str(out / f"{i}")))
            seconds = rec["evaluation"]["cost"]["generate_s"]
            rates[n].append(a.limit / seconds)
            print(f"  round {i + 1}: --concurrency {n}: {a.limit} requests in {seconds:.2f} s of generation "
                  f"= {a.limit / seconds:.2f} req/s (eval {eval_seconds(rec):.2f} s)")
    m1, m8 = statistics.fmean(rates[1]), statistics.fmean(rates[8])
    print(f"paced server ({a.delay:g} s per answer), {a.limit} requests per run, rounds {order}")
    print(f"  --concurrency 1: {m1:.2f} req/s   --concurrency 8: {m8:.2f} req/s   ratio {m8 / m1:.2f}x (goal close to 8x)")


def vllm_speed(a) -> None:
    out = Path(tempfile.mkdtemp(prefix="vllm-speed-"))
    times: dict[str, list[float]] = {"vllm": [], "llamacpp": []}
    scores: dict[str, float] = {}
    order = []
    for r in range(a.rounds):
        order += ["vllm", "llamacpp"] if r % 2 == 0 else ["llamacpp", "vllm"]
    for i, backend in enumerate(order):
        extra = ["--set", "compilation_mode=0"] if backend == "vllm" else []
        rec = _record(harness("eval", "-b", backend, "--tasks", "truthfulqa_mc2", "--limit", str(a.limit), "--no-cache",
                              *extra, "--out", str(out / f"{i}")))
        seconds = eval_seconds(rec)
        times[backend].append(seconds)
        scores[backend] = score(rec, "truthfulqa_mc2", metric="acc")
        c = rec["evaluation"]["cost"]
        print(f"  round {i + 1}: {backend}: eval {seconds:.1f} s without the model load ({c['model_load_s']:.1f} s), "
              f"acc {scores[backend]:.4f}, {c['requests_loglikelihood']} log-likelihood requests")
    v, l = statistics.fmean(times["vllm"]), statistics.fmean(times["llamacpp"])
    print(f"truthfulqa_mc2, {a.limit} documents, rounds {order}")
    print(f"  vLLM {v:.1f} s, llama.cpp {l:.1f} s: {v / l:.1f}x (goal at most 3x)")
    print(f"  acc: vLLM {scores['vllm']:.4f}, llama.cpp {scores['llamacpp']:.4f}, "
          f"difference {100 * (scores['vllm'] - scores['llamacpp']):+.1f} points")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    c = sub.add_parser("chat-vs-local")
    c.add_argument("--task", default="mmlu_snapshot_generative_marketing")
    c.add_argument("--limit", type=int, default=100)
    k = sub.add_parser("concurrency")
    k.add_argument("--limit", type=int, default=32)
    k.add_argument("--delay", type=float, default=0.5)
    k.add_argument("--rounds", type=int, default=2)
    v = sub.add_parser("vllm-speed")
    v.add_argument("--limit", type=int, default=20)
    v.add_argument("--rounds", type=int, default=1)
    a = p.parse_args()
    {"chat-vs-local": chat_vs_local, "concurrency": concurrency, "vllm-speed": vllm_speed}[a.figure](a)


if __name__ == "__main__":
    main()
