"""llama-cpp-python, in process.

The model and context are created through ``llama_cpp.Llama`` (so loading follows the
binding's own defaults and checks), but evaluation goes straight to llama.cpp's C API
(``llama_decode`` on ``llama_batch_get_one`` batches, ``llama_synchronize``), which is
what llama-bench does: no Python-side copies of logits unless the caller asks for them.
"""

from __future__ import annotations

import ctypes
import glob
import os
from importlib.metadata import PackageNotFoundError, version
from typing import ClassVar, Iterator

import numpy as np
import psutil

from harness.backend import (Backend, BackendSettings, GenerationRequest, GenerationResult, LoadInfo, LogitsWanted,
                             ResultHook, StepDecoder, TextGenerator, generate_by_steps)
from harness.errors import BackendError
from harness.models import ModelInfo


class LlamaCppSettings(BackendSettings):
    n_threads: int | None = None  # None: the physical core count
    n_threads_batch: int | None = None  # None: same as n_threads (as llama-bench does)
    n_gpu_layers: int | None = None  # None: every layer when the build can offload, else 0
    n_ctx: int = 0  # 0: sized to the largest request by the caller
    n_batch: int = 2048  # llama-bench's defaults
    n_ubatch: int = 512
    flash_attn: bool = True  # llama-bench's "auto" resolves to on for CPU and current GPUs
    use_mmap: bool = True
    seed: int = 0

    load_keys: ClassVar[tuple[str, ...]] = ("n_gpu_layers", "n_ctx", "n_batch", "n_ubatch", "flash_attn", "use_mmap")


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class LlamaCppBackend(StepDecoder, TextGenerator, Backend):
    name = "llamacpp"
    Settings = LlamaCppSettings
    install_hint = "pip install 'llama-cpp-python==0.3.36' (or: make setup)"

    def __init__(self, model: ModelInfo, settings: LlamaCppSettings):
        super().__init__(model, settings)
        if settings.n_threads is not None and settings.n_threads < 1:
            raise BackendError(f"threads must be at least 1, got {settings.n_threads}")
        if settings.n_batch < 1 or settings.n_ubatch < 1:
            raise BackendError("n_batch and n_ubatch must be at least 1")
        self._llm = None
        self._ctx = None
        self._vocab = None
        self._n_past = 0
        self._n_vocab = 0
        self._gpu_layers = 0

    # ------------------------------------------------------------------ discovery
    @classmethod
    def installed_version(cls) -> str | None:
        try:
            return version("llama-cpp-python")
        except PackageNotFoundError:
            return None

    @classmethod
    def engine_version(cls) -> str | None:
        """The ggml commit llama-cpp-python was built from, when the build recorded it."""
        if cls.installed_version() is None:
            return None
        import llama_cpp

        lib_dir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        for path in glob.glob(os.path.join(lib_dir, "libggml-base.*")) + glob.glob(os.path.join(lib_dir, "libggml.*")):
            try:
                lib = ctypes.CDLL(path)
                fn = lib.ggml_commit
            except (OSError, AttributeError):
                continue
            fn.restype = ctypes.c_char_p
            commit = fn().decode()
            return f"llama.cpp {commit} (vendored in llama-cpp-python {cls.installed_version()})"
        return f"llama.cpp vendored in llama-cpp-python {cls.installed_version()}"

    @classmethod
    def cell_resources(cls, model: ModelInfo, settings: LlamaCppSettings) -> dict[str, float]:
        """For `harness sweep --ray`: a core per thread (unset: this machine's physical cores,
        which is what the worker would use), a GPU when layers are offloaded by a build that
        can, and the model file plus room for the KV cache and buffers in memory."""
        offload = settings.n_gpu_layers != 0 and cls.installed_version() is not None and cls.supports_gpu_offload()
        return {"num_cpus": settings.n_threads or physical_cores(), "num_gpus": 1 if offload else 0,
                "memory": int(model.size_bytes * 1.1) + 512 * 2**20}

    @staticmethod
    def supports_gpu_offload() -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> LoadInfo:
        try:
            import llama_cpp
        except ImportError:
            raise BackendError(f"llama-cpp-python is not installed; {self.install_hint}") from None
        s = self.settings
        n_ctx = s.n_ctx or 512
        gpu = self.supports_gpu_offload()
        layers = s.n_gpu_layers if s.n_gpu_layers is not None else (-1 if gpu else 0)
        threads = s.n_threads or physical_cores()
        try:
            self._llm = llama_cpp.Llama(
                model_path=self.model.path,
                n_gpu_layers=layers,
                use_mmap=s.use_mmap,
                n_ctx=n_ctx,
                n_batch=s.n_batch,
                n_ubatch=s.n_ubatch,
                n_threads=threads,
                n_threads_batch=s.n_threads_batch or threads,
                flash_attn=s.flash_attn,
                seed=s.seed,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"llama.cpp could not load {self.model.path}: {exc}") from None
        self._ctx = self._llm._ctx.ctx
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm._model.model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        n_layer = llama_cpp.llama_model_n_layer(self._llm._model.model)
        self._gpu_layers = min(n_layer, layers) if layers >= 0 else n_layer
        if not gpu:
            self._gpu_layers = 0
        self._n_past = 0
        self._apply_threads()
        return LoadInfo(n_ctx=llama_cpp.llama_n_ctx(self._ctx), n_vocab=self._n_vocab,
                        device="gpu" if self._gpu_layers else "cpu", mmap=s.use_mmap)

    def apply(self, settings: BackendSettings) -> None:
        super().apply(settings)
        if self._llm is not None:
            self._apply_threads()

    def _threads(self) -> tuple[int, int]:
        t = self.settings.n_threads or physical_cores()
        return t, self.settings.n_threads_batch or t

    def _apply_threads(self) -> None:
        import llama_cpp

        llama_cpp.llama_set_n_threads(self._ctx, *self._threads())

    def effective_settings(self) -> dict:
        out = self.settings.model_dump()
        t, tb = self._threads()
        out.update(n_threads=t, n_threads_batch=tb)
        if self._llm is not None:
            import llama_cpp

            out.update(n_gpu_layers=self._gpu_layers, n_ctx=llama_cpp.llama_n_ctx(self._ctx))
        return out

    def system_info(self) -> str:
        import llama_cpp

        return llama_cpp.llama_print_system_info().decode(errors="replace").strip()

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
            self._ctx = None

    def generate(self, requests: list[GenerationRequest], *, concurrency: int | None = None,
                 on_result: ResultHook | None = None) -> list[GenerationResult]:
        """One request after another (one sequence in the cache), through stream()."""
        return generate_by_steps(self, requests, on_result)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self._llm.tokenize(text.encode(), add_bos=add_special, special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self._llm.detokenize(tokens).decode(errors="replace")

    @property
    def bos_token(self) -> int | None:
        import llama_cpp

        if not llama_cpp.llama_vocab_get_add_bos(self._vocab):
            return None
        return llama_cpp.llama_vocab_bos(self._vocab)

    @property
    def eos_token(self) -> int | None:
        import llama_cpp

        tok = llama_cpp.llama_vocab_eos(self._vocab)
        return None if tok < 0 else tok

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def n_ctx(self) -> int:
        import llama_cpp

        return llama_cpp.llama_n_ctx(self._ctx)

    @property
    def n_past(self) -> int:
        return self._n_past

    def is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # ------------------------------------------------------------------ evaluation
    def reset(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), False)
        self._n_past = 0

    def truncate(self, n_tokens: int) -> None:
        import llama_cpp

        if n_tokens >= self._n_past:
            return
        mem = llama_cpp.llama_get_memory(self._ctx)
        if not llama_cpp.llama_memory_seq_rm(mem, 0, n_tokens, -1):
            # some caches (recurrent, sliding-window) cannot drop a suffix: start over
            llama_cpp.llama_memory_clear(mem, False)
            raise BackendError("this model's cache cannot roll back; re-evaluate from the start")
        self._n_past = n_tokens

    def _check_room(self, n: int) -> None:
        if self._n_past + n > self.n_ctx:
            raise BackendError(f"context full: {self._n_past} + {n} tokens exceed n_ctx {self.n_ctx}")

    def evaluate(self, tokens: list[int], logits: LogitsWanted = "none") -> np.ndarray | None:
        import llama_cpp

        if not tokens:
            raise ValueError("evaluate() needs at least one token")
        self._check_room(len(tokens))
        n_batch = self.settings.n_batch
        if logits == "all":
            return self._evaluate_all_logits(tokens)
        for i in range(0, len(tokens), n_batch):
            chunk = tokens[i:i + n_batch]
            arr = (llama_cpp.llama_token * len(chunk))(*chunk)
            rc = llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                raise BackendError(f"llama_decode failed with code {rc}")
            self._n_past += len(chunk)
        llama_cpp.llama_synchronize(self._ctx)
        if logits == "last":
            ptr = llama_cpp.llama_get_logits_ith(self._ctx, -1)
            return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()
        return None

    def _evaluate_all_logits(self, tokens: list[int]) -> np.ndarray:
        import llama_cpp

        n_batch = self.settings.n_batch
        batch = self._llm._batch  # allocated by Llama for n_batch tokens
        out = np.empty((len(tokens), self._n_vocab), dtype=np.float32)
        for i in range(0, len(tokens), n_batch):
            chunk = tokens[i:i + n_batch]
            batch.set_batch(chunk, n_past=self._n_past, logits_all=True)
            rc = llama_cpp.llama_decode(self._ctx, batch.batch)
            if rc != 0:
                raise BackendError(f"llama_decode failed with code {rc}")
            ptr = llama_cpp.llama_get_logits(self._ctx)
            out[i:i + len(chunk)] = np.ctypeslib.as_array(ptr, shape=(len(chunk), self._n_vocab))
            self._n_past += len(chunk)
        return out

    def stream(self, prompt: list[int], max_tokens: int, ignore_eos: bool = False,
               temperature: float = 0.0) -> Iterator[int]:
        rng = np.random.default_rng(self.settings.seed)
        logits = self.evaluate(prompt, logits="last")
        for _ in range(max_tokens):
            if temperature <= 0:
                token = int(np.argmax(logits))
            else:
                z = (logits - logits.max()) / temperature
                p = np.exp(z)
                token = int(rng.choice(len(p), p=p / p.sum()))
            if not ignore_eos and self.is_eog(token):
                return
            yield token
            if self._n_past >= self.n_ctx:
                return
            logits = self.evaluate([token], logits="last")
