"""Many generation requests to an OpenAI-compatible API at once: the openai backend's TextGenerator.

Each request is one streamed chat (or completions) call. Up to ``concurrency`` are in
flight; each answer is handed to ``on_result`` as it arrives, so the caller can keep it
(lm-eval's request cache) before anything else can fail: a paid request whose answer
arrived is never sent again by a rerun.

Per request: 429 and 5xx answers, failed connections and streams cut before their end
are retried with the client's backoff, a ``Retry-After`` header setting the wait; a
request still failing after the last retry ends the batch (the requests in flight are
awaited and kept first). The answer is the content; a reasoning model's reasoning deltas
(``reasoning_content`` / ``reasoning``) are counted and timed as output but are not part
of the answer. Token counts come from the usage the API returns; nothing here needs a
tokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from harness.backends.openai_client import MAX_SERVER_STOPS
from harness.core.backend import GenerationRequest, GenerationResult, ResultHook, prompt_form
from harness.core.errors import BackendError


def _generation_result(r, retries: int) -> GenerationResult:
    return GenerationResult(
        text=r.text, finish_reason=r.finish_reason, prompt_tokens=r.usage_prompt_tokens,
        completion_tokens=r.usage_completion_tokens, reasoning_tokens=r.usage_reasoning_tokens,
        prompt_tokens_cached=r.usage_cached_prompt_tokens, retries=retries,
        client_ttft_s=r.ttft_ns / 1e9 if r.ttft_ns is not None else None,
        client_e2e_s=((r.chunk_ns[-1] if r.chunk_ns else r.start_ns) - r.start_ns) / 1e9,
        top_logprobs=r.first_top_logprobs,
    )


def cut_at_stops(text: str, stops: tuple[str, ...] | list[str]) -> str:
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[:min(cuts)] if cuts else text


def request_json(api: str, model: str, req: GenerationRequest, *, seed: int | None,
                 max_tokens_field: str = "max_tokens") -> dict[str, Any]:
    form = prompt_form(req.prompt)
    body: dict[str, Any] = {"model": model, max_tokens_field: req.max_tokens, "temperature": req.temperature,
                            "stream": True, "stream_options": {"include_usage": True}}
    if req.temperature > 0 and req.top_p < 1.0:
        body["top_p"] = req.top_p
    if api == "chat":
        if form == "tokens":
            raise BackendError("a chat API takes messages or text, not token ids")
        body["messages"] = req.prompt if form == "messages" else [{"role": "user", "content": req.prompt}]
    else:
        if form != "text":
            raise BackendError("the completions API takes a text prompt; chat messages need --api chat")
        body["prompt"] = req.prompt
    stops = [s for s in req.stop if s][:MAX_SERVER_STOPS]
    if stops:
        body["stop"] = stops
    if req.seed is not None or seed is not None:
        body["seed"] = req.seed if req.seed is not None else seed
    if req.top_logprobs:
        if api != "chat":
            raise BackendError("first-token log-probabilities are read from the chat API here (--api chat)")
        body["logprobs"] = True
        body["top_logprobs"] = req.top_logprobs
    if req.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = req.max_tokens
    return body


async def _one(client, http, path: str, api: str, body: dict, stops: tuple[str, ...]) -> GenerationResult:
    from harness.backends.openai_client import (RETRY_STATUSES, StreamError, StreamTimer, error_text, retry_after_s,
                                                transport_error)

    httpx = client._httpx
    attempt = 0
    while True:
        retry_after = None
        request = http.build_request("POST", client._url(path), json=body)
        # a fresh timer each attempt: a retried request keeps nothing of the attempt before
        timer = StreamTimer(api)
        try:
            async with contextlib.aclosing(await http.send(request, stream=True)) as resp:
                if resp.status_code >= 400:
                    detail = error_text(await resp.aread())
                    problem = f"HTTP {resp.status_code}: {detail}"
                    if resp.status_code not in RETRY_STATUSES:
                        raise BackendError(client.scrub(f"{client.shown_url} refused a generation request ({problem})"))
                    retry_after = retry_after_s(resp.headers.get("retry-after"))
                else:
                    async for raw in resp.aiter_bytes():
                        timer.chunk(raw)
                    timer.end()
                    timer.parser.check_end()
                    result = _generation_result(timer.result, attempt)
                    result.text = cut_at_stops(result.text, stops)
                    return result
        except httpx.TransportError as exc:
            problem = transport_error(exc)
        except StreamError as exc:
            if exc.kind != "cut short":  # a malformed answer is not sent again: it would cost as much
                raise BackendError(client.scrub(f"{client.shown_url} sent a malformed stream ({exc.kind}): {exc}")) from None
            problem = f"the stream was cut short ({exc})"
        wait = client.retry.delay(attempt + 1, retry_after)
        if wait is None:
            raise BackendError(client.scrub(f"generation failed at {client.shown_url} after {attempt + 1} "
                                            f"attempt{'s' if attempt else ''}: {problem}"))
        attempt += 1
        await asyncio.sleep(wait)


async def _all(client, path: str, api: str, bodies: list[dict], requests: list[GenerationRequest],
               concurrency: int, on_result: ResultHook | None) -> list[GenerationResult]:
    results: list[GenerationResult | None] = [None] * len(bodies)
    gate = asyncio.Semaphore(concurrency)
    failed: list[BaseException] = []

    async def run(i: int) -> None:
        async with gate:
            if failed:
                return  # a request failed for good: send no more
            try:
                results[i] = await _one(client, http, path, api, bodies[i], requests[i].stop)
            except Exception as exc:
                failed.append(exc)
                return
            if on_result:
                on_result(i, results[i])

    async with client.async_client(max_connections=concurrency) as http:
        await asyncio.gather(*(run(i) for i in range(len(bodies))))
    if failed:
        raise failed[0]
    return results  # type: ignore[return-value]


def generate_all(client, served_name: str, api: str, requests: list[GenerationRequest], *, concurrency: int = 1,
                 on_result: ResultHook | None = None, seed: int | None = None,
                 max_tokens_field: str = "max_tokens") -> list[GenerationResult]:
    if concurrency < 1:
        raise BackendError(f"concurrency must be at least 1 (got {concurrency})")
    if not requests:
        return []
    path = "chat/completions" if api == "chat" else "completions"
    bodies = [request_json(api, served_name, r, seed=seed, max_tokens_field=max_tokens_field) for r in requests]
    return asyncio.run(_all(client, path, api, bodies, requests, concurrency, on_result))
