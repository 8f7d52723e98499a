"""The result schema: one record type for every run, versioned.

A record describes one measured configuration: one model file, one backend with all
its settings, on one machine. Field names carry their units. A figure that could not
be read is ``None`` with the reason in ``unavailable``; it is never zero.

Every field is documented in results/README.md; bump SCHEMA_VERSION on any change
that a reader of older files would misread.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from harness.models import ModelInfo

SCHEMA_VERSION = "1.0"

# Direction of each metric, for compare: +1 higher is better, -1 lower is better.
DIRECTION: dict[str, int] = {
    "tps_mean": +1,
    "ttft_ms_mean": -1,
    "peak_rss_mib": -1,
    "peak_uss_mib": -1,
    "peak_vram_mib": -1,
    "gpu_energy_j": -1,
    "cpu_energy_j": -1,
    "load_ms": -1,
}


class BackendInfo(BaseModel):
    name: str
    version: str | None = None
    engine_version: str | None = None  # the engine under the binding, e.g. llama.cpp's build
    settings: dict[str, Any] = Field(default_factory=dict)
    device: str | None = None


class PerfResult(BaseModel):
    """One llama-bench style test: ppN (prompt processing) or tgN (generation)."""

    test: str
    n_prompt: int
    n_gen: int
    reps: int
    tps_mean: float
    tps_stddev: float
    samples_tps: list[float]
    samples_ms: list[float]
    ttft_ms_mean: float | None = None
    ttft_ms_stddev: float | None = None
    samples_ttft_ms: list[float] | None = None
    # memory sampled in the background while the test ran (warm-up included)
    peak_rss_mib: float | None = None
    peak_uss_mib: float | None = None
    peak_vram_mib: float | None = None
    device_mem_used_mib: float | None = None
    device_mem_total_mib: float | None = None
    # energy over the timed repetitions only
    gpu_energy_j: float | None = None
    cpu_energy_j: float | None = None
    unavailable: dict[str, str] = Field(default_factory=dict)


class LoadResult(BaseModel):
    """What loading the model cost."""

    load_ms: float
    rss_after_load_mib: float | None = None
    model_file_mib: float
    mmap: bool
    n_ctx: int
    n_vocab: int | None = None
    unavailable: dict[str, str] = Field(default_factory=dict)


class Failure(BaseModel):
    cause: str
    detail: str | None = None
    stderr_tail: str | None = None


class RunRecord(BaseModel):
    schema_version: str = SCHEMA_VERSION
    kind: Literal["run"] = "run"
    run_id: str
    created_at: str
    harness_version: str
    command: list[str] = Field(default_factory=list)
    model: ModelInfo
    backend: BackendInfo
    environment: dict[str, Any] = Field(default_factory=dict)
    model_load: LoadResult | None = None
    perf: list[PerfResult] = Field(default_factory=list)
    accuracy: list[dict[str, Any]] = Field(default_factory=list)
    status: Literal["ok", "failed", "partial"] = "ok"
    failures: list[Failure] = Field(default_factory=list)
    wall_s: float | None = None
