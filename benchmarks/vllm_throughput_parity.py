#!/usr/bin/env python3
"""In-process vLLM batch throughput (`harness bench --batch`) against `vllm bench throughput`.

Same model directory, same engine defaults (KV cache 1 GiB: VLLM_CPU_KVCACHE_SPACE=1 for
vLLM's tool, the harness's CPU default), same max_model_len (prompt + output + slack), same
number of prompts, prompt and output lengths, sampling (temperature 1, ignore_eos) and one
warm-up batch each. `vllm bench throughput` runs from Python (`add_cli_args` + `main`),
because the `vllm` command does not start under the vllm-cpu distribution. Rounds
alternate the two tools; each run starts its own engine.

    .venv/bin/python benchmarks/vllm_throughput_parity.py --batch 16 --input-len 128 --output-len 128 --rounds 1

Prints one JSON object: every run's output and total tokens/s and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

VLLM_THROUGHPUT = """
import argparse, sys
from vllm.benchmarks.throughput import add_cli_args, main
if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
"""


def run_harness(model: str, batch: int, pp: int, tg: int, reps: int, max_len: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "harness.cli", "bench", "-b", "vllm", "-m", model, "--pp", "none", "--tg", "none",
           "--batch", str(batch), "--batch-pp", str(pp), "--batch-tg", str(tg), "--reps", str(reps),
           "--n-ctx", str(max_len),
           "--out", str(out), "-f", "json"]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    record = json.loads(sorted(out.glob("*.json"), key=os.path.getmtime)[-1].read_text())
    [perf] = [p for p in record["perf"] if p["test"] == f"batch{batch}"]
    return {"tool": "harness bench --batch", "output_tps": statistics.median(perf["samples_tps"]),
            "total_tps": statistics.median(perf["samples_total_tps"]), "samples_output_tps": perf["samples_tps"],
            "settings": record["backend"]["settings"]}


def run_vllm(model_dir: str, batch: int, pp: int, tg: int, max_len: int, out: Path) -> dict:
    script = out / "vllm_throughput.py"
    script.write_text(VLLM_THROUGHPUT)
    result = out / "vllm_throughput.json"
    # --random-input-len/--random-output-len: with --input-len alone vLLM 0.32 prefers its
    # random-dataset defaults (1024 in) and says so only in a warning
    cmd = [sys.executable, str(script), "--model", model_dir, "--dataset-name", "random",
           "--random-input-len", str(pp), "--random-output-len", str(tg), "--random-range-ratio", "0",
           "--num-prompts", str(batch), "--num-warmups", str(batch), "--max-model-len", str(max_len),
           "--output-json", str(result)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    subprocess.run(cmd, check=True, cwd=out, env=env, stdout=subprocess.DEVNULL)
    data = json.loads(result.read_text())
    elapsed = data["elapsed_time"]
    return {"tool": "vllm bench throughput", "output_tps": batch * tg / elapsed, "total_tps": data["tokens_per_second"],
            "elapsed_s": elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="harness model reference (a GGUF is converted once)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3, help="timed batches per harness run")
    ap.add_argument("--rounds", type=int, default=1)
    # vLLM's random dataset decodes and re-encodes its prompts, so a few come out a little
    # longer than --input-len and its tool asserts they fit: both engines get this slack
    ap.add_argument("--len-slack", type=int, default=32, help="max_model_len = input + output + this, for both")
    args = ap.parse_args()
    max_len = args.input_len + args.output_len + args.len_slack
    sys.path.insert(0, str(REPO))
    from harness.backends.vllm_engine import VllmBackend

    model_dir = VllmBackend.resolve_model(args.model).path
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = (run_harness, run_vllm) if r % 2 == 0 else (run_vllm, run_harness)
            for fn in order:
                out = Path(tmp) / f"{fn.__name__}-{r}"
                out.mkdir()
                if fn is run_harness:
                    runs.append(run_harness(args.model, args.batch, args.input_len, args.output_len, args.reps, max_len, out))
                else:
                    runs.append(run_vllm(model_dir, args.batch, args.input_len, args.output_len, max_len, out))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    h = statistics.median(r["output_tps"] for r in runs if r["tool"].startswith("harness"))
    v = statistics.median(r["output_tps"] for r in runs if r["tool"].startswith("vllm"))
    print(json.dumps({"model_dir": model_dir, "batch": args.batch, "input_len": args.input_len,
                      "output_len": args.output_len, "runs": runs, "harness_over_vllm_output_tps": h / v}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
