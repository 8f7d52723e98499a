"""Sending a load point's requests (arrivals by rate or a fixed concurrency) and summarising what came
back: throughput, TTFT, TPOT, ITL, end-to-end latency, goodput."""

from __future__ import annotations

import asyncio
import itertools
from typing import Callable

import numpy as np

from harness.measurement.meters import now_ns
from harness.measurement.traffic_options import Api, Profile, TrafficRequest, percentile_key
from harness.measurement.traffic_prompts import Prompt


# ------------------------------------------------------------------ sending load


def arrival_gap(rng: np.random.Generator, rate: float, burstiness: float = 1.0) -> float:
    """Seconds to the next request, as vllm bench serve draws them: gamma-distributed with shape
    ``burstiness`` and mean 1/rate (burstiness 1: exponential gaps, a Poisson process)."""
    return float(rng.gamma(burstiness, 1.0 / (rate * burstiness)))


async def run_point(client, api: Api, bodies: list[dict], profile: Profile, req: TrafficRequest,
                     rng: np.random.Generator) -> tuple[list[tuple[int, object]], int, int]:
    """Send one load point; returns (index, RequestResult) pairs, its start and its end."""
    path = "chat/completions" if api == "chat" else "completions"
    results: list[tuple[int, object]] = []
    limit = req.requests
    max_inflight = int(profile.value) if profile.kind == "concurrency" else (req.max_concurrency or len(bodies))
    async with client.async_client(max_inflight) as http:
        # the first request on a fresh async client pays for lazy imports and a connection;
        # a cheap request before the clock keeps that out of the first sample
        await asyncio.gather(*(client.aprime(http) for _ in range(min(max_inflight, 16))))
        t0 = now_ns()
        deadline = t0 + int(req.duration_s * 1e9) if req.duration_s else None

        def more(i: int) -> bool:
            return (limit is None or i < limit) and (deadline is None or now_ns() < deadline)

        async def one(i: int) -> None:
            # a duration-bounded point ends at its deadline: what is still running then is stopped
            r = await client.astream(http, path, bodies[i % len(bodies)], api, deadline_ns=deadline)
            results.append((i, r))

        if profile.kind == "concurrency":
            counter = itertools.count()

            async def worker() -> None:
                while more(i := next(counter)):
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(int(profile.value))))
        else:
            sem = asyncio.Semaphore(max_inflight)

            async def capped(i: int) -> None:
                async with sem:
                    await one(i)

            tasks = []
            at_s = 0.0
            i = 0
            while True:
                if not np.isinf(profile.value):
                    wait_ns = t0 + int(at_s * 1e9) - now_ns()
                    if wait_ns > 0:
                        await asyncio.sleep(wait_ns / 1e9)
                if not more(i):
                    break
                tasks.append(asyncio.create_task(capped(i)))
                i += 1
                if not np.isinf(profile.value):
                    at_s += arrival_gap(rng, profile.value, req.burstiness)
            await asyncio.gather(*tasks)
        end = max([r.end_ns for _, r in results], default=now_ns())
    return sorted(results, key=lambda x: x[0]), t0, end


def _stats(values: list[float], prefix: str) -> dict[str, float | None]:
    if not values:
        return {f"{prefix}_{k}": None for k in ("mean", "median", "p90", "p99")}
    a = np.asarray(values, dtype=float)
    return {f"{prefix}_mean": float(a.mean()), f"{prefix}_median": float(np.median(a)),
            f"{prefix}_p90": float(np.percentile(a, 90)), f"{prefix}_p99": float(np.percentile(a, 99))}


def summarize(results, t0: int, end: int, profile: Profile, req: TrafficRequest, prompts: list[Prompt],
              count_tokens: Callable[[str], int] | None):
    """RequestResults -> a TrafficPoint with vLLM's metric definitions."""
    from harness.core.record import TrafficPoint, TrafficSample

    samples: list[TrafficSample] = []
    ttfts, tpots, itls, e2els = [], [], [], []
    errors: dict[str, int] = {}
    total_in = total_out = good = disagree = short = retried = at_deadline = 0
    for i, r in results:
        retried += bool(r.retries)
        start_ms = (r.start_ns - t0) / 1e6
        if not r.ok:
            if r.error_kind == "deadline":
                at_deadline += 1  # not the server's failure: the point's --duration ended it
            else:
                errors[r.error_kind] = errors.get(r.error_kind, 0) + 1
            samples.append(TrafficSample(ok=False, start_ms=start_ms, retries=r.retries, e2el_ms=r.e2el_ns / 1e6,
                                         error=f"{r.error_kind}: {r.error}"))
            continue
        if r.usage_completion_tokens is not None:
            out, source = int(r.usage_completion_tokens), "usage"
        elif r.finish_reason == "length":
            out, source = req.output_len, "finish_length"  # the server stopped at max_tokens exactly
        elif count_tokens is not None:
            out, source = count_tokens(r.text), "tokenizer"
        else:
            out, source = r.n_chunks, "chunks"
        disagree += out < r.n_chunks  # every chunk that carried text holds at least one token
        short += req.ignore_eos and out < req.output_len
        prompt = prompts[i % len(prompts)]
        n_in = r.usage_prompt_tokens if r.usage_prompt_tokens is not None else prompt.tokens
        total_in += n_in or 0
        total_out += out
        ttft = r.ttft_ns / 1e6 if r.ttft_ns is not None else None
        e2el = r.e2el_ns / 1e6
        tpot = (e2el - ttft) / (out - 1) if ttft is not None and out > 1 else None
        itl = [x / 1e6 for x in r.itl_ns]
        if ttft is not None:
            ttfts.append(ttft)
        if tpot is not None:
            tpots.append(tpot)
        itls.extend(itl)
        e2els.append(e2el)
        meets = {"ttft_ms": ttft, "tpot_ms": tpot or 0.0, "e2el_ms": e2el}  # vLLM: TPOT of one token counts as 0
        good += all(meets[k] is not None and meets[k] <= v for k, v in req.slo.items())
        samples.append(TrafficSample(ok=True, start_ms=start_ms, prompt_tokens=n_in, output_tokens=out,
                                     output_tokens_source=source, chunks=r.n_chunks, ttft_ms=ttft, tpot_ms=tpot,
                                     e2el_ms=e2el, itl_ms=itl, finish_reason=r.finish_reason, retries=r.retries))
    completed = len(e2els)
    duration = max(end - t0, 1) / 1e9
    unavailable = {}
    if any(s.ok and s.prompt_tokens is None for s in samples):
        unavailable["total_input_tokens"] = "the server reported no prompt usage and no local tokenizer was given (--model)"
    return TrafficPoint(
        profile=profile.kind, label=profile.label,
        concurrency=int(profile.value) if profile.kind == "concurrency" else req.max_concurrency,
        request_rate_per_s=None if profile.kind == "concurrency" or np.isinf(profile.value) else profile.value,
        api=req.api, input_len=req.input_len, output_len=req.output_len, ignore_eos=req.ignore_eos,
        warmup_requests=req.warmup, requests=len(results), completed=completed,
        errors=len(results) - completed - at_deadline, stopped_at_deadline=at_deadline,
        error_kinds=errors, retried_requests=retried, duration_s=duration,
        total_input_tokens=total_in, total_output_tokens=total_out,
        request_throughput_per_s=completed / duration, output_tokens_per_s=total_out / duration,
        total_tokens_per_s=(total_in + total_out) / duration,
        **_stats(ttfts, "ttft_ms"), **_stats(tpots, "tpot_ms"), **_stats(itls, "itl_ms"), **_stats(e2els, "e2el_ms"),
        slo=req.slo, goodput_per_s=good / duration if req.slo else None,
        burstiness=req.burstiness if profile.kind == "rate" and not np.isinf(profile.value) else None,
        percentiles={m: {percentile_key(q): float(np.percentile(vals, q)) for q in req.metric_percentiles or [99]}
                     for m, vals in (("ttft_ms", ttfts), ("tpot_ms", tpots), ("itl_ms", itls), ("e2el_ms", e2els))
                     if m in req.percentile_metrics and vals},
        token_count_disagreements=disagree, short_outputs=short, samples=samples, unavailable=unavailable,
    )


