"""Other tools' model folders, laid out as those tools leave them, built from the bundled GGUF.

Ollama (`ollama pull smollm2:135m`): manifests/registry.ollama.ai/library/NAME/TAG, a JSON
image manifest whose application/vnd.ollama.image.model layer names the GGUF blob, and the
blobs themselves as blobs/sha256-HEX. LM Studio: models/PUBLISHER/REPO/FILE.gguf.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_ollama_store(root: Path, gguf: Path, name: str = "smollm2", tag: str = "135m") -> dict:
    """An Ollama models folder holding ``gguf`` as NAME:TAG, with the small layers a pull brings."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256()
    with gguf.open("rb") as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            sha.update(block)
    model_digest = "sha256:" + sha.hexdigest()
    model_blob = blobs / model_digest.replace(":", "-")
    shutil.copyfile(gguf, model_blob)
    layers = [{"mediaType": "application/vnd.ollama.image.model", "digest": model_digest, "size": model_blob.stat().st_size}]
    for media, text in (("application/vnd.ollama.image.template", "{{ .Prompt }}"),
                        ("application/vnd.ollama.image.license", "Apache License 2.0"),
                        ("application/vnd.ollama.image.params", json.dumps({"stop": ["<|im_end|>"]}))):
        data = text.encode()
        (blobs / _digest(data).replace(":", "-")).write_bytes(data)
        layers.append({"mediaType": media, "digest": _digest(data), "size": len(data)})
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "file_type": "Q4_1"}).encode()
    (blobs / _digest(config).replace(":", "-")).write_bytes(config)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": _digest(config),
                           "size": len(config)},
                "layers": layers}
    path = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return {"manifest": path, "blob": model_blob, "digest": model_digest}


def make_lmstudio_store(root: Path, gguf: Path, publisher: str = "lmstudio-community",
                        repo: str = "SmolLM2-135M-Instruct-GGUF") -> Path:
    folder = root / publisher / repo
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / "SmolLM2-135M-Instruct-Q4_1.gguf"
    shutil.copyfile(gguf, dest)
    return dest
