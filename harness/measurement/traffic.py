"""`harness load`: load-test an OpenAI-compatible server the way serving engineers do.

The server is one the user names (--base-url) or one this module starts on loopback
and always stops (--serve llamacpp | vllm). Load profiles are fixed concurrencies
(that many requests in flight), request rates (Poisson arrivals, as vLLM's benchmark
draws them) and a sweep (synchronous, then all at once, then rates spaced between the
two throughputs). Each load point becomes a TrafficPoint in the run record, with the raw
per-request samples kept. The metric definitions are vLLM's (benchmarks/serve.py) and
are written out in results/README.md.

Everything a user can get wrong is checked before the first timed request: the URL,
the key variable, the model name, the profile values, the server's first answer (the
warm-up). A run that cannot measure anything leaves no result file; once a load point
has finished, it is on disk (PointStore), whatever happens to the rest of the run.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from harness.execution import interrupts
from harness.core.errors import BackendNotInstalled, ConfigError, HarnessError, MeasurementFailed
from harness.measurement.meters import now_ns
from harness.core.paths import DEFAULT_RESULTS_DIR

if TYPE_CHECKING:
    from harness.core.backend import Backend

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
    model_config = ConfigDict(extra="forbid")

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
    if req.out_dir.exists() and not req.out_dir.is_dir():
        raise ConfigError(f"--out {req.out_dir} is a file; give a folder for result files")
    from harness.output.store import check_writable_dir

    check_writable_dir(req.out_dir)  # before a server is started or a request is sent
    profiles = [Profile("concurrency", c) for c in req.concurrency] + [Profile("rate", r) for r in req.rates]
    if not profiles and req.sweep is None:
        profiles = [Profile("concurrency", 1)]
    if req.requests is None and (any(p.kind == "rate" and np.isinf(p.value) for p in profiles) or req.sweep):
        raise ConfigError("--rate inf and --sweep send every request at once: bound them with --requests N")
    return profiles


# ------------------------------------------------------------------ prompts


class LocalTokenizer:
    """A GGUF model's tokenizer through llama-cpp-python, vocabulary only (no weights)."""

    def __init__(self, gguf_path: str):
        try:
            import llama_cpp
        except ImportError:
            raise BackendNotInstalled("random prompts from a GGUF tokenizer need llama-cpp-python; run: make setup") from None
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):  # llama.cpp warns about context size even for a vocabulary
            self._llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
        vocab = self._llm._model.vocab
        self.normal_ids = np.array([i for i in range(self._llm.n_vocab())
                                    if not llama_cpp.llama_vocab_is_control(vocab, i)], dtype=np.int64)

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode(), add_bos=False, special=False)

    def detokenize(self, ids: list[int]) -> str:
        return self._llm.detokenize(list(ids)).decode("utf-8", "replace")


def random_prompt(tok: LocalTokenizer, n: int, rng: np.random.Generator) -> tuple[str, int]:
    """Text that re-tokenizes to n tokens, from random normal tokens (vLLM's random dataset idea).

    Decoding random ids and encoding the text again merges or splits some of them, so
    the ids are topped up or cut until the text's own token count is n (a few passes).
    """
    ids = rng.choice(tok.normal_ids, size=n).tolist()
    text = tok.detokenize(ids)
    for _ in range(10):
        got = tok.tokenize(text)
        if len(got) == n:
            return text, n
        ids = got[:n] if len(got) > n else got + rng.choice(tok.normal_ids, size=n - len(got)).tolist()
        text = tok.detokenize(ids)
    return text, len(tok.tokenize(text))


def dataset_prompts(path: Path) -> list[str]:
    """JSON lines with a "prompt" (or "text") field, or plain text, one prompt per line."""
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"--dataset {path}: line {lineno} is not valid JSON") from None
            text = data.get("prompt") or data.get("text")
            if not isinstance(text, str) or not text:
                raise ConfigError(f"--dataset {path}: line {lineno} has no \"prompt\" (or \"text\") string")
            prompts.append(text)
        else:
            prompts.append(line)
    if not prompts:
        raise ConfigError(f"--dataset {path} has no prompts")
    return prompts


@dataclass
class Prompt:
    text: str
    tokens: int | None  # as the harness's tokenizer counts them; the server's usage report wins


def build_prompts(req: TrafficRequest, count: int, tok: LocalTokenizer | None) -> list[Prompt]:
    rng = np.random.default_rng(req.seed)
    if req.dataset is not None:
        texts = dataset_prompts(req.dataset)
        order = rng.permutation(len(texts)).tolist()
        out = []
        for i in range(count):
            text = texts[order[i % len(texts)]]
            if tok is not None and req.input_len is not None:
                ids = tok.tokenize(text)[: req.input_len]
                text = tok.detokenize(ids)
            out.append(Prompt(text, len(tok.tokenize(text)) if tok is not None else None))
        return out
    if tok is None:
        raise ConfigError("random prompts need the model's tokenizer: give --model REF (the GGUF the server runs) "
                          "or --dataset FILE")
    return [Prompt(*random_prompt(tok, req.input_len, rng)) for _ in range(count)]


# ------------------------------------------------------------------ a server on loopback


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_backend(name: str) -> type[Backend]:
    """The backend `--serve NAME` starts the server of; one HarnessError where there is none."""
    from harness.core import registry

    if not _can_serve(name):
        names = sorted(n for n in registry.available() if _can_serve(n))
        choices = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)
        raise HarnessError(f"--serve: unknown server '{name}'; use {choices}")
    return registry.get(name)


def _can_serve(name: str) -> bool:
    from harness.core import registry
    from harness.core.errors import BackendError

    try:
        return registry.get(name).can_serve()
    except BackendError:  # unknown, or a plugin that cannot be imported here
        return False


@contextmanager
def served(kind: str, command: list[str], port: int, timeout_s: float, log: Log) -> Iterator[str]:
    """Start the server in its own process group, wait until it lists models, always stop it."""
    import httpx

    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryFile(mode="w+") as errlog:
        log(f"starting the {kind} server on 127.0.0.1:{port}")
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=errlog, stderr=subprocess.STDOUT,
                                start_new_session=True)
        previous = signal.getsignal(signal.SIGTERM)
        if threading_main():  # SIGTERM unwinds through the finally below, which stops the server
            signal.signal(signal.SIGTERM, interrupts.raise_on_signal)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                code = proc.poll()
                if code is not None:
                    errlog.seek(0)
                    lines = [ln for ln in errlog.read().splitlines() if ln.strip()]
                    last = lines[-1].strip()[-300:] if lines else "no output"
                    raise TrafficError(f"the {kind} server exited with code {code} before it was ready: {last}")
                try:
                    if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TrafficError(f"the {kind} server was not ready after {timeout_s:.0f} s (raise --serve-timeout)")
                time.sleep(0.25)
            log(f"{kind} server ready")
            yield url
        finally:
            stop_process_group(proc)
            if threading_main():
                signal.signal(signal.SIGTERM, previous)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the whole group, then SIGKILL after grace_s; reaps the process."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            # the leader is gone; make sure nothing it started lingers in the group
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        except subprocess.TimeoutExpired:
            continue
    proc.poll()


# ------------------------------------------------------------------ sending load


def arrival_gap(rng: np.random.Generator, rate: float, burstiness: float = 1.0) -> float:
    """Seconds to the next request, as vllm bench serve draws them: gamma-distributed with shape
    ``burstiness`` and mean 1/rate (burstiness 1: exponential gaps, a Poisson process)."""
    return float(rng.gamma(burstiness, 1.0 / (rate * burstiness)))


async def _run_point(client, api: Api, bodies: list[dict], profile: Profile, req: TrafficRequest,
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


# ------------------------------------------------------------------ the run


@dataclass
class TrafficOutcome:
    record: object
    path: Path


def _resolve_model(ref: str | None):
    if ref is None:
        return None
    from harness.core.models import resolve

    return resolve(ref)


def run_traffic(req: TrafficRequest, log: Log = lambda s: None) -> TrafficOutcome:
    from harness.backends.openai_http import OpenAIClient, RetryPolicy, api_key_from_env, normalize_base_url, \
        remote_model_info, request_body, safe_url

    if req.serve and not req.model:  # as bench: the bundled default model
        from harness.core.models import DEFAULT_MODEL

        req = req.model_copy(update={"model": DEFAULT_MODEL})
    profiles = validate(req)
    key = api_key_from_env(req.api_key_env)
    server = server_backend(req.serve) if req.serve else None
    if server is not None:
        server.check_server(req.serve_python or sys.executable)
    if req.base_url:
        normalize_base_url(req.base_url)  # a malformed URL is refused before anything else
    model = _resolve_model(req.model)
    if model is not None and model.format == "gguf":
        from harness.measurement.template_sandbox import TemplateFailed, check_model_templates

        try:  # llama-cpp-python compiles the file's chat templates in process, for its tokenizer and its server
            check_model_templates(model.path)
        except TemplateFailed as exc:
            raise ConfigError(f"{model.path} is refused: compiling its chat template was stopped ({exc.message}); "
                              "llama-cpp-python compiles it when it loads the model, so the file is faulty or hostile") from None
    tok = None
    if model is not None and model.format == "gguf" and (req.dataset is None or req.input_len is not None):
        tok = LocalTokenizer(model.path)
    per_point = req.requests or 256  # a duration-bounded point cycles through this many prompts
    if req.serve and tok is None and req.dataset is None:
        build_prompts(req, 1, None)  # says what is missing before a server is started for nothing

    serve_cm = None
    served_by = None
    served_path = None
    engine_version = None
    if req.serve:
        python = req.serve_python or sys.executable
        from harness.core.models import BUNDLED

        name = req.model_name or (model.ref if model.ref in BUNDLED else Path(model.path).stem)
        needed = (req.input_len or 2048) + req.output_len + 16
        n_ctx = max(512, min(needed, model.context_length_train or needed))
        path = server.serve_model_path(model, python, log)
        served_path = path
        port = free_port()
        command = server.serve_command(path, python=python, name=name, host="127.0.0.1", port=port, n_ctx=n_ctx,
                                       extra=req.serve_args)
        serve_cm = served(req.serve, command, port, req.serve_timeout_s or server.serve_ready_timeout_s, log)
        served_by = req.serve
        engine_version = server.server_version(python)
        req = req.model_copy(update={"model_name": name})

    from contextlib import nullcontext

    with serve_cm or nullcontext(req.base_url) as base_url:
        client = OpenAIClient(base_url, key, req.timeout_s, RetryPolicy(max_retries=req.retries),
                              max_connections=max([req.max_concurrency or 0] + [int(p.value) for p in profiles
                                                  if p.kind == "concurrency"] + [per_point, 1]))
        try:
            name, listing = client.resolve_model(req.model_name)
            if model is None:
                model = remote_model_info(base_url, name)
            # built before the first timed request, after the server has said it serves the model
            # warm-up prompts are not among the timed ones: a server with a prefix cache would
            # otherwise answer the first timed request from the warm-up's cache
            everything = build_prompts(req, per_point + req.warmup, tok)
            prompts, warm = everything[:per_point], everything[per_point:]
            bodies = [request_body(req.api, name, p.text, req.output_len, ignore_eos=req.ignore_eos) for p in prompts]
            _warm_up(client, req, [request_body(req.api, name, p.text, req.output_len, ignore_eos=req.ignore_eos)
                                   for p in warm], log)
            if engine_version is None:
                engine_version = _remote_version(client)
            shown = safe_url(base_url) if not served_by else f"http://127.0.0.1 (started by harness: {served_by})"
            settings = {"base_url": shown, "api": req.api, "model_name": name, "served_by": served_by,
                        "key_variable": req.api_key_env, "retries": req.retries, "timeout_s": req.timeout_s,
                        "seed": req.seed, "dataset": str(req.dataset) if req.dataset else None,
                        "serve_args": req.serve_args or None,
                        "served_model_path": served_path}
            store = PointStore(_new_record(req, client, model, settings, engine_version, served_by), req.out_dir)
            count_tokens = (lambda text: len(tok.tokenize(text))) if tok is not None else None
            rng = np.random.default_rng(req.seed + 1)
            try:
                for profile in _profile_order(profiles, req):
                    chosen = profile(store.points) if callable(profile) else [profile]  # a sweep's middle rates
                    for p in chosen:
                        store.add(_measure(client, req, bodies, p, prompts, count_tokens, rng, log))
                path = store.finish()
            except BaseException as exc:
                store.stopped(exc)
                raise
        finally:
            client.close()
    return TrafficOutcome(store.record, path)


class PointStore:
    """The run record of a load test on disk, rewritten (atomically) after every load point.

    Until the last point it has status "incomplete", so a harness killed outright leaves
    every finished point behind in a file that says what it is. A failure or an interrupt
    after the first point rewrites it as "partial" with the cause; before the first point
    there is nothing to keep and no file is written.
    """

    def __init__(self, record, out_dir: Path):
        self.record = record
        self.out_dir = out_dir
        self.path: Path | None = None  # set by the first write that succeeds
        self.points_on_disk = 0

    @property
    def points(self) -> list:
        return self.record.load

    def add(self, point) -> None:
        self.record.load.append(point)
        self._write("incomplete")

    def stopped(self, exc: BaseException) -> None:
        """The run ends early: the finished points stay, with why the rest are missing."""
        from harness.core.record import Failure

        if not self.record.load:
            return
        if isinstance(exc, KeyboardInterrupt):
            cause = f"interrupted ({'SIGTERM' if isinstance(exc, interrupts.Terminated) else 'SIGINT'})"
        else:
            cause = str(exc) or type(exc).__name__
        n = len(self.record.load)
        self.record.failures.append(Failure(cause=f"stopped after {n} load point{'s' if n > 1 else ''}: {cause}"))
        try:
            self._write("partial")
        except (OSError, HarnessError):
            pass  # the file as the last write left it ("incomplete") stays; the first error is the one shown
        if self.path is not None:  # the CLI's one line says where the finished work is
            n = self.points_on_disk
            exc.kept = f"the {n} finished load point{'s are' if n > 1 else ' is'} kept in {self.path}"

    def finish(self) -> Path:
        self._write("partial" if any(p.errors for p in self.record.load) else "ok")
        return self.path

    def _write(self, status: str) -> None:
        from harness.output.store import write_record

        self.record.status = status
        self.record.wall_s = sum(p.duration_s for p in self.record.load)
        self.path = write_record(self.record, self.out_dir)
        self.points_on_disk = len(self.record.load)


def _new_record(req: TrafficRequest, client, model, settings: dict, engine_version: str | None, served_by: str | None):
    from harness.core.record_factory import new_record

    return new_record(backend="openai", settings=settings, model=model, engine_version=engine_version,
                      command=[client.scrub(c) for c in _safe_command(req.command)],
                      device="cpu" if served_by else None, load=[], status="incomplete")


def _safe_command(command: list[str]) -> list[str]:
    from harness.backends.openai_http import safe_url

    return [safe_url(c) if c.startswith(("http://", "https://")) else c for c in command]


def _profile_order(profiles: list[Profile], req: TrafficRequest):
    yield from profiles
    if req.sweep:
        yield Profile("concurrency", 1, sweep=True)
        yield Profile("rate", float("inf"), sweep=True)

        def between(points):
            low, high = points[-2].request_throughput_per_s, points[-1].request_throughput_per_s
            if not high > low:
                return []  # the server does not go faster with more load: nothing to sweep
            return [Profile("rate", float(r), sweep=True) for r in np.linspace(low, high, req.sweep + 2)[1:-1]]

        yield between


def _warm_up(client, req: TrafficRequest, bodies: list[dict], log: Log) -> None:
    """Uncounted requests, one at a time; a server that fails them all stops the run here."""
    path = "chat/completions" if req.api == "chat" else "completions"
    if req.warmup:
        log(f"warm-up: {req.warmup} request{'s' if req.warmup > 1 else ''}")
    last = None
    answered = False
    for body in bodies:
        r = client.stream(path, body, req.api)
        answered |= r.ok
        last = last if r.ok else r
    if bodies and not answered:
        raise TrafficError(f"the server at {client.shown_url} failed the warm-up request: {last.error_kind}: {last.error}"
                           f"{f' (after {last.retries} retries)' if last.retries else ''}")


def _measure(client, req, bodies, profile: Profile, prompts, count_tokens, rng, log):
    bound = f"{req.requests} requests" if req.requests else f"{req.duration_s:g} s"
    log(f"load point {profile.label}: {bound}")
    results, t0, end = asyncio.run(_run_point(client, req.api, bodies, profile, req, rng))
    point = summarize(results, t0, end, profile, req, prompts, count_tokens)
    if point.completed == 0 and point.errors == 0 and point.stopped_at_deadline:
        raise TrafficError(f"no request of load point {profile.label} finished within --duration {req.duration_s:g} s "
                           f"({point.stopped_at_deadline} stopped at its end); give a longer --duration")
    if point.completed == 0:
        first = next((s.error for s in point.samples if s.error), "no request was sent")
        raise TrafficError(f"every request of load point {profile.label} failed at {client.shown_url}: {first}")
    if point.errors:
        log(f"load point {profile.label}: {point.errors} of {point.requests} requests failed "
            f"({', '.join(f'{k}: {v}' for k, v in point.error_kinds.items())})")
    if point.stopped_at_deadline:
        log(f"load point {profile.label}: {point.stopped_at_deadline} request"
            f"{'s' if point.stopped_at_deadline > 1 else ''} still running at its {req.duration_s:g} s deadline, stopped")
    return point


def _remote_version(client) -> str | None:
    """vLLM answers /version; other servers may not, and that is fine."""
    try:
        data = client.sync.get(client.root_url + "/version", timeout=5.0)
        if data.status_code == 200 and isinstance(data.json(), dict) and data.json().get("version"):
            return f"vllm {data.json()['version']} server"
    except Exception:
        pass
    return None
