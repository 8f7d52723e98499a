"""`harness load`'s options, parsed and checked before anything is sent: rates, concurrency, SLOs and
goodput, percentiles, and the load points (profiles) they make."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from harness.core.errors import ConfigError, MeasurementFailed
from harness.core.paths import DEFAULT_RESULTS_DIR


Api = Literal["chat", "completions"]
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")
Log = Callable[[str], None]


class TrafficError(MeasurementFailed):
    """The server could not be measured (it failed to start, or failed every request)."""


# ------------------------------------------------------------------ options


def parse_rates(option: str, text: str | None) -> list[float] | None:
    """'0.5,1,inf' -> [0.5, 1.0, inf]; every rate must be above zero."""
    if text is None:
        return None
    rates = []
    for part in text.split(","):
        part = part.strip().lower()
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"{option}: '{part}' is not a number of requests per second (e.g. {option} 0.5,1,inf)") from None
        if np.isnan(value) or value <= 0:
            raise ConfigError(f"{option}: {part} is not a positive request rate; give requests per second above 0 (or inf)")
        rates.append(value)
    if len(set(rates)) != len(rates):
        raise ConfigError(f"{option}: '{text}' repeats a value")
    return rates


# vllm bench serve's --percentile-metrics names -> the record's metric prefixes
PERCENTILE_METRICS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "itl": "itl_ms", "e2el": "e2el_ms"}


def _milliseconds(option: str, key: str, value: str) -> float:
    """One latency target's value, for --slo and --goodput alike."""
    value = value.strip()
    try:
        ms = float(value)
    except ValueError:
        raise ConfigError(f"{option}: '{value}' for {key} is not a number of milliseconds") from None
    if not ms > 0:
        raise ConfigError(f"{option}: {key} must be above 0 ms, got {value}")
    return ms


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    """vllm bench serve's --goodput KEY:MS (ttft, tpot, e2el; space- or comma-separated,
    repeatable) -> the --slo form {'ttft_ms': 500.0}."""
    slo: dict[str, float] = {}
    for part in (p for item in items or [] for p in item.replace(",", " ").split()):
        key, sep, value = part.partition(":")
        name = f"{key.strip()}_ms"
        if not sep or name not in SLO_KEYS:
            raise ConfigError(f"--goodput: '{part}' is not KEY:MS with KEY one of ttft, tpot, e2el (e.g. --goodput ttft:500 tpot:50)")
        slo[name] = _milliseconds("--goodput", key, value)
    return slo


def parse_percentile_metrics(text: str | None) -> list[str]:
    """vllm bench serve's --percentile-metrics: ttft,tpot,itl,e2el -> record prefixes."""
    if not text:
        return []
    out = []
    for name in (n.strip() for n in text.split(",")):
        if name not in PERCENTILE_METRICS:
            raise ConfigError(f"--percentile-metrics: '{name}' is not one of {', '.join(PERCENTILE_METRICS)}")
        out.append(PERCENTILE_METRICS[name])
    return out


def parse_metric_percentiles(text: str | None) -> list[float]:
    """vllm bench serve's --metric-percentiles: 25,50,99 -> [25.0, 50.0, 99.0], each in (0, 100]."""
    if not text:
        return []
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"--metric-percentiles: '{part}' is not a number (e.g. --metric-percentiles 25,50,99)") from None
        if not 0 < value <= 100:
            raise ConfigError(f"--metric-percentiles: {part} is not a percentile between 0 and 100")
        out.append(value)
    return out


def percentile_key(q: float) -> str:
    return f"p{q:g}"


def parse_slo(text: str | None) -> dict[str, float]:
    """'ttft_ms=500,tpot_ms=50' -> {'ttft_ms': 500.0, 'tpot_ms': 50.0}."""
    if not text:
        return {}
    slo: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in SLO_KEYS:
            raise ConfigError(f"--slo: '{part.strip()}' is not KEY=MS with KEY one of {', '.join(SLO_KEYS)} (e.g. --slo ttft_ms=500,tpot_ms=50)")
        slo[key] = _milliseconds("--slo", key, value)
    return slo


@dataclass(frozen=True)
class Profile:
    kind: Literal["concurrency", "rate"]
    value: float  # in-flight requests, or requests per second (inf: all at once)
    sweep: bool = False

    @property
    def label(self) -> str:
        if self.kind == "concurrency":
            text = f"c={int(self.value)}"
        else:
            text = "rate=inf" if np.isinf(self.value) else f"rate={self.value:.4g}/s"
        return ("sweep " if self.sweep else "") + text


class TrafficRequest(BaseModel):
    # a rate of inf (all at once) crosses to the worker as JSON's Infinity, not null
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    base_url: str | None = None
    serve: str | None = None  # a backend that starts a server of its own (Backend.serve_command)
    model: str | None = None  # a model reference: served by --serve, and the prompt tokenizer
    model_name: str | None = None  # the name the server serves it under
    api: Api = "completions"
    api_key_env: str | None = None
    concurrency: list[int] = []
    rates: list[float] = []
    sweep: int | None = None  # rates between the synchronous and the all-at-once throughput
    max_concurrency: int | None = None  # cap on in-flight requests for rate profiles
    requests: int | None = None  # per load point
    duration_s: float | None = None  # per load point: no request starts after this
    warmup: int = 1
    input_len: int | None = 128
    output_len: int = 64
    dataset: Path | None = None
    ignore_eos: bool = True
    slo: dict[str, float] = {}
    # vllm bench serve's report options: percentiles of these metrics (record prefixes such as
    # ttft_ms) beside the fixed median, p90 and p99; empty: none extra
    percentile_metrics: list[str] = []
    metric_percentiles: list[float] = []
    # arrival burstiness for --rate (vllm bench serve's): gaps are gamma-distributed with
    # shape burstiness and mean 1/rate; 1 is a Poisson process, below 1 burstier, above steadier
    burstiness: float = 1.0
    seed: int = 0
    retries: int = 2
    timeout_s: float = 300.0
    serve_python: str | None = None
    serve_args: list[str] = []
    serve_timeout_s: float | None = None
    out_dir: Path = DEFAULT_RESULTS_DIR
    command: list[str] = []


def validate(req: TrafficRequest) -> list[Profile]:
    """Every check that needs no server; returns the fixed profiles in order."""
    if bool(req.base_url) == bool(req.serve):
        raise ConfigError("give either --base-url URL (a running server) or --serve llamacpp|vllm --model REF")
    if not req.burstiness > 0:
        raise ConfigError(f"--burstiness: {req.burstiness} must be above 0 (1 is Poisson arrivals)")
    if req.metric_percentiles and not req.percentile_metrics:
        raise ConfigError("--metric-percentiles needs --percentile-metrics (which metrics: ttft,tpot,itl,e2el)")
    for c in req.concurrency:
        if c < 1:
            raise ConfigError(f"--concurrency: {c} is not a positive number of in-flight requests")
    for r in req.rates:
        if not r > 0:
            raise ConfigError(f"--rate: {r} is not a positive request rate")
    if req.sweep is not None and req.sweep < 1:
        raise ConfigError(f"--sweep: {req.sweep} must be at least 1 (the number of rates between the two ends)")
    if req.max_concurrency is not None and req.max_concurrency < 1:
        raise ConfigError(f"--max-concurrency: {req.max_concurrency} must be at least 1")
    if req.requests is not None and req.requests < 1:
        raise ConfigError(f"--requests: {req.requests} must be at least 1")
    if req.duration_s is not None and not req.duration_s > 0:
        raise ConfigError(f"--duration: {req.duration_s} must be above 0 seconds")
    if req.warmup < 0:
        raise ConfigError("--warmup must be 0 or more")
    if req.output_len < 1:
        raise ConfigError(f"--output-len: {req.output_len} must be at least 1")
    if req.input_len is not None and req.input_len < 1:
        raise ConfigError(f"--input-len: {req.input_len} must be at least 1")
    if req.retries < 0:
        raise ConfigError("--retries must be 0 or more")
    if req.dataset is not None and not req.dataset.is_file():
        raise ConfigError(f"--dataset: no such file: {req.dataset}")
    if req.dataset is None and req.input_len is None:
        raise ConfigError("give --input-len N (random prompts of N tokens) or --dataset FILE")
    if req.requests is None and req.duration_s is None:
        raise ConfigError("bound each load point with --requests N or --duration SECONDS")
    from harness.output.store import check_writable_dir

    check_writable_dir(req.out_dir)  # before a server is started or a request is sent
    profiles = [Profile("concurrency", c) for c in req.concurrency] + [Profile("rate", r) for r in req.rates]
    if not profiles and req.sweep is None:
        profiles = [Profile("concurrency", 1)]
    if req.requests is None and (any(p.kind == "rate" and np.isinf(p.value) for p in profiles) or req.sweep):
        raise ConfigError("--rate inf and --sweep send every request at once: bound them with --requests N")
    return profiles


