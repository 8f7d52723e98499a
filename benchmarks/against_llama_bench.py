"""Check that `harness bench` agrees with llama.cpp's own llama-bench.

Runs both tools in alternating rounds (ABBA order) on the same model, threads and tests (so drift
in the machine's speed hits both alike) and prints each tool's tokens/s per test,
their ratio, and every round's figures.

llama-bench must come from the llama.cpp that llama-cpp-python vendors. Build it
outside the repository from the sdist, for example:

    pip download --no-deps --no-binary :all: -d /tmp/sdist llama-cpp-python==0.3.36
    tar xzf /tmp/sdist/llama_cpp_python-0.3.36.tar.gz -C /tmp/sdist
    cd /tmp/sdist/llama_cpp_python-0.3.36 && mv .git /tmp/sdist/git-aside   # build outside git
    cmake -S vendor/llama.cpp -B /tmp/llama-bench -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
    cmake --build /tmp/llama-bench --target llama-bench -j

Usage:
    python benchmarks/against_llama_bench.py --llama-bench /tmp/llama-bench/bin/llama-bench \
        [--model smollm2-135m] [--threads 2] [--pp 512] [--tg 128] [--reps 5] [--rounds 4] \
        [--rounds-file rounds.jsonl]

On a VM whose speed swings between rounds, run it several times with one --rounds-file: each
round is appended there and the summary pools every round in the file (geometric mean of the
paired ratios with a 95% bootstrap confidence interval).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile


def run_llama_bench(binary: str, model_path: str, args) -> dict[str, float]:
    from harness.backends.llamacpp import repack_default

    # the harness's weight-repacking default, so both run the same kernels
    no_repack = [] if repack_default() else ["--no-repack", "1"]
    out = subprocess.run(
        [binary, "-m", model_path, "-t", str(args.threads), "-p", str(args.pp), "-n", str(args.tg),
         "-r", str(args.reps), "-o", "json", *no_repack],
        capture_output=True, text=True, check=True,
    )
    rows = json.loads(out.stdout)
    return {("pp%d" % r["n_prompt"]) if r["n_prompt"] else ("tg%d" % r["n_gen"]): r["avg_ts"] for r in rows}


def run_harness(model: str, args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out_dir:
        out = subprocess.run(
            [sys.executable, "-m", "harness.cli", "bench", "--model", model, "--threads", str(args.threads),
             "--pp", str(args.pp), "--tg", str(args.tg), "--reps", str(args.reps), "--format", "json", "--out", out_dir],
            capture_output=True, text=True, check=True,
        )
    record = json.loads(out.stdout)
    return {p["test"]: p["tps_mean"] for p in record["perf"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-bench", required=True, help="path to the llama-bench binary")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--tg", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rounds-file", help="append each round here (JSON lines) and pool every round in it")
    args = parser.parse_args()

    from harness.core.models import resolve

    model_path = resolve(args.model).path
    rounds: list[tuple[dict, dict]] = []
    for i in range(args.rounds):
        # ABBA order: a drift in the machine's speed over the run hits both tools alike
        if i % 2 == 0:
            ref = run_llama_bench(args.llama_bench, model_path, args)
            ours = run_harness(args.model, args)
        else:
            ours = run_harness(args.model, args)
            ref = run_llama_bench(args.llama_bench, model_path, args)
        rounds.append((ref, ours))
        print(f"round {i + 1}: llama-bench {ref}  harness {ours}", file=sys.stderr)
        if args.rounds_file:
            with open(args.rounds_file, "a") as fh:
                fh.write(json.dumps({"llama_bench": ref, "harness": ours}) + "\n")

    # the ratio of the means and the median of the paired (same-round) ratios; neither says how
    # sure it is, which --rounds-file's pooled confidence interval does
    print("| test | llama-bench t/s | harness t/s | ratio of means | median paired ratio | per-round ratios |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for test in rounds[0][0]:
        ref = [r[test] for r, _ in rounds]
        ours = [o[test] for _, o in rounds]
        ratios = [o / r for r, o in zip(ref, ours)]
        print(f"| {test} | {statistics.fmean(ref):.2f} ± {statistics.stdev(ref) if len(ref) > 1 else 0:.2f} "
              f"| {statistics.fmean(ours):.2f} ± {statistics.stdev(ours) if len(ours) > 1 else 0:.2f} "
              f"| {statistics.fmean(ours) / statistics.fmean(ref):.3f} | {statistics.median(ratios):.3f} "
              f"| {', '.join(f'{x:.3f}' for x in ratios)} |")
    if args.rounds_file:
        with open(args.rounds_file) as fh:
            pooled = [json.loads(line) for line in fh if line.strip()]
        print(f"\nPooled over the {len(pooled)} rounds in {args.rounds_file}:")
        for test in rounds[0][0]:
            gm, low, high = geometric_mean_ci([r["harness"][test] / r["llama_bench"][test] for r in pooled])
            print(f"- {test}: harness/llama-bench geometric mean of paired ratios {gm:.3f} (95% CI {low:.3f} to {high:.3f})")
    return 0


def geometric_mean_ci(ratios: list[float]) -> tuple[float, float, float]:
    import numpy as np
    from scipy import stats

    logs = np.log(ratios)
    if len(logs) < 2:
        return float(np.exp(logs.mean())), float("nan"), float("nan")
    ci = stats.bootstrap((logs,), np.mean, n_resamples=10000, method="percentile", confidence_level=0.95,
                         random_state=0).confidence_interval
    return float(np.exp(logs.mean())), float(np.exp(ci.low)), float(np.exp(ci.high))


if __name__ == "__main__":
    sys.exit(main())
