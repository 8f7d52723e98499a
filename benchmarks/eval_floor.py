#!/usr/bin/env python3
"""Whole `harness eval` commands against the log-likelihood compute floor, before and after.

    python benchmarks/eval_floor.py [--tasks mmlu_val_binary:200,truthfulqa_mc2:40]
                                    [--model smollm2-135m] [--threads N] [--rounds 1] [--json FILE]

The floor of a log-likelihood task is the tokens that must go through the model (each
distinct context once, plus every continuation but its last token: the run's
``evaluation.cost.floor_tokens``) at prompt-processing speed, pp64 (the continuations and
short contexts of a two-choice task are evaluated in small pieces). pp64 is measured by
`harness bench --pp 64` in the same run, before and after each eval command (rounds
alternate: pp64, before, pp64, after, pp64), and each command is held against the mean of
the two pp64 figures around it; `harness bench` matches llama-bench's pp figures within
about 2% (benchmarks/against_llama_bench.py), and --llama-bench PATH uses llama-bench
itself instead. The wall time is the whole command's, process start, imports, task
building and model load included.

"before" is the llama.cpp backend's default, the step decoder; "after" the batched
multi-sequence scorer (`--set batch_scoring=1`). Every document's answers are compared
between the two runs (--log-samples): the chosen answer per document and the largest
log-likelihood difference.

Run it on a quiet machine; on a shared one the figures carry its noise.
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


def run(code: Path, *args: str) -> tuple[dict | list, float]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args, "--format", "json"], capture_output=True,
                          text=True, cwd=code, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"harness {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), wall


def pp64(common: list[str], llama_bench: str | None, model_path: str | None, threads: int | None) -> float:
    if llama_bench:
        from harness.backends.llamacpp import repack_default

        cmd = [llama_bench, "-m", model_path, "-p", "64", "-n", "0", "-r", "5", "-o", "json"]
        if not repack_default():  # the harness's weight-repacking default: the same kernels
            cmd += ["--no-repack", "1"]
        if threads:
            cmd += ["-t", str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return float(json.loads(out)[0]["avg_ts"])
    with tempfile.TemporaryDirectory() as out:
        rec, _ = run(REPO, "bench", *common, "--pp", "64", "--tg", "none", "--reps", "5", "--out", out)
    rec = rec[0] if isinstance(rec, list) else rec
    return rec["perf"][0]["tps_mean"]


def choices(samples: Path) -> dict[tuple[str, int], list[float]]:
    out = {}
    for line in samples.read_text().splitlines():
        s = json.loads(line)
        out[(s["task"], s["doc_id"])] = [float(r[0]) for r in s["filtered_resps"]]
    return out


def eval_once(code: Path, common: list[str], task: str, limit: str, out: Path) -> dict:
    rec, wall = run(code, "eval", *common, "--tasks", task, "--limit", limit, "--no-cache", "--log-samples",
                    "--out", str(out))
    rec = rec[0] if isinstance(rec, list) else rec
    if rec["status"] != "ok":
        sys.exit(f"the eval run failed: {rec['failures']}")
    (samples,) = out.glob("*.samples.jsonl")
    return {"record": rec, "wall_s": wall, "choices": choices(samples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="mmlu_val_binary:200,truthfulqa_mc2:40", help="TASK:LIMIT, comma-separated")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--llama-bench", help="a llama-bench binary for pp64 (default: harness bench --pp 64)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    common = ["--model", args.model] + (["--threads", str(args.threads)] if args.threads else [])
    model_path = None
    if args.llama_bench:
        sys.path.insert(0, str(REPO))
        from harness.core.models import resolve

        model_path = resolve(args.model).path
    figures = []
    for spec in args.tasks.split(","):
        task, _, limit = spec.partition(":")
        for rnd in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                pps = [pp64(common, args.llama_bench, model_path, args.threads)]
                runs = {}
                for name, extra in (("before", []), ("after", ["--set", "batch_scoring=1"])):
                    (tmp / name).mkdir()
                    runs[name] = eval_once(REPO, common + extra, task, limit or "100", tmp / name)
                    pps.append(pp64(common, args.llama_bench, model_path, args.threads))
            row = {"task": task, "limit": limit, "round": rnd + 1, "pp64_tps": pps}
            for i, name in enumerate(("before", "after")):
                cost = runs[name]["record"]["evaluation"]["cost"]
                pp = statistics.fmean(pps[i:i + 2])
                floor_s = cost["floor_tokens"] / pp
                acc = {f"{a['task']} {a['metric']}": a["value"] for a in runs[name]["record"]["accuracy"] if a["kind"] == "task"}
                row[name] = {"wall_s": runs[name]["wall_s"], "floor_tokens": cost["floor_tokens"], "floor_s": floor_s,
                             "ratio": runs[name]["wall_s"] / floor_s, "eval_wall_s": cost["wall_s"],
                             "model_load_s": cost["model_load_s"], "accuracy": acc}
            b, a = runs["before"]["choices"], runs["after"]["choices"]
            common_docs = sorted(set(b) & set(a))
            flips = [d for d in common_docs if max(range(len(b[d])), key=b[d].__getitem__) != max(range(len(a[d])), key=a[d].__getitem__)]
            row["documents"] = len(common_docs)
            row["answer_changed"] = len(flips)
            row["max_abs_loglik_diff"] = max(abs(x - y) for d in common_docs for x, y in zip(b[d], a[d]))
            figures.append(row)
            print(f"{task} (limit {limit}, round {rnd + 1}): pp64 {', '.join(f'{p:.1f}' for p in pps)} t/s; "
                  f"floor {row['after']['floor_tokens']:,} tokens")
            for name in ("before", "after"):
                r = row[name]
                print(f"  {name:6} whole command {r['wall_s']:7.2f} s = {r['ratio']:.2f}x the floor ({r['floor_s']:.2f} s); "
                      f"model load {r['model_load_s']:.2f} s; accuracy {r['accuracy']}")
            print(f"  documents {row['documents']}: answer changed on {row['answer_changed']}, "
                  f"largest log-likelihood difference {row['max_abs_loglik_diff']:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
