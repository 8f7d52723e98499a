#!/usr/bin/env bash
# Prepares, on a machine with PyPI access, what benchmarks/gpu_check.sh needs on a bare GPU
# machine that can download nothing: .gpu-carry/ (git-ignored, carried with the working
# tree, 64 MiB at most) with
#   llama_cpp_python-0.3.36-trimmed.tar.gz  the sdist without what a CUDA build of the Python
#       package never compiles: llama.cpp's models (tokenizer test vocabularies), docs, media,
#       tests, examples, tools (mtmd: built only with LLAVA_BUILD, which gpu_check.sh turns
#       off), benches, scripts, gguf-py, every ggml backend but CPU and CUDA, and the git
#       history the sdist carries;
#   model.gguf  SmolLM2-135M's first 4 of 30 blocks (41 MB; benchmarks/gguf_first_layers.py):
#       the bundled models' files are over the carry limit;
#   wheels/  the harness's runtime and test dependencies that a PyTorch image may lack
#       (binary ones for CPython 3.10, 3.11 and 3.12; numpy is not carried: every PyTorch
#       image has it), and scikit-build-core for the build
#       (the build runs without isolation: pip could not fetch its build requirements there).
# Usage: PIP=.venv/bin/pip benchmarks/gpu_prepare.sh   (prints the carry's size)
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu-carry
VERSION=0.3.36
PIP="${PIP:-pip}"
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PIP" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION"
v="$src/vendor/llama.cpp"
find "$src" -name .git -prune -exec rm -rf {} +  # the sdist carries its git history
rm -rf "$src/examples" "$src/docs" "$src/tests" "$src/docker" \
       "$v/models" "$v/docs" "$v/media" "$v/tests" "$v/examples" "$v/tools" "$v/benches" "$v/scripts" \
       "$v/gguf-py" "$v/conversion" "$v/.github" "$v/.devops"
for backend in "$v"/ggml/src/ggml-*/; do
    case "$(basename "$backend")" in ggml-cpu|ggml-cuda) ;; *) rm -rf "$backend" ;; esac
done
tar -czf "$CARRY/llama_cpp_python-$VERSION-trimmed.tar.gz" -C "$work" "llama_cpp_python-$VERSION"

# pure-Python wheels once; compiled ones per CPython version the GPU image may have
PURE="scikit-build-core pathspec packaging diskcache typer click rich markdown-it-py mdurl pygments shellingham
      httpx httpcore h11 anyio sniffio idna certifi gguf tqdm nvidia-ml-py pytest pluggy iniconfig jinja2
      typing-extensions typing-inspection annotated-types pydantic exceptiongroup tomli"
BINARY="pydantic-core psutil markupsafe pyyaml"
"$PIP" download --quiet --no-deps --only-binary :all: -d "$CARRY/wheels" $PURE
for py in 3.10 3.11 3.12; do
    "$PIP" download --quiet --no-deps --only-binary :all: --python-version "$py" \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$CARRY/wheels" $BINARY
done
PY="${PYTHON:-$(dirname "$PIP")/python}"
smollm2=$(PYTHONPATH="$PWD" "$PY" -c "from harness.core.models import resolve; print(resolve('smollm2-135m').path)")
PYTHONPATH="$PWD" "$PY" benchmarks/gguf_first_layers.py "$smollm2" "$CARRY/model.gguf" --layers 4
du -sh "$CARRY" "$CARRY"/*
