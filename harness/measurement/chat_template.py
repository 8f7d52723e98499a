"""A model's chat template, rendered in the Jinja sandbox (harness.measurement.template_sandbox), and the
special tokens a GGUF file names, read from its own metadata."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from harness.core.errors import EvalError


# ----------------------------------------------------------------------------- chat template


def gguf_token_texts(path: str | Path, ids: list[int]) -> dict[int, str]:
    """The vocabulary strings of a few token ids, read from the GGUF file.

    The harness's metadata reader steps over arrays without decoding them (the stock reader
    makes a numpy view of every token of a vocabulary); this walks the token array once,
    unpacking only lengths, and decodes just the ids asked for.
    """
    from harness.core.models import _open_reader

    reader = _open_reader(Path(path))
    f = reader.fields.get("tokenizer.ggml.tokens")
    if f is None:
        return {}
    buf = reader.data
    (key_len,) = struct.unpack_from("<Q", buf, f.offset)
    o = f.offset + 8 + key_len + 4 + 4  # key, value type, element type
    (n,) = struct.unpack_from("<Q", buf, o)
    o += 8
    wanted = {i for i in ids if i is not None and 0 <= i < n}
    out: dict[int, str] = {}
    last = max(wanted, default=-1)
    for i in range(last + 1):
        (length,) = struct.unpack_from("<Q", buf, o)
        if i in wanted:
            out[i] = bytes(buf[o + 8:o + 8 + length]).decode("utf-8", errors="replace")
        o += 8 + length
    return out


def gguf_special_ids(path: str | Path) -> dict[str, int | None]:
    from harness.core.models import _open_reader

    fields = _open_reader(Path(path)).fields

    def get(key: str) -> int | None:
        f = fields.get(key)
        return int(f.contents()) if f is not None else None

    return {"bos": get("tokenizer.ggml.bos_token_id"), "eos": get("tokenizer.ggml.eos_token_id")}


class ChatTemplate:
    """A model's own Jinja chat template, rendered in a sandbox (it comes from a model file).

    The environment follows transformers' apply_chat_template (an immutable sandbox,
    trim_blocks/lstrip_blocks, loop controls, ``raise_exception``, ``strftime_now``), and
    it runs in a child process with a memory limit and a per-render deadline
    (harness/measurement/template_sandbox.py), so a hostile template fails with one line instead of
    taking the machine's memory or time.
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", *,
                 memory_bytes: int | None = None, timeout_s: float | None = None):
        from harness.measurement import template_sandbox as ts

        self.source = source
        self.sha256 = hashlib.sha256(source.encode()).hexdigest()
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._renderer = ts.TemplateRenderer(source, bos_token, eos_token,
                                                 memory_bytes=memory_bytes or ts.MEMORY_BYTES,
                                                 timeout_s=timeout_s or ts.RENDER_TIMEOUT_S)
        except ts.TemplateFailed as exc:
            raise _template_error(exc) from None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from harness.measurement import template_sandbox as ts

        try:
            text = self._renderer.render(messages, add_generation_prompt)
        except ts.TemplateFailed as exc:
            raise _template_error(exc) from None
        if not add_generation_prompt and messages:
            # continue the final (assistant) message instead of closing it, as
            # transformers' continue_final_message does for lm-eval's gen_prefix
            final = messages[-1]["content"]
            for piece in (final, final.strip()):
                if piece and piece in text:
                    return text[:text.rindex(piece) + len(piece)]
        return text

    def close(self) -> None:
        self._renderer.close()


def _template_error(exc) -> EvalError:
    """One line for a chat template that failed (exc: template_sandbox.TemplateFailed)."""
    if exc.kind == "syntax":
        return EvalError(f"the model's chat template does not parse (line {exc.lineno}: {exc.message})")
    if exc.kind == "security":
        return EvalError(f"the model's chat template tried something the sandbox forbids: {exc.message}")
    if exc.kind in ("memory", "time", "too long", "recursion"):
        return EvalError(f"the model's chat template was stopped: {exc.message}; "
                         "the model file's template is faulty or hostile (run without --apply-chat-template)")
    return EvalError(f"the model's chat template failed: {exc.message}")


