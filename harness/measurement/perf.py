"""llama-bench's tests on top of the backend contract.

``ppN``: N prompt tokens evaluated in n_batch chunks from an empty cache; tokens/s.
``tgN``: N tokens decoded one at a time from an empty cache; tokens/s; end-of-sequence
plays no part because the tokens are drawn, not sampled.

As in llama-bench the tokens are random ids (the first one BOS where the model adds
one), drawn before the clock starts; the cache is cleared before the clock starts;
one full-size warm-up run precedes the timed repetitions. A pp repetition also records
time to first token: the prompt evaluation plus reading the last logits and picking
the greedy token.

Engines without a KV cache to step through (not a ``StepDecoder``: vLLM, a text
generator of token-id prompts) are timed on whole requests through ``generate()`` instead (``method="requests"``):
ppN is one request of the N prompt tokens with ``max_tokens=1`` (prefill plus one sampled
token, which is also its time to first token); tgN is one request of the first token and
N generated tokens with end-of-sequence ignored: N forward passes of one token each, as
llama-bench's N evaluate calls. The engine's own request timestamps, where it reports
them, are recorded beside the harness clock's figures.

``ppP+tgT`` (llama-bench's -pg): P prompt tokens then T generated tokens, timed together;
(P + T) tokens/s. ``... @ dD`` (llama-bench's -d): before each repetition the cache is
cleared and filled with D random tokens outside the clock, so the test runs at that
context depth; the test's own tokens then start without BOS.

``batchB`` (offline throughput, as ``vllm bench throughput``): B requests of random prompt
tokens submitted together, each generating a fixed number of tokens with end-of-sequence
ignored (temperature 1, top-p 1, as vLLM's benchmark samples); output tokens/s and total
(prompt + output) tokens/s over the wall time of the whole batch.
"""

from __future__ import annotations

import statistics
from typing import Callable

import numpy as np

from harness.core.backend import Backend, GenerationRequest, GenerationResult, StepDecoder, serves
from harness.core.config import perf_test_name
from harness.core.errors import BackendError
from harness.measurement.meters import EnergyMeter, GpuMeter, MemorySampler, now_ns
from harness.core.record import PerfResult

Progress = Callable[[str, int, int], None]  # test name, repetition (0 = warm-up), reps


def _tokens(backend: Backend, n: int, rng: np.random.Generator, first_bos: bool) -> list[int]:
    toks = rng.integers(0, backend.n_vocab, size=n).tolist()
    bos = backend.bos_token
    if first_bos and bos is not None:
        toks[0] = bos
    return toks


def _fill_depth(backend: Backend, depth_tokens: list[int]) -> None:
    """Clear the cache, then evaluate the depth prefix (outside the clock)."""
    backend.reset()
    if depth_tokens:
        backend.evaluate(depth_tokens)


def _pp_once(backend: Backend, tokens: list[int], depth_tokens: list[int] = ()) -> tuple[int, int]:
    _fill_depth(backend, depth_tokens)
    t0 = now_ns()
    logits = backend.evaluate(tokens, logits="last")
    t1 = now_ns()
    int(np.argmax(logits))
    t2 = now_ns()
    return t1 - t0, t2 - t0


def _tg_once(backend: Backend, tokens: list[int], depth_tokens: list[int] = ()) -> int:
    _fill_depth(backend, depth_tokens)
    t0 = now_ns()
    for tok in tokens:
        backend.evaluate([tok])
    return now_ns() - t0


def _pg_once(backend: Backend, prompt: list[int], gen: list[int], depth_tokens: list[int] = ()) -> int:
    """llama-bench's pp+tg test: the prompt in n_batch chunks, then each generated token."""
    _fill_depth(backend, depth_tokens)
    t0 = now_ns()
    backend.evaluate(prompt)
    for tok in gen:
        backend.evaluate([tok])
    return now_ns() - t0


def _pg_request(backend: Backend, prompt: list[int], n_gen: int) -> int:
    t0 = now_ns()
    [res] = backend.generate([GenerationRequest(prompt=prompt, max_tokens=n_gen, ignore_eos=True)])
    t = now_ns() - t0
    _check_count(f"pp{len(prompt)}+tg{n_gen}", [res], n_gen)
    return t


def _pp_request(backend: Backend, tokens: list[int]) -> tuple[int, int, float | None]:
    t0 = now_ns()
    [res] = backend.generate([GenerationRequest(prompt=tokens, max_tokens=1, ignore_eos=True)])
    t = now_ns() - t0
    engine = None
    if res.engine_first_token_s is not None and res.engine_scheduled_s is not None \
            and res.engine_first_token_s > res.engine_scheduled_s:
        engine = len(tokens) / (res.engine_first_token_s - res.engine_scheduled_s)
    return t, t, engine


def _check_count(test: str, results: list[GenerationResult], want: int) -> None:
    got = sum(len(r.tokens) for r in results)
    if got != want:
        raise BackendError(f"{test}: the engine generated {got} tokens where {want} were asked for (end-of-sequence ignored)")


def _tg_request(backend: Backend, tokens: list[int]) -> tuple[int, float | None]:
    n = len(tokens)
    t0 = now_ns()
    [res] = backend.generate([GenerationRequest(prompt=tokens[:1], max_tokens=n, ignore_eos=True)])
    t = now_ns() - t0
    _check_count(f"tg{n}", [res], n)
    engine = None
    if n > 1 and res.engine_first_token_s is not None and res.engine_last_token_s is not None \
            and res.engine_last_token_s > res.engine_first_token_s:
        engine = (n - 1) / (res.engine_last_token_s - res.engine_first_token_s)
    return t, engine


def _summary(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_test(backend: Backend, kind: str, n: int | tuple[int, int], reps: int, gpu: GpuMeter | None,
             seed: int = 0, progress: Progress | None = None, depth: int = 0,
             roofline_device: str | None = None) -> PerfResult:
    """One llama-bench test: kind pp or tg with n tokens, or pg with n = (prompt, generated)
    tokens; ``depth`` tokens fill the cache before each repetition, outside the clock. With
    ``roofline_device`` ("cpu" or "gpu": where the weights are read from), a result that
    generates also gets its memory-bandwidth roofline (harness/measurement/roofline.py)."""
    if kind not in ("pp", "tg", "pg"):
        raise ValueError(f"unknown test kind {kind}")
    n_prompt, n_gen = n if kind == "pg" else ((n, 0) if kind == "pp" else (0, n))
    name = perf_test_name(kind, n, depth)
    steps = isinstance(backend, StepDecoder)
    if depth and not steps:
        raise BackendError(f"{name}: a test at a depth needs a backend that steps a KV cache; "
                           f"'{backend.name}' runs whole requests")
    rng = np.random.default_rng(seed)
    total = n_prompt + n_gen
    runs, prefixes = [], []
    for _ in range(reps + 1):
        prefixes.append(_tokens(backend, depth, rng, first_bos=True) if depth else [])
        runs.append(_tokens(backend, total, rng, first_bos=not depth))
    energy = EnergyMeter(gpu)
    samples_ns: list[int] = []
    ttft_ns: list[int] = []
    engine_tps: list[float] = []
    with MemorySampler(gpu) as mem:
        for rep, tokens in enumerate(runs):
            if progress:
                progress(name, rep, reps)
            if rep == 1:
                energy.start()
            prefix = prefixes[rep]
            if kind == "pp":
                t_eval, t_first, eng = (*_pp_once(backend, tokens, prefix), None) if steps else _pp_request(backend, tokens)
                if rep:
                    samples_ns.append(t_eval)
                    ttft_ns.append(t_first)
            elif kind == "tg":
                t, eng = (_tg_once(backend, tokens, prefix), None) if steps else _tg_request(backend, tokens)
                if rep:
                    samples_ns.append(t)
            else:
                prompt, gen = tokens[:n_prompt], tokens[n_prompt:]
                t, eng = (_pg_once(backend, prompt, gen, prefix) if steps else _pg_request(backend, prompt, n_gen)), None
                if rep:
                    samples_ns.append(t)
            if rep and eng is not None:
                engine_tps.append(eng)
        window = energy.stop()
    tps = [total / (ns / 1e9) for ns in samples_ns]
    mean, sd = _summary(tps)
    result = PerfResult(
        test=name,
        n_prompt=n_prompt,
        n_gen=n_gen,
        n_depth=depth,
        reps=reps,
        tps_mean=mean,
        tps_stddev=sd,
        samples_tps=tps,
        samples_ms=[ns / 1e6 for ns in samples_ns],
        method="steps" if steps else "requests",
        engine_tps_mean=statistics.fmean(engine_tps) if engine_tps else None,
        engine_samples_tps=engine_tps or None,
        peak_rss_mib=mem.peaks.peak_rss_mib,
        peak_rss_tree_mib=mem.peaks.peak_rss_tree_mib,
        peak_uss_mib=mem.peaks.peak_uss_mib,
        peak_vram_mib=mem.peaks.peak_vram_mib,
        device_mem_used_mib=mem.peaks.device_mem_used_mib,
        device_mem_total_mib=mem.peaks.device_mem_total_mib,
        gpu_energy_j=window.gpu_energy_j,
        cpu_energy_j=window.cpu_energy_j,
        unavailable={**mem.peaks.unavailable, **window.unavailable},
    )
    if ttft_ns:
        ms = [ns / 1e6 for ns in ttft_ns]
        result.ttft_ms_mean, result.ttft_ms_stddev = _summary(ms)
        result.samples_ttft_ms = ms
    if kind == "tg" and roofline_device:
        from harness.measurement.roofline import annotate

        annotate(result, backend.model.path, roofline_device)
    return result


def run_batch_test(backend: Backend, batch: int, n_prompt: int, n_gen: int, reps: int, gpu: GpuMeter | None,
                   seed: int = 0, progress: Progress | None = None) -> PerfResult:
    """``batchB``: B requests submitted at once; output and total tokens/s over the batch's wall time."""
    if not serves(type(backend), backend.settings, "batch"):
        raise BackendError(f"backend '{backend.name}' runs one request at a time; the batch test needs a batching backend (vllm)")
    name = f"batch{batch}"
    rng = np.random.default_rng(seed)
    runs = [[_tokens(backend, n_prompt, rng, first_bos=True) for _ in range(batch)] for _ in range(reps + 1)]
    energy = EnergyMeter(gpu)
    samples_ns: list[int] = []
    with MemorySampler(gpu) as mem:
        for rep, prompts in enumerate(runs):
            if progress:
                progress(name, rep, reps)
            if rep == 1:
                energy.start()
            requests = [GenerationRequest(prompt=p, max_tokens=n_gen, ignore_eos=True, temperature=1.0, top_p=1.0)
                        for p in prompts]
            t0 = now_ns()
            results = backend.generate(requests)
            t = now_ns() - t0
            _check_count(name, results, batch * n_gen)
            if rep:
                samples_ns.append(t)
        window = energy.stop()
    seconds = [ns / 1e9 for ns in samples_ns]
    out_tps = [batch * n_gen / s for s in seconds]
    total_tps = [batch * (n_prompt + n_gen) / s for s in seconds]
    mean, sd = _summary(out_tps)
    return PerfResult(
        test=name, n_prompt=n_prompt, n_gen=n_gen, reps=reps, tps_mean=mean, tps_stddev=sd, samples_tps=out_tps,
        samples_ms=[s * 1e3 for s in seconds], method="requests", batch=batch,
        output_tps_mean=mean, total_tps_mean=statistics.fmean(total_tps), samples_total_tps=total_tps,
        requests_per_s_mean=statistics.fmean([batch / s for s in seconds]),
        peak_rss_mib=mem.peaks.peak_rss_mib, peak_rss_tree_mib=mem.peaks.peak_rss_tree_mib,
        peak_uss_mib=mem.peaks.peak_uss_mib, peak_vram_mib=mem.peaks.peak_vram_mib,
        device_mem_used_mib=mem.peaks.device_mem_used_mib, device_mem_total_mib=mem.peaks.device_mem_total_mib,
        gpu_energy_j=window.gpu_energy_j, cpu_energy_j=window.cpu_energy_j,
        unavailable={**mem.peaks.unavailable, **window.unavailable},
    )
