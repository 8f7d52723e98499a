"""A load test of an OpenAI-compatible server, the way serving engineers do one; it runs in
harness.execution.traffic_worker, and harness.commands.traffic writes its record.

The server is one the user names (--base-url) or one this module starts on loopback
and always stops (--serve llamacpp | vllm). Load profiles are fixed concurrencies
(that many requests in flight), request rates (Poisson arrivals, as vLLM's benchmark
draws them) and a sweep (synchronous, then all at once, then rates spaced between the
two throughputs). Each load point becomes a TrafficPoint in the run record, with the raw
per-request samples kept. The metric definitions are vLLM's (benchmarks/serve.py) and
are written out in results/README.md.

Everything a user can get wrong is checked before the first timed request: the URL,
the key variable, the model name, the profile values, the server's first answer (the
warm-up). The record goes out after every finished load point (``on_point``), so the
points measured so far outlive whatever happens to the rest of the run."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from harness.core.errors import ConfigError
from harness.core.record import RunRecord
from harness.measurement.serving import free_port, served, server_backend
from harness.measurement.traffic_options import Log, Profile, TrafficError, TrafficRequest, validate
from harness.measurement.traffic_prompts import LocalTokenizer, build_prompts
from harness.measurement.traffic_send import run_point, summarize


def _resolve_model(ref: str | None):
    if ref is None:
        return None
    from harness.core.models import resolve

    return resolve(ref)


def measure_traffic(req: TrafficRequest, on_point: Callable[[RunRecord], None],
                    log: Log = lambda s: None) -> RunRecord:
    """Every load point of ``req``; the record so far (status "incomplete") goes to
    ``on_point`` after each, and the finished one is returned."""
    from harness.backends.openai_client import (OpenAIClient, RetryPolicy, api_key_from_env, normalize_base_url,
                                                request_body, safe_url)
    from harness.backends.openai_http import remote_model_info

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
            record = _new_record(req, client, model, settings, engine_version, served_by)
            count_tokens = (lambda text: len(tok.tokenize(text))) if tok is not None else None
            rng = np.random.default_rng(req.seed + 1)
            for profile in _profile_order(profiles, req):
                chosen = profile(record.load) if callable(profile) else [profile]  # a sweep's middle rates
                for p in chosen:
                    record.load.append(_measure(client, req, bodies, p, prompts, count_tokens, rng, log))
                    record.wall_s = sum(point.duration_s for point in record.load)
                    on_point(record)
        finally:
            client.close()
    record.status = "partial" if any(p.errors for p in record.load) else "ok"
    return record


def _new_record(req: TrafficRequest, client, model, settings: dict, engine_version: str | None, served_by: str | None):
    from harness.core.record_factory import new_record

    return new_record(backend="openai", settings=settings, model=model, engine_version=engine_version,
                      command=[client.scrub(c) for c in _safe_command(req.command)],
                      device="cpu" if served_by else None, load=[], status="incomplete")


def _safe_command(command: list[str]) -> list[str]:
    from harness.backends.openai_client import safe_url

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
    results, t0, end = asyncio.run(run_point(client, req.api, bodies, profile, req, rng))
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
