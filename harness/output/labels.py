"""How a measured model is named wherever a record is shown: `show`, `compare`, `trend`,
`harness eval` and the report all call `model_label`.

A label says which file or served model was measured and how: the alias the user gave
(or the file name), the quantization, and the backend. A model behind an HTTP server is
named by the server's model name and the server's host, since no file identifies it.
A label never reads "?": a missing figure is left out, and the reference the user gave
stands in when nothing better is known.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from harness.core.record import RunRecord

# A score from fewer documents than this is a smoke test, not a claim (harness report
# --min-docs changes it for the report).
MIN_DOCS = 100


def smoke_label(n: int | None, min_docs: int = MIN_DOCS) -> str | None:
    """'smoke test (n=48): not a claim' for a score from fewer than min_docs documents."""
    if n is None or n >= min_docs:
        return None
    return f"smoke test (n={n}): not a claim"


def server_host(r: RunRecord) -> str | None:
    url = r.backend.settings.get("base_url")
    if not url:
        return None
    try:
        parsed = urlparse(str(url).split(" ")[0])
    except ValueError:
        return None
    if not parsed.hostname:
        return None
    return parsed.hostname + (f":{parsed.port}" if parsed.port else "")


def served_name(r: RunRecord) -> str:
    """The name a server knows the model by: the record's model name, the backend's
    model setting, or the reference without its 'openai:' prefix."""
    m = r.model
    for candidate in (m.name, r.backend.settings.get("model_name"), r.backend.settings.get("model")):
        if candidate and str(candidate).strip():
            return str(candidate).strip()
    ref = (m.ref or "").strip()
    return ref.split(":", 1)[1] if ref.startswith("openai:") and ":" in ref else (ref or "unnamed model")


def _file_name(r: RunRecord) -> str:
    m = r.model
    ref = (m.ref or "").strip()
    # an alias (a bundled name such as smollm2-135m) says more than its file name
    if ref and "/" not in ref and not ref.lower().endswith(".gguf") and ":" not in ref:
        return ref
    if m.path:
        p = Path(m.path)
        return p.stem if p.suffix.lower() == ".gguf" else (p.name or str(p))
    return ref or m.name or "unnamed model"


def is_served(r: RunRecord) -> bool:
    """A model known only by the name a server gives it (no file, no hash)."""
    return r.model.format == "openai-api"


def model_name(r: RunRecord) -> str:
    """The model part of the label: 'smollm2-135m Q4_1', 'gpt-4o-mini@api.example.com'."""
    if is_served(r):
        host = server_host(r)
        return served_name(r) + (f"@{host}" if host else "")
    base = _file_name(r)
    q = r.model.quantization
    if q and q.lower() not in base.lower():
        base = f"{base} {q}"
    host = server_host(r)  # a local file served over HTTP (harness load --serve)
    return base + (f"@{host}" if host else "")


def backend_name(r: RunRecord) -> str:
    served_by = r.backend.settings.get("served_by")
    return r.backend.name + (f" ({served_by} server)" if served_by else "")


def model_label(r: RunRecord, with_backend: bool = True) -> str:
    """'smollm2-135m Q4_1 · llamacpp'; 'gpt-4o-mini@api.example.com · openai'."""
    name = model_name(r)
    return f"{name} · {backend_name(r)}" if with_backend and r.backend.name else name


# ---------------------------------------------------------------------------- recalled answers


RECALLED_NOTE = "recalled from cache: not measured in this run"


def recalled_share(r: RunRecord) -> float | None:
    """The share of the run's requests that lm-eval answered from its request cache
    (None when the record does not say, as records before the count was kept)."""
    e = r.evaluation
    if e is None:
        return None
    if e.requests_recalled is None or not e.requests_total:
        return None
    return e.requests_recalled / e.requests_total


def recalled_note(r: RunRecord) -> str | None:
    """RECALLED_NOTE when any answer came from the request cache, with the share when partial."""
    share = recalled_share(r)
    if share is None or share <= 0:
        return None
    if share >= 1:
        return RECALLED_NOTE
    e = r.evaluation
    return f"{RECALLED_NOTE} ({e.requests_recalled} of {e.requests_total} requests)"
