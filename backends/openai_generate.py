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
import json
from dataclasses import dataclass, field
from typing import Any

from harness.backend import GenerationRequest, GenerationResult, ResultHook, prompt_form
from harness.errors import BackendError
from harness.meters import now_ns

# OpenAI's limit on stop sequences in one request; further ones are applied to the text here
MAX_SERVER_STOPS = 4


class _Cut(Exception):
    """The stream ended before the server said it was done."""


@dataclass
class _Answer:
    api: str
    start_ns: int
    text: str = ""
    reasoning_chunks: int = 0
    first_ns: int | None = None  # first token of either kind
    last_ns: int | None = None
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)
    done: bool = False

    def feed(self, line: str, at_ns: int) -> None:
        if not line.startswith("data:"):
            return
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            raise BackendError(f"the server sent a chunk that is not JSON: {payload[:80]!r}") from None
        if not isinstance(data, dict):
            return
        if data.get("error"):
            err = data["error"]
            raise BackendError(f"the server reported an error mid-stream: {str(err.get('message') if isinstance(err, dict) else err)[:300]}")
        for choice in data.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if self.api == "chat":
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                thought = delta.get("reasoning_content") or delta.get("reasoning")
            else:
                piece, thought = choice.get("text"), None
            if thought:
                self.reasoning_chunks += 1
            if piece or thought:
                self.first_ns = self.first_ns or at_ns
                self.last_ns = at_ns
            if piece:
                self.text += piece
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]

    def result(self, retries: int) -> GenerationResult:
        u = self.usage

        def detail(group: str, key: str) -> int | None:
            d = u.get(group)
            v = d.get(key) if isinstance(d, dict) else None
            return int(v) if isinstance(v, (int, float)) else None

        def count(key: str) -> int | None:
            v = u.get(key)
            return int(v) if isinstance(v, (int, float)) else None

        return GenerationResult(
            text=self.text, finish_reason=self.finish_reason, prompt_tokens=count("prompt_tokens"),
            completion_tokens=count("completion_tokens"),
            reasoning_tokens=detail("completion_tokens_details", "reasoning_tokens"),
            prompt_tokens_cached=detail("prompt_tokens_details", "cached_tokens"), retries=retries,
            client_ttft_s=(self.first_ns - self.start_ns) / 1e9 if self.first_ns else None,
            client_e2e_s=((self.last_ns or self.start_ns) - self.start_ns) / 1e9,
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
    if req.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = req.max_tokens
    return body


async def _one(client, http, path: str, api: str, body: dict, stops: tuple[str, ...]) -> GenerationResult:
    from backends.openai_http import RETRY_STATUSES, _error_text, _transport_error, retry_after_s

    httpx = client._httpx
    attempt = 0
    while True:
        retry_after = None
        answer = _Answer(api=api, start_ns=now_ns())
        try:
            async with http.stream("POST", client._url(path), json=body) as resp:
                if resp.status_code >= 400:
                    detail = _error_text(await resp.aread())
                    problem = f"HTTP {resp.status_code}: {detail}"
                    if resp.status_code not in RETRY_STATUSES:
                        raise BackendError(client.scrub(f"{client.shown_url} refused a generation request ({problem})"))
                    retry_after = retry_after_s(resp.headers.get("retry-after"))
                else:
                    async for line in resp.aiter_lines():
                        answer.feed(line, now_ns())
                    if not answer.done and answer.finish_reason is None:
                        raise _Cut()
                    result = answer.result(attempt)
                    result.text = cut_at_stops(result.text, stops)
                    return result
        except httpx.TransportError as exc:
            problem = _transport_error(exc)
        except _Cut:
            problem = "the stream ended before the answer did"
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
