"""`harness bench`: pre-flight every input, plan, run, return the records.

All checks happen before the first process starts, so bad input leaves no result
file behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from harness.core import registry
from harness.core.backend import BackendSettings, StepDecoder, capability_words, missing_for, serves
from harness.core.config import PerfTests
from harness.core.errors import BackendNotInstalled, ConfigError
from harness.execution.plan import build_plan
from harness.execution.runner import OnEvent, Outcome, run_plan
from harness.output.store import check_writable_dir


class BenchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = []
    backend: str
    pp: list[int]
    tg: list[int]
    reps: int
    grid: dict[str, list[Any] | None] = {}
    out_dir: Path
    command: list[str] = []
    # offline batch throughput: batch sizes, and the prompt / generated tokens of each request
    batch: list[int] = []
    batch_pp: int = 128
    batch_tg: int = 128
    pg: list[tuple[int, int]] = []  # llama-bench's -pg: prompt + generation tests
    depth: list[int] = [0]  # llama-bench's -d: context depths


def check_installed(backend_cls: type[registry.Backend]) -> None:
    if backend_cls.installed_version() is None:
        raise BackendNotInstalled(f"backend '{backend_cls.name}' is not installed; install it with: {backend_cls.install_hint}")


def unsupported_tests(backend_cls: type[registry.Backend], settings: BackendSettings, tests: PerfTests) -> list[str]:
    """The kinds of test in ``tests`` this backend cannot run with these settings: "depth"
    (a test at a context depth needs a KV cache to step) and "batch" (batch throughput needs
    requests served at once)."""
    out = []
    if any(tests.depth) and not issubclass(backend_cls, StepDecoder):
        out.append("depth")
    if tests.batch and not serves(backend_cls, settings, "batch"):
        out.append("batch")
    return out


def parse_set_options(items: list[str] | None) -> dict[str, list[Any]]:
    """``--set KEY=V1,V2`` (repeatable) -> {KEY: ["V1", "V2"]}: any backend setting, typed by
    the backend's settings model later; 'none' stands for None (the engine's default)."""
    grid: dict[str, list[Any]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not values.strip():
            raise ConfigError(f"--set: '{item}' is not KEY=VALUE[,VALUE...] (e.g. --set enable_prefix_caching=0,1)")
        if key in grid:
            raise ConfigError(f"--set: {key} is given twice; list its values once, comma-separated")
        grid[key] = [None if v.strip().lower() == "none" else v.strip() for v in values.split(",")]
    return grid


def run_bench(request: BenchRequest, on_event: OnEvent | None = None) -> Outcome:
    if request.reps < 1:
        raise ConfigError("--reps must be at least 1")
    if not request.pp and not request.tg and not request.pg and not request.batch:
        raise ConfigError("nothing to measure: give at least one --pp, --tg, -pg or --batch size")
    if request.batch and (request.batch_pp < 1 or request.batch_tg < 1):
        raise ConfigError("--batch-pp and --batch-tg must be at least 1")
    backend_cls = registry.get(request.backend)
    check_installed(backend_cls)
    check_writable_dir(request.out_dir)
    backend_cls.check_setting_names(k for k, v in request.grid.items() if v)
    if (request.pp or request.tg) and not serves(backend_cls, None, "bench"):
        raise ConfigError(f"harness bench's pp/tg tests run on token ids, which needs {missing_for(backend_cls, None, 'bench')}; "
                          f"backend '{backend_cls.name}' has {capability_words(backend_cls)} only; for a served model's "
                          "time to first token and output tokens/s use `harness load --base-url URL`")
    # the backend resolves: a GGUF for llama.cpp, a Hugging Face directory (converted from a
    # GGUF once, cached) for vLLM, a served model for openai (found through its settings);
    # no --model is the backend's default
    through = {k: request.grid[k][0] for k in backend_cls.resolve_keys if len(request.grid.get(k) or []) == 1}
    models = [backend_cls.resolve_model(ref, through) for ref in request.models or [None]]
    tests = PerfTests(pp=request.pp, tg=request.tg, reps=request.reps, batch=request.batch,
                      batch_pp=request.batch_pp, batch_tg=request.batch_tg, pg=request.pg, depth=request.depth or [0])
    grid = {k: v for k, v in request.grid.items() if v}
    groups = build_plan(backend_cls, models, grid, tests)
    unsupported = unsupported_tests(backend_cls, groups[0].cases[0].settings, tests)
    if "depth" in unsupported:
        raise ConfigError(f"--n-depth: backend '{backend_cls.name}' runs whole requests; tests at a depth "
                          f"need a backend that steps a KV cache (llamacpp)")
    if "batch" in unsupported:
        raise ConfigError(f"--batch: backend '{backend_cls.name}' runs one request at a time; "
                          f"batch throughput needs a batching backend (--backend vllm)")
    return run_plan(groups, tests, request.out_dir, request.command, on_event)
