"""Render a model's Jinja chat template in a child process under a memory and a time limit.

A chat template comes from a model file, so it is hostile until checked. Jinja's
immutable sandbox stops attribute tricks but not resource exhaustion: ``{{ 'x' * 10**10 }}``
allocates 10 GB and a nested loop over ``range(100000)`` runs for hours. So the template
is compiled and rendered in a long-lived child Python whose address space is limited
(RLIMIT_AS) and whose every render has a wall-clock deadline; a render that runs out of
either fails with one line, and the child is replaced. One child serves every render of
a template (a render costs a pipe round trip, not a process start).

Protocol: one JSON object per line each way. Requests {"op": "compile", "source",
"bos_token", "eos_token"} and {"op": "render", "messages", "add_generation_prompt"};
replies {"text": ...} or {"error": KIND, "message": ...}, KIND one of syntax, security,
template, memory, too long, recursion, other.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

from harness.core.paths import PACKAGE_DIR

MEMORY_BYTES = 1024 * 1024 * 1024
RENDER_TIMEOUT_S = 10.0
MAX_TEXT_CHARS = 16 * 1024 * 1024
MAX_MESSAGE_CHARS = 300
LIMIT_KINDS = ("memory", "time", "too long", "recursion")


class TemplateFailed(Exception):
    """The template failed, was refused, or ran out of its limits. `kind` says which."""

    def __init__(self, kind: str, message: str, lineno: int | None = None):
        super().__init__(message)
        self.kind, self.message, self.lineno = kind, message, lineno


# ------------------------------------------------------------------ the child
def _environment():
    """As transformers' apply_chat_template: an immutable sandbox (no attribute writes,
    no unsafe calls), trim_blocks/lstrip_blocks, loop controls, raise_exception and
    strftime_now."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(fmt: str) -> str:
        from datetime import datetime

        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env


def _compile_watched(env, source: str):
    """env.from_string(source), but a MemoryError anywhere in it counts. Jinja folds
    constant expressions while it compiles and quietly gives up on any that fails, so
    under this process's limit ``'x' * 10**10`` compiles, while in a process without one
    (llama-cpp-python compiles a model's templates as it loads it) it takes 10 GB."""
    hit = []

    def tracer(frame, event, arg):
        if event == "exception" and issubclass(arg[0], MemoryError):
            hit.append(True)
        return tracer

    sys.settrace(tracer)
    try:
        template = env.from_string(source)
    finally:
        sys.settrace(None)
    if hit:
        raise MemoryError
    return template


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def _handle(state: dict, request: dict) -> dict:
    import jinja2

    try:
        if request["op"] == "compile":
            state["template"] = _compile_watched(_environment(), request["source"])
            state["bos_token"], state["eos_token"] = request["bos_token"], request["eos_token"]
            return {"text": ""}
        text = state["template"].render(messages=request["messages"],
                                        add_generation_prompt=request["add_generation_prompt"],
                                        bos_token=state["bos_token"], eos_token=state["eos_token"])
        if len(text) > MAX_TEXT_CHARS:
            return {"error": "too long", "message": f"it rendered {len(text)} characters (the limit is {MAX_TEXT_CHARS})"}
        return {"text": text}
    except MemoryError:
        return {"error": "memory", "message": f"it needed more than {state['memory'] // 2**20} MiB"}
    except RecursionError:
        return {"error": "recursion", "message": "it recursed too deeply"}
    except jinja2.exceptions.TemplateSyntaxError as exc:
        return {"error": "syntax", "message": _one_line(exc.message or exc), "lineno": exc.lineno}
    except jinja2.exceptions.SecurityError as exc:
        return {"error": "security", "message": _one_line(exc)}
    except jinja2.exceptions.TemplateError as exc:
        return {"error": "template", "message": _one_line(exc)}
    except Exception as exc:  # a hostile template's error is its failure, not the harness's
        return {"error": "other", "message": _one_line(f"{type(exc).__name__}: {exc}")}


def _serve(memory: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    parent = os.getppid()

    def orphaned():  # a render stuck when the harness died must not run on
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    state: dict = {"memory": memory}
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            reply = _handle(state, json.loads(line))
            data = json.dumps(reply).encode() + b"\n"
        except MemoryError:
            data = b'{"error": "memory", "message": "it ran out of memory"}\n'
        out.write(data)
        out.flush()


# ------------------------------------------------------------------ the parent side
class TemplateRenderer:
    """A template compiled in its own limited child process; `render` asks it for text."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", *,
                 memory_bytes: int = MEMORY_BYTES, timeout_s: float = RENDER_TIMEOUT_S):
        self._compile = {"op": "compile", "source": source, "bos_token": bos_token, "eos_token": eos_token}
        self._memory, self._timeout = memory_bytes, timeout_s
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        with self._lock:
            self._start()

    def _start(self) -> None:
        # the child imports this very module, wherever the parent found it
        here = str(PACKAGE_DIR.parent)
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", f"from harness.measurement.template_sandbox import _serve; _serve({int(self._memory)})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
            env={**os.environ, "PYTHONPATH": path})
        self._ask(self._compile, timeout_s=self._timeout + 10.0)  # and the child's start

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        with self._lock:
            if self._proc is None:
                self._start()
            return self._ask({"op": "render", "messages": messages, "add_generation_prompt": add_generation_prompt},
                             timeout_s=self._timeout)

    def _ask(self, request: dict, timeout_s: float) -> str:
        proc = self._proc
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._stop()
            raise TemplateFailed("other", "the rendering process stopped") from None
        line = self._read_line(proc, time.monotonic() + timeout_s)
        if line is None:
            self._stop()
            raise TemplateFailed("time", f"it took longer than {timeout_s:g} s")
        if not line:
            self._stop()
            raise TemplateFailed("memory", f"the rendering process died (limit {self._memory // 2**20} MiB)")
        reply = json.loads(line)
        if "error" in reply:
            if reply["error"] in ("memory", "recursion", "too long"):
                self._stop()  # a child that hit its limit is not trusted to go on
            raise TemplateFailed(reply["error"], reply.get("message", ""), reply.get("lineno"))
        return reply["text"]

    @staticmethod
    def _read_line(proc: subprocess.Popen, deadline: float) -> bytes | None:
        """One reply line; b"" if the child died, None at the deadline."""
        fd = proc.stdout.fileno()
        chunks: list[bytes] = []
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    return b""
                chunks.append(chunk)
                if chunk.endswith(b"\n"):
                    return b"".join(chunks)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __del__(self):
        try:
            self._stop()
        except Exception:
            pass


# ------------------------------------------------------------------ model files
def check_model_templates(path: str | Path) -> None:
    """Raise TemplateFailed when a chat template of the GGUF at `path` exhausts its limits
    as it compiles. Jinja folds constant expressions while compiling (``'x' * 10**10`` is
    computed then), and llama-cpp-python compiles every template of a model, in process and
    without limits, when it loads the model; so the templates are compiled here first, in
    the limited child. Templates that merely fail are left to whoever renders them."""
    st = os.stat(path)
    _check_file(os.path.realpath(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _check_file(path: str, size: int, mtime_ns: int) -> None:
    from harness.core.models import _open_reader

    try:
        reader = _open_reader(Path(path))
    except Exception:  # a damaged file: the loader that follows reports it
        return
    sources = []
    for name, field in reader.fields.items():
        if name == "tokenizer.chat_template" or name.startswith("tokenizer.chat_template."):
            try:
                value = field.contents()
            except Exception:
                continue
            if isinstance(value, str):
                sources.append(value)
    _check_sources(tuple(sources))


@lru_cache(maxsize=32)
def _check_sources(sources: tuple[str, ...]) -> None:
    for source in sources:
        try:
            TemplateRenderer(source).close()
        except TemplateFailed as exc:
            if exc.kind in LIMIT_KINDS:
                raise
