"""A chat-only provider for the tests: a small proxy in front of llama-cpp-python's REAL server.

It behaves like a hosted closed model's API, so the harness is tested against what such
an API really offers and refuses:

* it serves only ``GET /v1/models`` and ``POST /v1/chat/completions``, behind a key, under
  another model name than the upstream's; every other path (``/v1/completions``,
  ``/tokenize``, ``/extras/tokenize``, ``/detokenize``, ...) is a 404;
* it refuses prompt echo and prompt log-probabilities (``echo``, ``prompt_logprobs``) with
  a 400, as OpenAI's chat API does; log-probabilities of generated tokens
  (``logprobs``/``top_logprobs``) pass, as OpenAI allows them, relayed in the stream as
  OpenAI sends them (``choices[0].logprobs.content`` beside the token's text). With
  ``logprobs="refuse"`` it answers them with a 400 as an API without them does, with
  ``logprobs="drop"`` it leaves them out of the answer as some APIs silently do;
* it answers 429 with ``Retry-After`` to the chat requests whose numbers are in
  ``rate_limit`` (1-based, counting every chat POST);
* it cuts the streams whose numbers are in ``cut``: half the events are relayed, then the
  connection is closed without the stream's end;
* it can hold every chat request after the first ``hold_after`` answers (they wait until
  ``release()``), so a test can kill a run at a known point;
* it counts: ``chat_posts`` (every chat request's body, in order, with its fate) and
  ``answered`` (the bodies it relayed to the end).

Answers come from the real engine; nothing here makes one up. llama-cpp-python's server
streams no usage, so a streamed request is asked of it whole (its text, finish reason and
token counts) and streamed from here in small pieces, with usage at the end as a hosted
API sends it.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

REFUSED_FIELDS = ("echo", "prompt_logprobs")


def messages_key(body: dict) -> str:
    """What identifies a request's question: its messages."""
    return json.dumps(body.get("messages"), sort_keys=True, ensure_ascii=False)


class ChatProxy:
    def __init__(self, upstream: str, key: str, served_name: str = "closed-model-1", upstream_model: str = "smollm2",
                 rate_limit: tuple[int, ...] = (), retry_after_s: float = 1.0, cut: tuple[int, ...] = (),
                 hold_after: int | None = None, max_stop: int = 4, logprobs: str = "pass"):
        self.upstream = upstream.rstrip("/")
        self.key = key
        self.served_name = served_name
        self.upstream_model = upstream_model
        self.rate_limit = set(rate_limit)
        self.retry_after_s = retry_after_s
        self.cut = set(cut)
        self.hold_after = hold_after
        self.max_stop = max_stop
        self.logprobs = logprobs
        self.chat_posts: list[dict] = []  # {"t", "body", "fate"}: answered / 429 / cut / refused / held
        self.answered: list[dict] = []
        self.other_paths: list[str] = []
        self.lock = threading.Lock()
        self._release = threading.Event()
        self.held = threading.Event()  # set once a request is being held
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, headers: dict | None = None) -> None:
                self._json(status, {"error": {"message": message, "type": "invalid_request_error"}}, headers)

            def _authorized(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {proxy.key}":
                    self._error(401, "Incorrect API key provided.")
                    return False
                return True

            def do_GET(self):
                if self.path.rstrip("/") != "/v1/models":
                    with proxy.lock:
                        proxy.other_paths.append(f"GET {self.path}")
                    self._error(404, f"Unknown path {self.path}")
                    return
                if self._authorized():
                    self._json(200, {"object": "list", "data": [{"id": proxy.served_name, "object": "model",
                                                                 "owned_by": "a closed lab"}]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    with proxy.lock:
                        proxy.other_paths.append(f"POST {self.path}")
                    self._error(404, f"Unknown path {self.path}")
                    return
                if not self._authorized():
                    return
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._error(400, "body is not JSON")
                    return
                entry = {"t": time.monotonic(), "body": body, "fate": None}
                with proxy.lock:
                    proxy.chat_posts.append(entry)
                    number = len(proxy.chat_posts)
                    hold = proxy.hold_after is not None and len(proxy.answered) >= proxy.hold_after
                refused = [f for f in REFUSED_FIELDS if body.get(f)]
                if refused or "prompt" in body:
                    entry["fate"] = "refused"
                    self._error(400, f"Unsupported parameter: '{(refused or ['prompt'])[0]}' is not supported with this model.")
                    return
                if proxy.logprobs == "refuse" and (body.get("logprobs") or body.get("top_logprobs")):
                    entry["fate"] = "refused"
                    self._error(400, "Unsupported parameter: 'logprobs' is not supported with this model.")
                    return
                if body.get("model") != proxy.served_name:
                    entry["fate"] = "refused"
                    self._error(404, f"The model '{body.get('model')}' does not exist")
                    return
                if len(body.get("stop") or []) > proxy.max_stop:
                    entry["fate"] = "refused"
                    self._error(400, f"'stop' takes at most {proxy.max_stop} sequences")
                    return
                if number in proxy.rate_limit:
                    entry["fate"] = "429"
                    self._error(429, "Rate limit reached; try again later.",
                                {"Retry-After": f"{proxy.retry_after_s:g}"})
                    return
                if hold:
                    entry["fate"] = "held"
                    proxy.held.set()
                    proxy._release.wait(timeout=120)
                    self.close_connection = True
                    return
                upstream_body = {**body, "model": proxy.upstream_model}
                if body.get("stream"):
                    self._relay_stream(entry, upstream_body, cut=number in proxy.cut)
                else:
                    r = httpx.post(f"{proxy.upstream}/chat/completions", json=upstream_body, timeout=600)
                    data = r.json()
                    if isinstance(data, dict) and "model" in data:
                        data["model"] = proxy.served_name
                    entry["fate"] = "answered" if r.status_code == 200 else f"upstream {r.status_code}"
                    if r.status_code == 200:
                        with proxy.lock:
                            proxy.answered.append(body)
                    self._json(r.status_code, data)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _relay_stream(self, entry: dict, upstream_body: dict, cut: bool) -> None:
                # llama-cpp-python's server streams no usage, which a hosted API does: the answer
                # is asked for whole (the engine's own text and token counts) and streamed from here
                include_usage = bool((upstream_body.pop("stream_options", None) or {}).get("include_usage"))
                r = httpx.post(f"{proxy.upstream}/chat/completions", json={**upstream_body, "stream": False}, timeout=600)
                if r.status_code != 200:
                    entry["fate"] = f"upstream {r.status_code}"
                    self._error(r.status_code, r.text[:300])
                    return
                data = r.json()
                choice = data["choices"][0]
                text = choice["message"].get("content") or ""
                base = {"id": data.get("id"), "object": "chat.completion.chunk", "created": data.get("created"),
                        "model": proxy.served_name}
                pieces = [text[i:i + 4] for i in range(0, len(text), 4)]
                # the generated tokens' log-probabilities ride with the first piece of text
                logprobs = choice.get("logprobs") if proxy.logprobs == "pass" else None
                events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
                events += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None,
                                                 **({"logprobs": logprobs} if logprobs and i == 0 else {})}]}
                           for i, p in enumerate(pieces)]
                events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}]})
                if include_usage:
                    events.append({**base, "choices": [], "usage": data.get("usage")})
                lines = [f"data: {json.dumps(e)}" for e in events] + ["data: [DONE]"]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if cut:
                    for line in lines[: max(1, len(lines) // 2)]:
                        self._chunk(line.encode() + b"\n\n")
                    entry["fate"] = "cut"
                    self.close_connection = True  # no terminating chunk: the stream just stops
                    return
                for line in lines:
                    self._chunk(line.encode() + b"\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                entry["fate"] = "answered"
                with proxy.lock:
                    proxy.answered.append(entry["body"])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def release(self) -> None:
        self._release.set()

    def __enter__(self) -> "ChatProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def fates(self) -> list[str]:
        with self.lock:
            return [e["fate"] for e in self.chat_posts]


class PacedChatServer:
    """A chat API whose latency dominates: every answer takes ``delay_s`` (a sleep, as a
    busy remote model would), then streams ``answer`` with usage. Requests are served in
    parallel, so N requests in flight finish in about one delay, not N."""

    def __init__(self, delay_s: float = 0.5, answer: str = " B", served_name: str = "paced-model",
                 reasoning: tuple[str, ...] = (), reasoning_gap_s: float = 0.0):
        self.delay_s = delay_s
        self.reasoning = reasoning  # reasoning deltas streamed before the answer, as a reasoning model does
        self.reasoning_gap_s = reasoning_gap_s
        self.answer = answer
        self.served_name = served_name
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                data = json.dumps({"object": "list", "data": [{"id": server.served_name}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server.lock:
                    server.in_flight += 1
                    server.most_in_flight = max(server.most_in_flight, server.in_flight)
                time.sleep(server.delay_s)
                n_think = len(server.reasoning)
                thoughts = [{"choices": [{"index": 0, "delta": {"reasoning_content": t}, "finish_reason": None}]}
                            for t in server.reasoning]
                events = [{"choices": [{"index": 0, "delta": {"content": server.answer}, "finish_reason": None}]},
                          {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                          {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 1 + n_think,
                                                    "total_tokens": 51 + n_think,
                                                    "completion_tokens_details": {"reasoning_tokens": n_think}}}]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for e in thoughts:
                    self._chunk(f"data: {json.dumps(e)}\n\n".encode())
                    time.sleep(server.reasoning_gap_s)
                self._chunk(("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n").encode())
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                with server.lock:
                    server.in_flight -= 1

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "PacedChatServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
