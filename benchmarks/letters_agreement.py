#!/usr/bin/env python3
"""Letter scoring through a chat-only API against letter scoring in process, and both against log-likelihood.

    python benchmarks/letters_agreement.py [--tasks mmlu_snapshot] [--limit 9] [--model smollm2-135m]

Three `harness eval` runs on the same documents (--limit per leaf task; 9 per MMLU subject
gives 513 questions):

1. ``--mc-scoring letters`` through the chat-only proxy (tests/chat_proxy.py: /v1/models and
   /v1/chat/completions only, a key, another model name) in front of llama-cpp-python's
   server on the model (flash attention on, as the in-process backend's default): the
   API's top_logprobs of the first generated token;
2. ``--mc-scoring letters`` in process on llama.cpp: the logits after the chat-rendered prompt;
3. lm-eval's own log-likelihood scoring in process (the task as published, no chat template).

Prints each run's score with its 95% interval, how often the two letter routes picked the
same letter, and how far apart their per-document letter probabilities are (they read the
same model through two engines' code paths, so they should agree to numerical noise).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

KEY = "sk-benchmark-proxy-key-0123456789abcdef"


def harness(*args: str, env: dict | None = None) -> dict:
    """One `harness eval` as a user runs it; its record."""
    from closed_models import _record, harness as run

    return _record(run(*args, env=env))


def top_score(record: dict, task: str) -> dict:
    rows = [a for a in record["accuracy"] if a["task"] == task and a["metric"] == "acc"]
    if not rows:
        sys.exit(f"no acc for {task} in the record")
    return rows[0]


def distributions(record: dict) -> dict[tuple[str, int], list[float]]:
    """(leaf task, doc id) -> each choice's probability, from the --log-samples file."""
    out = {}
    for line in Path(record["evaluation"]["samples_file"]).read_text().splitlines():
        s = json.loads(line)
        lls = [r[0][0] if isinstance(r[0], list) else r[0] for r in s["resps"]]
        out[(s["task"], s["doc_id"])] = [math.exp(ll) if ll is not None and ll > -1e30 else 0.0 for ll in lls]
    return out


def mass(record: dict, task: str) -> float | None:
    rows = [a for a in record["accuracy"] if a["task"] == task and a["metric"] == "letter_mass"]
    return rows[0]["value"] if rows else None


def interval(row: dict) -> str:
    v, n = row["value"], row["n"]
    if not n:
        return ""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.975)  # Wilson interval of a proportion
    centre = (v + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(v * (1 - v) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"[{100 * (centre - half):.1f}, {100 * (centre + half):.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mmlu_snapshot")
    ap.add_argument("--limit", default="9")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concurrency", default="1")
    ap.add_argument("--keep", type=Path, help="write the three records (and samples) here instead of a temporary folder")
    ap.add_argument("--flash-attn", type=int, choices=(0, 1), default=1, help="on both engines (default 1, the backend's)")
    args = ap.parse_args()

    from chat_proxy import ChatProxy
    from loopback_servers import llamacpp_server

    from harness.core.models import locate

    path, _ = locate(args.model)
    common = ["--tasks", args.tasks, "--limit", args.limit, "--log-samples", "--no-cache"]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        with llamacpp_server(str(path), n_ctx=4096, flash_attn=bool(args.flash_attn)) as upstream, ChatProxy(upstream, KEY) as proxy:
            api = harness("eval", "-b", "openai", "--base-url", proxy.url, "--api-key-env", "BENCH_KEY",
                          "--mc-scoring", "letters", "--concurrency", args.concurrency, *common,
                          "--out", str(out / "api"), env={"BENCH_KEY": KEY})
            sent = len(proxy.chat_posts)
        local = harness("eval", "-b", "llamacpp", "-m", args.model, "--mc-scoring", "letters", *common,
                        "--set", f"flash_attn={args.flash_attn}",
                        "--out", str(out / "local"))
        ll = harness("eval", "-b", "llamacpp", "-m", args.model, "--tasks", args.tasks, "--limit", args.limit,
                     "--set", f"flash_attn={args.flash_attn}", "--no-cache", "--out", str(out / "ll"))
        a, b = distributions(api), distributions(local)
    task = args.tasks.split(",")[0]
    print(f"{task}, --limit {args.limit} per leaf task, model {args.model}; {sent} chat requests through the proxy\n")
    print("| route | scoring | acc % | 95% interval | n | letter mass |")
    print("| --- | --- | ---: | --- | ---: | ---: |")
    for name, rec in (("chat-only API (proxy, llama-cpp-python server)", api), ("in process (llama.cpp)", local),
                      ("in process (llama.cpp)", ll)):
        row = top_score(rec, task)
        m = mass(rec, task)
        print(f"| {name} | {row['scoring']} | {100 * row['value']:.1f} | {interval(row)} | {row['n']} | "
              f"{'' if m is None else f'{m:.3f}'} |")
    shared = sorted(set(a) & set(b))
    same = sum(max(range(len(a[k])), key=a[k].__getitem__) == max(range(len(b[k])), key=b[k].__getitem__) for k in shared)
    diffs = [abs(x - y) for k in shared for x, y in zip(a[k], b[k])]
    print(f"\ndocuments in both letter runs: {len(shared)} (api {len(a)}, in process {len(b)})")
    print(f"same letter picked: {same}/{len(shared)} = {100 * same / max(1, len(shared)):.1f}%")
    print(f"letter probabilities, |api - in process|: max {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e}")
    gap = 100 * (top_score(api, task)["value"] - top_score(local, task)["value"])
    print(f"acc, api - in process: {gap:+.1f} points")


if __name__ == "__main__":
    main()
