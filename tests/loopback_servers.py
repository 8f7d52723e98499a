"""Real HTTP servers on 127.0.0.1 for the HTTP backend and load tests.

``llamacpp_server`` starts llama-cpp-python's own OpenAI-compatible server on the
bundled SmolLM2. ``ScriptedServer`` is a small stdlib server that speaks just enough of
the OpenAI API (model list, streamed completions) and answers each request from a
script: a status code, headers, or a normal stream. It exists to make a real server
return 429/5xx/401 on cue, which a real engine will not do on demand.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def llamacpp_server(model_path: str, alias: str = "smollm2", n_ctx: int = 512,
                    flash_attn: bool = False) -> Iterator[str]:
    """llama-cpp-python's server on loopback. ``flash_attn`` as the in-process backend's
    default (on) where a test compares the two engines' numbers: flash attention alone moved one
    MMLU prompt's letter probability on SmolLM2 by 0.03."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.backends.llamacpp_server", "--model", model_path, "--model_alias", alias,
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", "1", "--n_threads_batch", "1",
         "--interrupt_requests", "False", "--flash_attn", str(flash_attn)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "llama-cpp-python's server exited during start-up"
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "llama-cpp-python's server did not come up in 120 s"
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)  # a client closing its connection is no error


@dataclass
class Stream:
    """A scripted 200 answer streamed as server-sent events, for the tests of broken streams.

    ``events`` are sent one by one (a dict or list as ``data: JSON``, a str as a raw
    line), each after ``gap_s``; ``done`` adds ``data: [DONE]``. The body is chunked, so
    ``cut`` (the connection dropped before the body's end) reaches the client as the
    broken transfer it is, while an answer that simply stops early ends cleanly.
    """

    events: list = field(default_factory=list)
    done: bool = True
    cut: bool = False
    gap_s: float = 0.0


def text_events(n: int, finish: str | None = "length", usage: bool = True, api: str = "completions") -> list:
    """The events of a normal answer: n one-word text chunks, then the finish and the usage."""
    def choice(text: str, finish_reason=None) -> dict:
        body = {"text": text} if api == "completions" else {"delta": {"content": text} if text else {}}
        return {"choices": [{"index": 0, **body, "finish_reason": finish_reason}]}

    events = [choice(f" w{i}") for i in range(n)]
    if finish:
        events.append(choice("", finish))
    if usage:
        events.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}})
    return events


class ScriptedServer:
    """Answers POSTs from ``script``: each entry is a status (int), (status, headers, body),
    a Stream, or None (a normal answer). It listens on ``host``:``port`` (0: any free port).

    Once the script is used up every POST gets a normal two-chunk stream. GET /v1/models
    always lists ``model``. Every request's arrival time, path and Authorization header
    are kept in ``seen``.
    """

    def __init__(self, script: list | None = None, model: str = "scripted", require_key: str | None = None,
                 models_status: int = 200, error_body: str = "scripted failure", host: str = "127.0.0.1",
                 port: int = 0):
        self.script = list(script or [])
        self.model = model
        self.require_key = require_key
        self.models_status = models_status
        self.error_body = error_body
        self.seen: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _record(self, body: dict | None = None) -> bool:
                with server.lock:
                    server.seen.append({"t": time.monotonic(), "path": self.path, "method": self.command,
                                        "auth": self.headers.get("Authorization"), "body": body})
                if server.require_key and self.headers.get("Authorization") != f"Bearer {server.require_key}":
                    # a careless server that repeats the credential it refused
                    got = self.headers.get("Authorization")
                    self._send(401, json.dumps({"error": {"message": f"invalid api key: {got}"}}).encode())
                    return False
                return True

            def _stream(self, step: Stream) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                lines = [e if isinstance(e, str) else f"data: {json.dumps(e)}" for e in step.events]
                lines += ["data: [DONE]"] if step.done else []
                try:
                    for line in lines:
                        if step.gap_s:
                            time.sleep(step.gap_s)
                        data = f"{line}\n\n".encode()
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                    if step.cut:
                        self.close_connection = True  # no final chunk: the transfer is broken
                        return
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout or a deadline)

            def do_GET(self):
                if not self._record():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    if server.models_status != 200:
                        self._send(server.models_status, json.dumps({"error": {"message": server.error_body}}).encode())
                    else:
                        self._send(200, json.dumps({"object": "list", "data": [{"id": server.model}]}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self._record(body):
                    return
                with server.lock:
                    step = server.script.pop(0) if server.script else None  # None: a normal answer
                if isinstance(step, Stream):
                    self._stream(step)
                    return
                if step is not None:
                    status, headers, text = step if isinstance(step, tuple) else (step, {}, server.error_body)
                    self._send(status, json.dumps({"error": {"message": text}}).encode(), headers)
                    return
                n = int(body.get("max_tokens") or 2)
                events = text_events(n, api="chat" if self.path.rstrip("/").endswith("chat/completions") else "completions")
                payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self._send(200, payload.encode(), ctype="text/event-stream")

        self.httpd = _QuietServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def posts(self) -> list[dict]:
        return [s for s in self.seen if s["method"] == "POST"]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
