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

from harness.core.models import ModelInfo

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
    # batch throughput and engine figures (vLLM)
    "output_tps_mean": +1,
    "total_tps_mean": +1,
    "requests_per_s_mean": +1,
    "engine_tps_mean": +1,
    "peak_rss_tree_mib": -1,
    # load points (harness load)
    "request_throughput_per_s": +1,
    "output_tokens_per_s": +1,
    "total_tokens_per_s": +1,
    "goodput_per_s": +1,
    "ttft_ms_median": -1,
    "tpot_ms_median": -1,
    "itl_ms_median": -1,
    "e2el_ms_median": -1,
    # compare (model load, load-point errors)
    "rss_after_load_mib": -1,
    "errors": -1,
}

# Accuracy metrics are higher-better unless named here; an accuracy entry's own
# "higher_is_better" (lm-eval's flag for the metric) wins over this list.
LOWER_IS_BETTER_ACCURACY = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"})


class BackendInfo(BaseModel):
    name: str
    version: str | None = None
    engine_version: str | None = None  # the engine under the binding, e.g. llama.cpp's build
    settings: dict[str, Any] = Field(default_factory=dict)
    device: str | None = None


class PerfResult(BaseModel):
    """One llama-bench style test: ppN (prompt processing) or tgN (generation)."""

    test: str  # pp512, tg128, pp512+tg128, batch8; " @ d4096" when run at a context depth
    n_prompt: int
    n_gen: int
    n_depth: int = 0  # tokens already in the cache when each repetition started (llama-bench's -d)
    reps: int
    tps_mean: float
    tps_stddev: float
    samples_tps: list[float]
    samples_ms: list[float]
    ttft_ms_mean: float | None = None
    ttft_ms_stddev: float | None = None
    samples_ttft_ms: list[float] | None = None
    # how the test ran: "steps" (evaluate() calls on a live KV cache, llama-bench's way) or
    # "requests" (whole engine requests, for engines without such a cache; results/README.md)
    method: Literal["steps", "requests"] = "steps"
    # the engine's own request timestamps (vLLM's RequestStateStats), where it has them:
    # ppN: prompt tokens / (first token - scheduled); tgN: (tokens - 1) / (last - first token)
    engine_tps_mean: float | None = None
    engine_samples_tps: list[float] | None = None
    # offline batch throughput (test "batchB"): B requests of n_prompt random tokens submitted
    # at once, n_gen tokens each (end-of-sequence ignored); tps_* above are output tokens/s
    batch: int | None = None
    output_tps_mean: float | None = None
    total_tps_mean: float | None = None  # (prompt + output tokens) / s
    requests_per_s_mean: float | None = None
    samples_total_tps: list[float] | None = None
    # RSS summed over the worker process and every process it started (an engine's core and
    # workers), sampled like peak_rss_mib; pages shared between them count once per process
    peak_rss_tree_mib: float | None = None
    # memory sampled in the background while the test ran (warm-up included)
    peak_rss_mib: float | None = None
    peak_uss_mib: float | None = None
    peak_vram_mib: float | None = None
    device_mem_used_mib: float | None = None
    device_mem_total_mib: float | None = None
    # energy over the timed repetitions only
    gpu_energy_j: float | None = None
    cpu_energy_j: float | None = None
    # tgN only: the memory-bandwidth bound on decoding (bandwidth / bytes read per token) and
    # tps_mean's share of it; roofline_method says how both figures were obtained (harness/measurement/roofline.py)
    roofline_tps: float | None = None
    roofline_fraction: float | None = None
    roofline_method: str | None = None
    unavailable: dict[str, str] = Field(default_factory=dict)


class EngineMemory(BaseModel):
    """An engine's own account of the memory it reserved at load (vLLM): the device's "used"
    figure is the reservation, not the model's need, so each part is named for what it is."""

    memory_share_setting: str | None = None  # which setting sized the reservation
    gpu_memory_utilization: float | None = None  # the configured share of device memory
    kv_cache_space_gib: float | None = None  # a fixed KV cache size (CPU: VLLM_CPU_KVCACHE_SPACE)
    weights_mib: float | None = None
    weights_source: str | None = None  # how weights_mib was obtained
    kv_cache_tokens: int | None = None  # tokens the allocated KV cache holds (all sequences)
    kv_cache_blocks: int | None = None
    kv_cache_block_size: int | None = None  # tokens per block
    # model parallelism (vLLM tensor_parallel_size x pipeline_parallel_size): weights_mib is the
    # sum over the workers; per_worker holds each worker's (one per GPU) weights_mib, device,
    # reserved_mib (torch's reservation on that GPU) and tp_rank/pp_rank where known
    parallel_size: int | None = None
    per_worker: list[dict[str, Any]] = Field(default_factory=list)
    reserved_mib_total: float | None = None
    unavailable: dict[str, str] = Field(default_factory=dict)


class LoadResult(BaseModel):
    """What loading the model cost."""

    load_ms: float
    rss_after_load_mib: float | None = None
    model_file_mib: float
    mmap: bool
    n_ctx: int
    n_vocab: int | None = None
    # sampled while load() ran: the worker alone, and the worker with every process it started
    peak_rss_load_mib: float | None = None
    peak_rss_tree_load_mib: float | None = None
    engine_memory: EngineMemory | None = None
    unavailable: dict[str, str] = Field(default_factory=dict)


# -- load tests (harness load); definitions in results/README.md ("Serving load tests")


class TrafficSample(BaseModel):
    """One request of a load point, as the client saw it (times in ms from its first send)."""

    ok: bool
    start_ms: float  # from the start of the load point
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    output_tokens_source: Literal["usage", "finish_length", "tokenizer", "chunks"] | None = None
    chunks: int = 0  # stream chunks that carried text
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None
    itl_ms: list[float] = Field(default_factory=list)
    finish_reason: str | None = None
    retries: int = 0
    error: str | None = None


class TrafficPoint(BaseModel):
    """One load point: a fixed concurrency or a request rate, with vLLM's serving metrics."""

    profile: Literal["concurrency", "rate"]
    label: str  # "c=4", "rate=2/s", "rate=inf", with "sweep " in front when a sweep chose it
    concurrency: int | None = None  # in-flight requests (a cap, for a rate profile)
    request_rate_per_s: float | None = None  # Poisson arrivals; None with profile=rate means all at once
    api: Literal["chat", "completions"]
    input_len: int | None = None  # requested prompt tokens (None: dataset prompts as they are)
    output_len: int
    ignore_eos: bool
    warmup_requests: int
    requests: int  # sent (after warm-up)
    completed: int
    errors: int
    error_kinds: dict[str, int] = Field(default_factory=dict)
    # requests still running when a --duration point's deadline came, stopped there: neither
    # completed nor errors (requests = completed + errors + stopped_at_deadline)
    stopped_at_deadline: int = 0
    retried_requests: int = 0
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    ttft_ms_mean: float | None = None
    ttft_ms_median: float | None = None
    ttft_ms_p90: float | None = None
    ttft_ms_p99: float | None = None
    tpot_ms_mean: float | None = None
    tpot_ms_median: float | None = None
    tpot_ms_p90: float | None = None
    tpot_ms_p99: float | None = None
    itl_ms_mean: float | None = None
    itl_ms_median: float | None = None
    itl_ms_p90: float | None = None
    itl_ms_p99: float | None = None
    e2el_ms_mean: float | None = None
    e2el_ms_median: float | None = None
    e2el_ms_p90: float | None = None
    e2el_ms_p99: float | None = None
    slo: dict[str, float] = Field(default_factory=dict)  # e.g. {"ttft_ms": 500, "tpot_ms": 50}
    goodput_per_s: float | None = None  # completed requests meeting every SLO, per second
    # arrivals of a finite --rate: gamma-distributed gaps of this shape (1: Poisson); None otherwise
    burstiness: float | None = None
    # --percentile-metrics / --metric-percentiles (vllm bench serve's): metric -> {"p25": ms, ...}
    percentiles: dict[str, dict[str, float]] = Field(default_factory=dict)
    # requests whose token count (usage report, or a stop at max_tokens) is below the text chunks received
    token_count_disagreements: int = 0
    # requests that stopped short of output_len although ignore_eos asked for all of it
    short_outputs: int = 0
    samples: list[TrafficSample] = Field(default_factory=list)
    unavailable: dict[str, str] = Field(default_factory=dict)

    def sample_count(self, metric: str) -> int:
        """How many samples a latency metric's figures rest on: the finished requests that have
        it (ttft_ms, tpot_ms, e2el_ms), or their gaps between chunks (itl_ms)."""
        ok = [s for s in self.samples if s.ok]
        if metric == "itl_ms":
            return sum(len(s.itl_ms) for s in ok)
        return sum(getattr(s, metric) is not None for s in ok)


# -- accuracy (harness eval); definitions in results/README.md ("Accuracy")


class AccuracyResult(BaseModel):
    """One metric of one lm-eval task or group, as lm-eval computed it."""

    task: str  # lm-eval task or group name
    alias: str | None = None  # lm-eval's display name (e.g. "truthfulqa_mc2 (CSV variant)")
    kind: Literal["task", "group"] = "task"
    parent: str | None = None  # the group this task or subgroup was run as part of
    metric: str  # e.g. acc, exact_match, pass@1
    filter: str = "none"  # lm-eval filter (answer extraction), e.g. strict-match
    value: float | None
    stderr: float | None = None  # lm-eval's standard error; None where it gives none
    n: int | None = None  # documents scored
    n_total: int | None = None  # documents in the task's evaluation split (a task's own, not a group's)
    num_fewshot: int | None = None
    higher_is_better: bool | None = None
    task_version: str | None = None
    task_config_hash: str | None = None  # sha256 of the task's full config (prompt, shots, filters, metrics)
    # how answers were scored: "loglikelihood" (the choices' log-probabilities), "generative"
    # (the model writes its answer), "perplexity", "letters, first-token" (the choice letters'
    # probabilities at the first generated token, harness/measurement/letters.py) or "letters, generated"
    # (the generated letter, where an API gave no log-probabilities), or "mixed" for a group
    # of several; None in records written before it was kept (the report then infers it)
    scoring: str | None = None


class EvalCost(BaseModel):
    """What the evaluation itself cost. 'Without reuse' is one full pass per request."""

    wall_s: float  # from task loading to results, model load included
    model_load_s: float | None = None  # every load, context resizes included
    requests_loglikelihood: int = 0
    requests_loglikelihood_rolling: int = 0
    requests_generate: int = 0
    contexts_evaluated: int = 0  # distinct contexts scored
    tokens_evaluated: int  # tokens passed through the model (generation steps included)
    tokens_without_reuse: int  # what one pass per request would have evaluated
    tokens_saved_by_reuse: int  # the difference: shared contexts and prefixes not evaluated again
    floor_tokens: int  # each distinct context once, plus every continuation token but the last
    tokens_generated: int = 0
    context_resizes: int = 0  # reloads for a larger n_ctx when a request did not fit
    rollback_unsupported: bool = False  # the cache could not roll back: contexts were re-evaluated
    generate_s: float | None = None  # wall time spent generating (requests_generate / generate_s: requests per second)
    peak_rss_mib: float | None = None  # of the measuring process while it scored


class TaskUsage(BaseModel):
    """One task's generation requests sent in this run, with the token counts the engine (an
    API's usage) reported; None where it reported none."""

    requests: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # reasoning tokens included, as the APIs count them
    reasoning_tokens: int | None = None
    prompt_tokens_cached: int | None = None  # of prompt_tokens, what the provider's cache held
    retries: int = 0  # 429/5xx answers, failed connections and cut streams that were sent again
    unreported: int = 0  # answers that came without a token count


class ApiCost(BaseModel):
    """What this run's requests cost at the price given with --api-price (requests answered
    from the request cache cost nothing and are not counted)."""

    price_name: str
    input_per_mtok: float
    output_per_mtok: float
    prompt_tokens: int
    completion_tokens: int
    cost: float | None  # None when some answer came without usage: a partial sum is not shown as the cost


class EvalInfo(BaseModel):
    """How an accuracy run was set up, so runs with different prompts are never compared silently."""

    lm_eval_version: str
    tasks: list[str]  # as requested (names, groups)
    suite: str | None = None
    limit: int | float | None = None  # documents per task, or a fraction (< 1) of each task's
    samples: dict[str, int] | None = None  # suite sample: leaf task -> documents
    num_fewshot: int | None = None  # an override given by the user; None: each task's own
    seed: list[int] | None = None  # lm-eval's seeds (random, numpy, torch, few-shot) given by the user; None: lm-eval's 0,1234,1234,1234
    gen_kwargs: str | None = None  # generation arguments given for every generative task (lm-eval's --gen_kwargs)
    apply_chat_template: bool = False
    chat_template_sha256: str | None = None
    code_execution: bool = False
    skipped: dict[str, str] = Field(default_factory=dict)  # task -> why it did not run
    task_config_hashes: dict[str, str] = Field(default_factory=dict)  # task or group -> config sha256
    request_cache: str | None = None  # lm-eval's request cache file (use_cache), if used
    # requests the tasks built, and how many of them lm-eval answered from its request cache
    # instead of asking the model; None in records written before they were counted
    requests_total: int | None = None
    requests_recalled: int | None = None
    samples_file: str | None = None  # --log-samples: the per-document JSONL file
    cost: EvalCost | None = None
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None  # None: lm-eval's default
    concurrency: int | None = None  # generation requests in flight at once (a text generator's)
    usage: dict[str, TaskUsage] = Field(default_factory=dict)  # task -> generation usage
    api_cost: ApiCost | None = None


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
    accuracy: list[AccuracyResult] = Field(default_factory=list)  # harness eval
    evaluation: EvalInfo | None = None  # harness eval: setup and cost
    load: list[TrafficPoint] = Field(default_factory=list)  # harness load: one entry per load point
    # "incomplete": written while the run goes on (harness load rewrites it after every load
    # point); left so on disk only when the harness was killed outright
    status: Literal["ok", "failed", "partial", "incomplete"] = "ok"
    failures: list[Failure] = Field(default_factory=list)
    wall_s: float | None = None


# ----------------------------------------------------------------------------- sweeps
# The summary `harness sweep` keeps beside the result files of its cells. It has its own
# kind and version: a reader of run records must not take it for one, and it can change
# without touching RunRecord.

SWEEP_SCHEMA_VERSION = "1.0"

# "running" in a summary on disk: the sweep was killed outright while that cell ran
CellStatus = Literal["pending", "running", "ok", "partial", "failed", "interrupted"]


class SweepCell(BaseModel):
    """One cell of the matrix: one model, one backend with one set of settings, one piece of work."""

    index: int  # 1-based position in the sweep, as the log lines count
    key: str  # sha256 of what the cell measures: model sha256, backend and version, settings, work, harness version
    label: str
    kind: Literal["perf", "suite"]
    model_ref: str
    model_sha256: str
    backend: str
    backend_version: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)  # as validated before the run, not yet resolved by a load
    perf: dict[str, Any] | None = None  # a perf cell's tests (harness.core.config.PerfTests), as data
    suite: str | None = None
    timeout_s: float
    status: CellStatus = "pending"
    cause: str | None = None  # why it is not ok: the first failure's cause
    stderr_tail: str | None = None
    result_file: str | None = None  # relative to the summary's folder
    run_id: str | None = None
    wall_s: float | None = None  # the whole cell as the sweep saw it: process start, model load, work
    finished_at: str | None = None
    reused: bool = False  # finished in an earlier invocation and kept by --resume
    attempts: int = 0  # how many times a process was started for it, over all invocations
    # `harness sweep --ray`: the cluster node that ran the cell ({node_id, hostname, ip}); None when local
    node: dict[str, str] | None = None


class SweepRecord(BaseModel):
    schema_version: str = SWEEP_SCHEMA_VERSION
    kind: Literal["sweep"] = "sweep"
    sweep_id: str
    created_at: str
    updated_at: str
    harness_version: str
    command: list[str] = Field(default_factory=list)
    matrix_file: str
    matrix_sha256: str
    matrix: dict[str, Any] = Field(default_factory=dict)
    status: Literal["running", "complete", "interrupted"] = "running"
    interrupted_by: str | None = None  # SIGINT or SIGTERM
    environment: dict[str, Any] = Field(default_factory=dict)
    cells: list[SweepCell] = Field(default_factory=list)
    superseded_files: list[str] = Field(default_factory=list)  # results of cells whose content changed, kept

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.cells:
            out[c.status] = out.get(c.status, 0) + 1
        return out
