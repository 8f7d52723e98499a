#!/usr/bin/env python3
"""How fast `harness eval` scores a multiple-choice task, against the compute floor.

    python benchmarks/eval_speed.py [--model smollm2-135m] [--tasks truthfulqa_mc2] [--limit 100]
                                    [--threads N] [--compare-gguf] [--json FILE]

The floor is the least prompt processing the task needs when every distinct context
goes through the model once: the distinct contexts' tokens plus each continuation's
tokens but its last (what `harness eval` records as ``floor_tokens``), divided by the
backend's prompt-processing speed measured with `harness bench` at the contexts' mean
length, on the same machine, right after. Contexts that share a prefix (few-shot
examples) can come in under the floor, because the shared part is evaluated once.

The wall time is the eval run's own (``evaluation.cost.wall_s``: task loading, model
load, scoring, metrics); the command's wall time (process start and imports included)
is shown beside it.

--compare-gguf runs the same documents through lm-eval's own ``gguf`` model against a
llama-cpp-python server on loopback (started and stopped here; it needs the server
extra and ``--logits_all``): one HTTP completion with echo per request, so every
request re-evaluates its whole context.

Run it on a quiet machine: the figures are only as good as the CPU time it gets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def harness(*args: str) -> dict:
    """Run the harness CLI as a user does; return its JSON output and the command's wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args, "--format", "json"], capture_output=True,
                          text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"harness {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    records = json.loads(proc.stdout)  # JSON output is a list of records; one command, one record
    return {"record": records[0] if isinstance(records, list) else records, "command_wall_s": wall}


def run_gguf(model_path: str, tasks: list[str], limit: int, threads: int | None, n_ctx: int) -> dict:
    import logging

    import lm_eval

    from harness.measurement.eval_results import accuracy_results

    from harness.measurement.eval_tasks import load_tasks, quiet_lm_eval
    from harness.backends.llamacpp import LlamaCppBackend
    from harness.measurement.serving import free_port, served
    from harness.measurement.suites import bundled_tasks_dir

    quiet_lm_eval()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    port = free_port()
    cmd = LlamaCppBackend.serve_command(model_path, python=sys.executable, name="model", host="127.0.0.1", port=port,
                                        n_ctx=n_ctx, extra=["--logits_all", "True"])
    if threads:
        i = cmd.index("--n_threads")
        cmd[i + 1] = cmd[cmd.index("--n_threads_batch") + 1] = str(threads)
    with served("llamacpp", cmd, port, 120, lambda line: print(f"[eval-speed] {line}", file=sys.stderr)) as url:
        t0 = time.perf_counter()
        loaded = load_tasks(tasks, [str(bundled_tasks_dir())])
        res = lm_eval.simple_evaluate(model="gguf", model_args={"base_url": url.removesuffix("/v1")},
                                      tasks=loaded.objects, task_manager=loaded.manager, limit=limit)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "accuracy": [a.model_dump() for a in accuracy_results(res)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="truthfulqa_mc2", help="multiple-choice task(s), comma-separated")
    ap.add_argument("--limit", type=int, default=100, help="documents per task")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pp-reps", type=int, default=3)
    ap.add_argument("--compare-gguf", action="store_true", help="also time lm-eval's gguf model on the same documents")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args()

    common = ["--model", args.model] + (["--threads", str(args.threads)] if args.threads else [])
    with tempfile.TemporaryDirectory() as out:
        ours = harness("eval", *common, "--tasks", args.tasks, "--limit", str(args.limit), "--no-cache", "--out", out)
        rec = ours["record"]
        if rec["status"] != "ok":
            sys.exit(f"the eval run failed: {rec['failures']}")
        cost = rec["evaluation"]["cost"]
        mean_ctx = max(16, round((cost["floor_tokens"]) / max(1, cost["contexts_evaluated"])))
        pp = harness("bench", *common, "--pp", str(mean_ctx), "--tg", "none", "--reps", str(args.pp_reps),
                     "--out", out)["record"]
    pp_tps = pp["perf"][0]["tps_mean"]
    floor_s = cost["floor_tokens"] / pp_tps
    figures = {
        "model": rec["model"]["ref"], "tasks": args.tasks, "limit": args.limit,
        "threads": rec["backend"]["settings"].get("n_threads"),
        "pp_test": pp["perf"][0]["test"], "pp_tps": pp_tps,
        "floor_tokens": cost["floor_tokens"], "tokens_evaluated": cost["tokens_evaluated"],
        "tokens_without_reuse": cost["tokens_without_reuse"], "floor_s": floor_s,
        "eval_wall_s": cost["wall_s"], "model_load_s": cost["model_load_s"], "command_wall_s": ours["command_wall_s"],
        "ratio_to_floor": cost["wall_s"] / floor_s, "command_ratio_to_floor": ours["command_wall_s"] / floor_s,
        "one_pass_per_request_s": cost["tokens_without_reuse"] / pp_tps,
        "accuracy": {f"{a['task']} {a['metric']}": a["value"] for a in rec["accuracy"] if a["kind"] == "task"},
    }
    print(f"model {figures['model']}, tasks {args.tasks} (limit {args.limit}), {figures['threads']} threads")
    print(f"prompt processing ({figures['pp_test']}, harness bench): {pp_tps:.1f} t/s")
    print(f"floor: {cost['floor_tokens']:,} tokens (each distinct context once + continuations) = {floor_s:.2f} s")
    print(f"harness eval: {cost['tokens_evaluated']:,} tokens evaluated; wall {cost['wall_s']:.2f} s "
          f"(model load {cost['model_load_s']:.2f} s) = {figures['ratio_to_floor']:.2f}x the floor "
          f"(whole command {ours['command_wall_s']:.2f} s = {figures['command_ratio_to_floor']:.2f}x)")
    print(f"one pass per request would evaluate {cost['tokens_without_reuse']:,} tokens = "
          f"{figures['one_pass_per_request_s']:.2f} s at that speed ({figures['one_pass_per_request_s'] / floor_s:.1f}x the floor)")
    print(f"accuracy: {figures['accuracy']}", flush=True)
    if args.compare_gguf:
        g = run_gguf(rec["model"]["path"], args.tasks.split(","), args.limit, args.threads,
                     int(rec["backend"]["settings"].get("n_ctx") or 4096))
        # the machine may have got busier or quieter meanwhile: the gguf route is held against a
        # prompt-processing speed measured right after it
        with tempfile.TemporaryDirectory() as out:
            pp2 = harness("bench", *common, "--pp", str(mean_ctx), "--tg", "none", "--reps", str(args.pp_reps),
                          "--out", out)["record"]["perf"][0]["tps_mean"]
        floor2_s = cost["floor_tokens"] / pp2
        figures.update(gguf_wall_s=g["wall_s"], gguf_pp_tps=pp2, gguf_floor_s=floor2_s, gguf_ratio_to_floor=g["wall_s"] / floor2_s,
                       gguf_accuracy={f"{a['task']} {a['metric']}": a["value"] for a in g["accuracy"] if a["kind"] == "task"},
                       speedup_vs_gguf=g["wall_s"] / cost["wall_s"])
        print(f"lm-eval gguf route: wall {figures['gguf_wall_s']:.2f} s; prompt processing measured after it {pp2:.1f} t/s, "
              f"floor {floor2_s:.2f} s: {figures['gguf_ratio_to_floor']:.1f}x the floor "
              f"(harness eval {figures['ratio_to_floor']:.2f}x); gguf accuracy: {figures['gguf_accuracy']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
