"""The OpenAI protocol's wire client, shared by the openai backends and by harness load's traffic:
requests, retries, streaming and their timing.

Requests are streamed (server-sent events) and every chunk's arrival is stamped with
harness.measurement.meters.now_ns, so time to first token, the gaps between chunks and end-to-end
latency come from the same clock as every other figure. The definitions are vLLM's
and are written out in results/README.md.

The API key comes only from an environment variable the user names; it lives in one
private attribute, is sent only in the Authorization header, and every message that
leaves this module passes through scrub(), which removes it (and anything else that
looks like a key) before it can reach a result, a log or an error line.

429 and 5xx answers and failed connections are retried with exponential backoff; a
Retry-After header, when the server sends one, sets the wait. A request still failing
after the last retry is a RequestResult with ok=False (harness load counts it as an
error) or a BackendError (everything else).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import email.utils
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal
from urllib.parse import urlsplit, urlunsplit

from harness.core.environment import redact
from harness.core.errors import BackendError, BackendNotInstalled, ConfigError
from harness.measurement.meters import now_ns


Api = Literal["chat", "completions"]
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))
ERROR_TEXT_CHARS = 300  # of a server's error body, in a message
MAX_SERVER_STOPS = 4  # OpenAI's limit on stop sequences in one request
MAX_STREAM_CHARS = 64 * 2**20  # of one streamed answer; far beyond any max_tokens a run asks for
MAX_LINE_CHARS = 4 * 2**20  # of one server-sent-event line
ERROR_BODY_BYTES = 64 * 2**10  # read of an error answer's body: enough for its message
TRANSPORT_KINDS = ("connect", "timeout", "transport")  # retried while no text has arrived


# ------------------------------------------------------------------ small pieces


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove the given secrets literally, then anything that looks like a key."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    return redact(text)


def api_key_from_env(name: str | None) -> str | None:
    """The key in the variable the user named; a named but unset variable is an error.

    The value given is never repeated in a message: a user who passes the key itself
    instead of a variable's name must not see it printed (or logged) back.
    """
    if not name:
        return None
    if not name.replace("_", "").isalnum() or name[0].isdigit():
        raise ConfigError("--api-key-env takes the NAME of an environment variable that holds the key (letters, "
                          "digits and '_'), not the key itself: export KEY_VARIABLE=... and give --api-key-env "
                          "KEY_VARIABLE (the value given is not shown, in case it is a key)")
    value = os.environ.get(name)
    if value is None or not value.strip():
        raise ConfigError("--api-key-env: no environment variable of the name given is set (the name is not shown, "
                          "in case it is the key itself): export it, or drop --api-key-env")
    try:  # from here on every line the harness writes has this value removed
        from harness.core.environment import register_secret

        register_secret(value.strip())
    except ImportError:
        pass
    return value.strip()


def normalize_base_url(url: str) -> str:
    """'http://host:8000' or 'http://host:8000/v1/' -> 'http://host:8000/v1'."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--base-url: '{safe_url(url)}' is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def safe_url(url: str) -> str:
    """The URL without user:password@ or a query string, for records and messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return redact(urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    except ValueError:
        return "<unparseable URL>"


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_s: float = 0.5  # first wait; doubles each retry
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0  # a server asking for longer than this is given up on

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), or None to give up."""
        if attempt > self.max_retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after_s else None
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


def error_text(body: bytes | str) -> str:
    """The message in an OpenAI-style error body, or the start of the body."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            text = str(err.get("message") or err.get("detail") or err)
        elif isinstance(err, str):
            text = err
    except (json.JSONDecodeError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:ERROR_TEXT_CHARS] + ("..." if len(text) > ERROR_TEXT_CHARS else "")


def _transport_kind(httpx, exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    return "timeout" if isinstance(exc, httpx.TimeoutException) else "transport"


def _bounded_body(chunks: Iterator[bytes]) -> bytes:
    """The start of an error answer's body; a server sending without end is not read to its end."""
    got = []
    for raw in chunks:
        got.append(raw)
        if sum(map(len, got)) > ERROR_BODY_BYTES:
            break
    return b"".join(got)


class LineSplitter:
    """Bytes of a server-sent-event stream -> its lines (split on \\n, \\r\\n or \\r), each bounded."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""

    def feed(self, raw: bytes) -> list[str]:
        text = self._pending + self._decoder.decode(raw)
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_LINE_CHARS:
            raise StreamError("bad chunk", f"the server sent a line longer than {MAX_LINE_CHARS // 2**20} MiB")
        return lines

    def close(self) -> list[str]:
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return [rest] if rest else []


def transport_error(exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ one streamed request


@dataclass
class RequestResult:
    """One streamed request as the client saw it; times are now_ns() readings."""

    ok: bool = False
    status: int | None = None
    error: str | None = None
    error_kind: str | None = None  # "http 500", "connect", "timeout", "stream", ...
    start_ns: int = 0  # the first attempt's send: retries count as latency, as a user sees it
    # arrival of every chunk that carried output: answer text, or a reasoning model's
    # reasoning (output it is billed and waited for, though not part of the answer)
    chunk_ns: list[int] = field(default_factory=list)
    end_ns: int = 0  # the stream's end
    text: str = ""  # the answer: content only
    reasoning_chunks: int = 0
    finish_reason: str | None = None
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    usage_reasoning_tokens: int | None = None  # usage.completion_tokens_details.reasoning_tokens
    usage_cached_prompt_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
    retries: int = 0
    # the first answer token's top_logprobs as (token, logprob), where the request asked for them
    first_top_logprobs: list[tuple[str, float]] | None = None

    def restart(self) -> None:
        """Forget a failed attempt's answer before the next one; start_ns and retries stay."""
        self.status = None
        self.chunk_ns = []
        self.text = ""
        self.finish_reason = None
        self.reasoning_chunks = 0
        self.usage_prompt_tokens = self.usage_completion_tokens = None
        self.usage_reasoning_tokens = self.usage_cached_prompt_tokens = None
        self.first_top_logprobs = None

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_ns)

    @property
    def ttft_ns(self) -> int | None:
        return self.chunk_ns[0] - self.start_ns if self.chunk_ns else None

    @property
    def e2el_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def itl_ns(self) -> list[int]:
        return [b - a for a, b in zip(self.chunk_ns, self.chunk_ns[1:])]


class StreamParser:
    """Feeds server-sent-event lines into a RequestResult, stamping each text chunk.

    Every field of every chunk is type-checked before it is used: a server's stream is
    outside input, and a chunk of the wrong shape (``{"choices": [null]}``, a number
    where text belongs) ends that request as a "bad chunk" error instead of a crash.
    """

    def __init__(self, api: Api, result: RequestResult):
        self.api = api
        self.result = result
        self.done = False
        self.chars_seen = 0

    def feed(self, line: str, at_ns: int) -> None:
        self.chars_seen += len(line) + 1
        if self.chars_seen > MAX_STREAM_CHARS:
            raise StreamError("bad chunk", f"the stream passed {MAX_STREAM_CHARS // 2**20} MiB without ending")
        if not line.startswith("data:"):
            return  # blank separators, ": ping" comments, "event:" lines
        if self.done:
            return  # nothing after [DONE] belongs to the answer
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return
        try:
            data = json.loads(payload)
        except (json.JSONDecodeError, RecursionError):
            raise StreamError("bad chunk", f"the server sent a chunk that is not JSON: {payload[:80]!r}") from None
        if not isinstance(data, dict):
            raise StreamError("bad chunk", f"the server sent a chunk that is not a JSON object: {payload[:80]!r}")
        if data.get("error"):
            raise StreamError("stream error", f"the server reported an error mid-stream: {error_text(json.dumps(data))}")
        choices = _typed(data, "choices", (list, type(None)), payload) or []
        if choices:
            choice = choices[0]
            if not isinstance(choice, dict):
                raise StreamError("bad chunk", f"a chunk's choices[0] is {_kind(choice)}, not an object: {payload[:80]!r}")
            thought = None
            if self.api == "completions":
                piece = _typed(choice, "text", (str, type(None)), payload)
            else:
                delta = _typed(choice, "delta", (dict, type(None)), payload) or {}
                piece = _typed(delta, "content", (str, type(None)), payload)
                # reasoning deltas: DeepSeek's and vLLM's reasoning_content, OpenRouter's reasoning
                thought = (_typed(delta, "reasoning_content", (str, type(None)), payload)
                           or _typed(delta, "reasoning", (str, type(None)), payload))
            finish = _typed(choice, "finish_reason", (str, type(None)), payload)
            if piece or thought:
                if self.result.finish_reason is not None:
                    raise StreamError("bad chunk", "the server sent text after the stream's finish_reason")
                self.result.chunk_ns.append(at_ns)
            if piece:
                self.result.text += piece
            if thought:
                self.result.reasoning_chunks += 1
            if finish:
                self.result.finish_reason = finish
            if self.result.first_top_logprobs is None and self.api == "chat":
                self.result.first_top_logprobs = _first_top_logprobs(choice, payload)
        usage = _typed(data, "usage", (dict, type(None)), payload)
        if usage is not None:  # with continuous usage stats every chunk has one: the last wins
            self.result.usage_prompt_tokens = _count(usage, "prompt_tokens", payload)
            self.result.usage_completion_tokens = _count(usage, "completion_tokens", payload)
            completion = _typed(usage, "completion_tokens_details", (dict, type(None)), payload) or {}
            prompt = _typed(usage, "prompt_tokens_details", (dict, type(None)), payload) or {}
            self.result.usage_reasoning_tokens = _count(completion, "reasoning_tokens", payload)
            self.result.usage_cached_prompt_tokens = _count(prompt, "cached_tokens", payload)

    def check_end(self) -> None:
        """A stream is whole only with a finish_reason and [DONE]: anything less was cut short."""
        r = self.result
        if r.finish_reason is None:
            got = f"after {r.n_chunks} text chunk{'s' if r.n_chunks != 1 else ''}" if r.n_chunks else "before any text"
            raise StreamError("cut short", f"the stream ended {got} without a finish_reason"
                              f"{'' if self.done else ' or [DONE]'}: the answer may be incomplete")
        if not self.done:
            raise StreamError("cut short", f"the stream ended after finish_reason '{r.finish_reason}' without [DONE]")


def _first_top_logprobs(choice: dict, payload: str) -> list[tuple[str, float]] | None:
    """A chat chunk's first answer token's alternatives (``logprobs.content[0].top_logprobs``,
    and the token itself where they leave it out), each entry type-checked; None where the
    chunk has none."""
    logprobs = _typed(choice, "logprobs", (dict, type(None)), payload)
    content = _typed(logprobs, "content", (list, type(None)), payload) if logprobs else None
    if not content:
        return None
    first = content[0]
    if not isinstance(first, dict):
        raise StreamError("bad chunk", f"a chunk's logprobs.content[0] is {_kind(first)}, not an object: {payload[:80]!r}")
    out: list[tuple[str, float]] = []
    # the chosen token itself is listed among its alternatives by OpenAI; added where it is not
    for entry in [*(_typed(first, "top_logprobs", (list, type(None)), payload) or []), first]:
        if not isinstance(entry, dict):
            raise StreamError("bad chunk", f"a top_logprobs entry is {_kind(entry)}, not an object: {payload[:80]!r}")
        token = _typed(entry, "token", (str,), payload)
        lp = entry.get("logprob")
        if isinstance(lp, bool) or not isinstance(lp, (int, float)) or lp != lp or lp > 1e-6:
            raise StreamError("bad chunk", f"a logprob is {repr(lp)[:40]}, not a log-probability: {payload[:80]!r}")
        if entry is first and any(t == token for t, _ in out):
            continue
        out.append((token, float(lp)))
    return out


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _typed(obj: dict, key: str, types: tuple[type, ...], payload: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, types):
        raise StreamError("bad chunk", f"a chunk's '{key}' is {_kind(value)}, not "
                          f"{' or '.join(_kind(None) if t is type(None) else t.__name__ for t in types)}: {payload[:80]!r}")
    return value


def _count(usage: dict, key: str, payload: str) -> int | None:
    value = usage.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StreamError("bad chunk", f"a chunk's usage.{key} is {repr(value)[:40]}, not a count of tokens: "
                          f"{payload[:80]!r}")
    return value


class StreamError(Exception):
    """A stream that cannot be trusted; ``kind`` is what the request's error is recorded as."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class StreamTimer:
    """The clock of one streamed request, fed by every client that streams (sync, async, the
    generator of many requests), so all of them time a request the same way.

    Made as the first attempt is sent, the request already built (building it is the
    client's work, not the server's latency): that is ``start_ns``, which retry() keeps,
    since a user waits through retries. The body is fed chunk by chunk as it arrives. A chunk
    of bytes is stamped once, on arrival, and every line it completes carries that stamp:
    what the caller does between chunks (show the text, check a timeout) never moves a time
    to first token or a gap between chunks. Reasoning deltas are output and are timed like
    text (StreamParser). ``end()`` stamps the end of the stream.
    """

    def __init__(self, api: Api):
        self.api = api
        self.result = RequestResult(start_ns=now_ns())
        self._begin()

    def _begin(self) -> None:
        self._lines = LineSplitter()
        self.parser = StreamParser(self.api, self.result)

    def retry(self) -> None:
        """The next attempt: the last one's answer is forgotten; the start stays, the retry is counted."""
        self.result.retries += 1
        self.result.restart()
        self._begin()

    def chunk(self, raw: bytes) -> str:
        """One chunk of the body, as it arrives; the answer text it added."""
        at_ns = now_ns()
        before = len(self.result.text)
        for line in self._lines.feed(raw):
            self.parser.feed(line, at_ns)
        return self.result.text[before:]

    def end(self) -> None:
        """The body has ended: its last line, if no newline closed it, and the end's stamp."""
        at_ns = now_ns()
        for line in self._lines.close():
            self.parser.feed(line, at_ns)
        self.result.end_ns = at_ns


def request_body(api: Api, model: str, prompt: str | list[dict], max_tokens: int, *, temperature: float = 0.0,
                 ignore_eos: bool = False, stop: list[str] | None = None, stream: bool = True,
                 extra: dict | None = None) -> dict:
    """A completions or chat completions body; ``prompt`` may already be chat messages."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": temperature, "stream": stream}
    if api == "chat":
        body["messages"] = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    else:
        if isinstance(prompt, list):
            raise BackendError("the completions API takes a text prompt, not chat messages; use --api chat")
        body["prompt"] = prompt
    if stream:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        # vLLM reads ignore_eos; llama-cpp-python's server ignores it but honours min_tokens
        body["ignore_eos"] = True
        body["min_tokens"] = max_tokens
    if stop:
        body["stop"] = stop
    if extra:
        body.update(extra)
    return body


# ------------------------------------------------------------------ the client


class OpenAIClient:
    """Sync and async access to one server, sharing the retry policy and the scrubbing."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300.0,
                 retry: RetryPolicy = RetryPolicy(), max_connections: int = 100):
        try:
            import httpx
        except ImportError:
            raise BackendNotInstalled("httpx is not installed; run: pip install 'openbench-harness[openai]' (or make setup)") from None
        self._httpx = httpx
        self.base_url = normalize_base_url(base_url)
        self.root_url = self.base_url[: -len("/v1")]
        self.shown_url = safe_url(self.base_url)
        self._key = api_key
        self.retry = retry
        self.timeout_s = timeout_s
        self._timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._sync: Any = None
        self._async: Any = None
        self._sleep: Callable[[float], None] = time.sleep

    # -- secrets
    def scrub(self, text: str) -> str:
        return scrub(text, (self._key,) if self._key else ())

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self._key:
            h["Authorization"] = f"Bearer {self._key}"
        return h

    def _url(self, path: str) -> str:
        """'completions' is under /v1; '/tokenize' (vLLM) and '/extras/...' are at the root."""
        return self.root_url + path if path.startswith("/") else f"{self.base_url}/{path}"

    @property
    def sync(self):
        if self._sync is None:
            self._sync = self._httpx.Client(timeout=self._timeout, limits=self._limits, headers=self._headers())
        return self._sync

    def async_client(self, max_connections: int | None = None):
        """A new AsyncClient (one per event loop) with room for that many requests in flight; the caller closes it."""
        limits = self._limits if max_connections is None else self._httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections)
        return self._httpx.AsyncClient(timeout=self._timeout, limits=limits, headers=self._headers())

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    # -- plain JSON requests (model list, tokenizer), retried
    def get_json(self, path: str) -> Any:
        return self._call("GET", path, None)

    def post_json(self, path: str, body: dict) -> Any:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict | None) -> Any:
        url = self._url(path)
        attempt = 0
        while True:
            try:
                resp = self.sync.request(method, url, json=body)
            except self._httpx.TransportError as exc:
                wait = self.retry.delay(attempt + 1, None)
                if wait is None:
                    raise BackendError(self.scrub(f"cannot reach {self.shown_url}: {transport_error(exc)} "
                                                  f"(after {attempt + 1} attempt{'s' if attempt else ''})")) from None
            else:
                if resp.status_code < 400:
                    try:
                        return resp.json()
                    except ValueError:
                        raise BackendError(self.scrub(f"{safe_url(url)} answered with something that is not JSON")) from None
                wait = self.retry.delay(attempt + 1, retry_after_s(resp.headers.get("retry-after"))) \
                    if resp.status_code in RETRY_STATUSES else None
                if wait is None:
                    raise HttpStatusError(resp.status_code, self.scrub(
                        f"{self.shown_url} answered HTTP {resp.status_code} to {method} {path}"
                        f"{f' after {attempt + 1} attempts' if attempt else ''}: {error_text(resp.content)}"))
            attempt += 1
            self._sleep(wait)

    # -- streamed generation
    #
    # A request is retried only while nothing of its answer has arrived (a refused
    # connection, a 429/5xx, a timeout before the first text): a stream cut after text
    # came is that request's error, never retried into the same result, so its text,
    # time to first token and inter-token latencies are always one attempt's.

    def stream(self, path: str, body: dict, api: Api, on_text: Callable[[str], None] | None = None) -> RequestResult:
        """One streamed request, retried; never raises for server or network trouble.

        The request's timeout bounds the whole attempt (send to the stream's end), not
        only each read, so a server that trickles bytes cannot hold it forever.
        """
        request = self.sync.build_request("POST", self._url(path), json=body)
        timer = StreamTimer(api)
        result = timer.result
        while True:
            retry_after = None
            limit_ns = now_ns() + int(self.timeout_s * 1e9)
            try:
                with contextlib.closing(self.sync.send(request, stream=True)) as resp:
                    result.status = resp.status_code
                    if resp.status_code >= 400:
                        retry_after = retry_after_s(resp.headers.get("retry-after"))
                        self._fail(result, f"http {resp.status_code}", error_text(_bounded_body(resp.iter_bytes())))
                    else:
                        for raw in resp.iter_bytes():
                            text = timer.chunk(raw)
                            if on_text and text:
                                on_text(text)
                            if now_ns() > limit_ns:
                                raise StreamError("timeout", f"no complete answer within the request's timeout "
                                                  f"({self.timeout_s:g} s)")
                        timer.end()
                        return self._finish(timer)
            except self._httpx.TransportError as exc:
                self._fail(result, _transport_kind(self._httpx, exc), transport_error(exc))
            except StreamError as exc:
                self._fail(result, exc.kind, str(exc))
            wait = self._retry_wait(result, retry_after)
            if wait is None:
                return result
            timer.retry()
            request = self.sync.build_request("POST", self._url(path), json=body)
            self._sleep(wait)

    async def aprime(self, client) -> None:
        """One untimed GET of the model list on a caller's AsyncClient; failures are ignored."""
        try:
            await client.get(self._url("models"), timeout=10.0)
        except self._httpx.HTTPError:
            pass

    async def astream(self, client, path: str, body: dict, api: Api, deadline_ns: int | None = None) -> RequestResult:
        """The async twin of stream(), on a caller's AsyncClient, timed by the same StreamTimer.

        Each attempt ends at the request's own timeout; the whole request, retries and
        their waits included, ends at ``deadline_ns`` (a load point's end) when one is
        given: what is still running then is recorded as error kind "deadline".
        """
        request = client.build_request("POST", self._url(path), json=body)
        timer = StreamTimer(api)
        result = timer.result
        while True:
            retry_after = None
            own_limit = now_ns() + int(self.timeout_s * 1e9)
            limit = own_limit if deadline_ns is None else min(own_limit, deadline_ns)
            try:
                async with asyncio.timeout(max(limit - now_ns(), 0) / 1e9):
                    async with contextlib.aclosing(await client.send(request, stream=True)) as resp:
                        result.status = resp.status_code
                        if resp.status_code >= 400:
                            retry_after = retry_after_s(resp.headers.get("retry-after"))
                            chunks = []
                            async for raw in resp.aiter_bytes():
                                chunks.append(raw)
                                if sum(map(len, chunks)) > ERROR_BODY_BYTES:
                                    break
                            self._fail(result, f"http {resp.status_code}", error_text(b"".join(chunks)))
                        else:
                            async for raw in resp.aiter_bytes():
                                timer.chunk(raw)
                            timer.end()
                            return self._finish(timer)
            except TimeoutError:
                if deadline_ns is not None and limit == deadline_ns:
                    self._fail(result, "deadline", "still running at the load point's deadline; stopped there")
                    return result
                self._fail(result, "timeout", f"no complete answer within the request's timeout ({self.timeout_s:g} s)")
            except self._httpx.TransportError as exc:
                self._fail(result, _transport_kind(self._httpx, exc), transport_error(exc))
            except StreamError as exc:
                self._fail(result, exc.kind, str(exc))
            wait = self._retry_wait(result, retry_after)
            if wait is None:
                return result
            if deadline_ns is not None and now_ns() + int(wait * 1e9) >= deadline_ns:
                self._fail(result, "deadline", f"waiting to retry ({result.error_kind}: {result.error}) "
                           "when the load point's deadline came; stopped there")
                return result
            timer.retry()
            request = client.build_request("POST", self._url(path), json=body)
            await asyncio.sleep(wait)

    def _fail(self, result: RequestResult, kind: str, detail: str) -> None:
        result.ok = False
        result.error_kind = kind
        result.error = self.scrub(detail)
        result.end_ns = now_ns()

    def _retry_wait(self, result: RequestResult, retry_after: float | None) -> float | None:
        """Seconds before the next attempt, or None when this result is final."""
        if result.chunk_ns:
            # text has arrived: a retry would mix two attempts' text and timings
            if result.error_kind == "transport":
                result.error_kind = "cut short"
                result.error = self.scrub(f"the connection broke after {result.n_chunks} text chunk"
                                          f"{'s' if result.n_chunks != 1 else ''} ({result.error}); not retried")
            return None
        retryable = result.error_kind in TRANSPORT_KINDS or (
            result.status is not None and result.status in RETRY_STATUSES and result.error_kind.startswith("http"))
        return self.retry.delay(result.retries + 1, retry_after) if retryable else None

    def _finish(self, timer: StreamTimer) -> RequestResult:
        result = timer.result
        try:
            timer.parser.check_end()
        except StreamError as exc:
            self._fail(result, exc.kind, str(exc))
            return result
        result.error_kind = result.error = None
        result.ok = True
        return result

    # -- what the server serves
    def served_models(self) -> list[dict] | None:
        """The /v1/models list, or None when the server offers no such endpoint."""
        try:
            data = self.get_json("models")
        except HttpStatusError as exc:
            if exc.status in (404, 405):
                return None
            if exc.status in (401, 403):
                raise BackendError(f"{self.shown_url} refused the request (HTTP {exc.status}): check the key in --api-key-env") from None
            raise
        models = data.get("data") if isinstance(data, dict) else None
        return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else None

    def resolve_model(self, name: str | None) -> tuple[str, dict]:
        """The served model name to use (checked against /v1/models) and its listing."""
        models = self.served_models()
        if models is None:
            if not name:
                raise ConfigError(f"{self.shown_url} lists no models; name the one to use with --model-name")
            return name, {}
        ids = [str(m.get("id")) for m in models]
        if name is None:
            if len(ids) == 1:
                return ids[0], models[0]
            raise ConfigError(f"{self.shown_url} serves {len(ids)} models ({', '.join(ids) or 'none'}); pick one with --model-name")
        if name not in ids:
            raise ConfigError(f"model '{name}' is not served at {self.shown_url}; it serves: {', '.join(ids) or 'nothing'}")
        return name, models[ids.index(name)]


class HttpStatusError(BackendError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

