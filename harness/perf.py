"""llama-bench's tests on top of the backend contract.

``ppN``: N prompt tokens evaluated in n_batch chunks from an empty cache; tokens/s.
``tgN``: N tokens decoded one at a time from an empty cache; tokens/s; end-of-sequence
plays no part because the tokens are drawn, not sampled.

As in llama-bench the tokens are random ids (the first one BOS where the model adds
one), drawn before the clock starts; the cache is cleared before the clock starts;
one full-size warm-up run precedes the timed repetitions. A pp repetition also records
time to first token: the prompt evaluation plus reading the last logits and picking
the greedy token.
"""

from __future__ import annotations

import statistics
from typing import Callable

import numpy as np

from harness.backend import Backend
from harness.meters import EnergyMeter, GpuMeter, MemorySampler, now_ns
from harness.record import PerfResult

Progress = Callable[[str, int, int], None]  # test name, repetition (0 = warm-up), reps


def _tokens(backend: Backend, n: int, rng: np.random.Generator, first_bos: bool) -> list[int]:
    toks = rng.integers(0, backend.n_vocab, size=n).tolist()
    bos = backend.bos_token
    if first_bos and bos is not None:
        toks[0] = bos
    return toks


def _pp_once(backend: Backend, tokens: list[int]) -> tuple[int, int]:
    backend.reset()
    t0 = now_ns()
    logits = backend.evaluate(tokens, logits="last")
    t1 = now_ns()
    int(np.argmax(logits))
    t2 = now_ns()
    return t1 - t0, t2 - t0


def _tg_once(backend: Backend, tokens: list[int]) -> int:
    backend.reset()
    t0 = now_ns()
    for tok in tokens:
        backend.evaluate([tok])
    return now_ns() - t0


def _summary(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_test(backend: Backend, kind: str, n: int, reps: int, gpu: GpuMeter | None,
             seed: int = 0, progress: Progress | None = None) -> PerfResult:
    if kind not in ("pp", "tg"):
        raise ValueError(f"unknown test kind {kind}")
    name = f"{kind}{n}"
    rng = np.random.default_rng(seed)
    runs = [_tokens(backend, n, rng, first_bos=True) for _ in range(reps + 1)]
    energy = EnergyMeter(gpu)
    samples_ns: list[int] = []
    ttft_ns: list[int] = []
    with MemorySampler(gpu) as mem:
        for rep, tokens in enumerate(runs):
            if progress:
                progress(name, rep, reps)
            if rep == 1:
                energy.start()
            if kind == "pp":
                t_eval, t_first = _pp_once(backend, tokens)
                if rep:
                    samples_ns.append(t_eval)
                    ttft_ns.append(t_first)
            else:
                t = _tg_once(backend, tokens)
                if rep:
                    samples_ns.append(t)
        window = energy.stop()
    tps = [n / (ns / 1e9) for ns in samples_ns]
    mean, sd = _summary(tps)
    result = PerfResult(
        test=name,
        n_prompt=n if kind == "pp" else 0,
        n_gen=n if kind == "tg" else 0,
        reps=reps,
        tps_mean=mean,
        tps_stddev=sd,
        samples_tps=tps,
        samples_ms=[ns / 1e6 for ns in samples_ns],
        peak_rss_mib=mem.peaks.peak_rss_mib,
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
    return result
