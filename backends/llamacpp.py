"""llama-cpp-python, in process.

The model and context are created through ``llama_cpp.Llama`` (so loading follows the
binding's own defaults and checks), but evaluation goes straight to llama.cpp's C API
(``llama_decode`` on ``llama_batch_get_one`` batches, ``llama_synchronize``), which is
what llama-bench does: no Python-side copies of logits unless the caller asks for them.

Log-likelihood scoring (``score_continuations``) runs on a second context of its own,
built for many sequences at once: see ``ContinuationScorer``.
"""

from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Iterator, Literal

import numpy as np
import psutil
from pydantic import field_validator, model_validator

from harness.core.backend import (Backend, BackendSettings, BatchScorer, GenerationRequest, GenerationResult, LoadInfo,
                             LogitsWanted, ResultHook, StepDecoder, TextGenerator, generate_by_steps, python_distribution,
                             python_lacks, setting)
from harness.core.errors import BackendError, BackendNotInstalled
from harness.core.models import ModelInfo


# llama-bench's KV cache types (-ctk/-ctv) -> ggml type ids
CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6, "q5_1": 7}
SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}


class LlamaCppSettings(BackendSettings):
    # None: the physical core count. answer_neutral: llama.cpp's results do not depend on the thread
    # count (tests/test_accuracy.py checks it)
    n_threads: int | None = setting(None, label="threads", option="threads", column="always", answer_neutral=True,
                                    trend=True, role="threads")
    # None: same as n_threads (as llama-bench does)
    n_threads_batch: int | None = setting(None, label="threads_batch", column=True, follows="n_threads",
                                          answer_neutral=True)
    # None: every layer when the build can offload, else 0
    n_gpu_layers: int | None = setting(None, label="ngl", reload=True, column=True, trend=True)
    n_ctx: int = setting(0, reload=True, role="context")  # 0: sized to the largest request by the caller
    n_batch: int = setting(2048, reload=True, column=True, trend=True)  # llama-bench's defaults
    n_ubatch: int = setting(512, reload=True, column=True)
    # llama-bench's "auto" resolves to on for CPU and current GPUs
    flash_attn: bool = setting(True, label="fa", reload=True, column=True, trend=True)
    use_mmap: bool = setting(True, label="mmap", option="mmap", reload=True, column=True)
    seed: int = setting(0, role="seed")
    # KV cache types, llama-bench's -ctk/-ctv names
    type_k: str = setting("f16", option="cache-type-k", reload=True)
    type_v: str = setting("f16", option="cache-type-v", reload=True)
    # how several GPUs share the model (-sm)
    split_mode: Literal["none", "layer", "row"] = setting("layer", reload=True)
    # -mg: the GPU for the whole model (split_mode none) or its small tensors (row)
    main_gpu: int = setting(0, reload=True, ge=0)
    # -ts: each GPU's share, e.g. (3, 1); None: by free memory
    tensor_split: tuple[float, ...] | None = setting(None, reload=True)
    # log-likelihoods through the batched multi-sequence scorer (score_continuations): near the
    # compute floor, but llama.cpp's kernels round differently in large batches, so a near-tie
    # document can change its answer against the step decoder; off until that is accepted
    batch_scoring: bool = setting(False)
    # weights repacked into the CPU's own layouts (llama.cpp's extra buffer types; llama-bench's
    # -nr 1 turns it off). None: on, except where the build runs llama.cpp's AMX kernels, which
    # crash with SIGSEGV on some Sapphire Rapids machines (ggml-org/llama.cpp#20824)
    repack: bool | None = setting(None, reload=True)

    @field_validator("type_k", "type_v")
    @classmethod
    def _cache_type(cls, v: str) -> str:
        if v.lower() not in CACHE_TYPES:
            raise ValueError(f"unknown KV cache type '{v}'; use one of {', '.join(CACHE_TYPES)}")
        return v.lower()

    @field_validator("tensor_split")
    @classmethod
    def _tensor_split(cls, v: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if v is not None and (not v or any(x < 0 for x in v) or not sum(v)):
            raise ValueError("tensor split needs non-negative shares with a positive sum, e.g. 3/1")
        return v

    @model_validator(mode="after")
    def _quantized_v_needs_flash_attn(self) -> "LlamaCppSettings":
        if self.type_v not in ("f32", "f16", "bf16") and not self.flash_attn:
            raise ValueError(f"a quantized V cache ({self.type_v}) needs flash attention; drop --flash-attn 0")
        return self


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def system_info() -> str:
    """The build's features as llama.cpp prints them ('CPU : ... AVX2 = 1 | AMX_INT8 = 1 | ...')."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def repack_default() -> bool:
    """Off where this build runs llama.cpp's AMX kernels on this CPU (see LlamaCppSettings.repack)."""
    return "AMX_INT8 = 1" not in system_info()


@contextmanager
def weight_repacking(on: bool):
    """llama-cpp-python's Llama() takes no use_extra_bufts, so it is set on the default model
    parameters that Llama() starts from, for the one construction."""
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = on
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = default


class LlamaCppBackend(StepDecoder, BatchScorer, TextGenerator, Backend):
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
        self._scorer: ContinuationScorer | None = None
        self._repack: bool | None = None
        self.scored_tokens_computed = 0

    # ------------------------------------------------------------------ discovery
    @classmethod
    def capability_names(cls, settings: BackendSettings | None = None) -> set[str]:
        names = super().capability_names(settings)
        if not getattr(settings, "batch_scoring", False):
            names.discard("batch_scorer")  # the step decoder scores log-likelihoods (see batch_scoring)
        return names

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

    # ------------------------------------------------------------------ its server
    @classmethod
    def serve_command(cls, model_path: str, *, python: str, name: str, host: str, port: int, n_ctx: int,
                      extra: list[str]) -> list[str]:
        """llama-cpp-python's server (through harness.backends.llamacpp_server, for the repack default)
        on every physical core."""
        threads = str(physical_cores())
        # interrupt_requests off: by default the server cuts a stream short when another
        # request arrives, which would turn every concurrent load point into truncated outputs
        return [python, "-m", "harness.backends.llamacpp_server", "--model", model_path, "--model_alias", name,
                "--host", host, "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", threads,
                "--n_threads_batch", threads, "--interrupt_requests", "False", *extra]

    @classmethod
    def check_server(cls, python: str) -> None:
        missing = python_lacks(python, ["llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                                        "pydantic_settings"])
        if missing:
            raise BackendNotInstalled(f"llama-cpp-python's server is not installed (missing {', '.join(missing)}); "
                                      "run: pip install 'openbench-harness[server]' (or make setup)")

    @classmethod
    def server_version(cls, python: str) -> str | None:
        found = python_distribution(python, ["llama-cpp-python"])
        return f"{found} server" if found else None

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
        from harness.measurement.template_sandbox import TemplateFailed, check_model_templates

        try:  # llama-cpp-python compiles the file's chat templates in process as it loads
            check_model_templates(self.model.path)
        except TemplateFailed as exc:
            raise BackendError(f"{self.model.path} is refused: compiling its chat template was stopped ({exc.message}); "
                               "llama-cpp-python compiles it when it loads the model, so the file is faulty or hostile") from None
        s = self.settings
        n_ctx = s.n_ctx or 512
        gpu = self.supports_gpu_offload()
        layers = s.n_gpu_layers if s.n_gpu_layers is not None else (-1 if gpu else 0)
        threads = s.n_threads or physical_cores()
        self._repack = repack_default() if s.repack is None else s.repack
        try:
            with weight_repacking(self._repack):
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
                    type_k=CACHE_TYPES[s.type_k],
                    type_v=CACHE_TYPES[s.type_v],
                    split_mode=SPLIT_MODES[s.split_mode],
                    main_gpu=s.main_gpu,
                    tensor_split=list(s.tensor_split) if s.tensor_split else None,
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
        if self._scorer is not None:
            self._scorer.set_threads(*self._threads())

    def effective_settings(self) -> dict:
        out = self.settings.model_dump()
        t, tb = self._threads()
        out.update(n_threads=t, n_threads_batch=tb)
        if self._llm is not None:
            import llama_cpp

            out.update(n_gpu_layers=self._gpu_layers, n_ctx=llama_cpp.llama_n_ctx(self._ctx), repack=self._repack)
        return out

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None
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

    # ------------------------------------------------------------------ batched scoring
    def score_continuations(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """lm-eval's loglikelihood for many (context, continuation) pairs, several
        sequences per ``llama_decode`` (see ``ContinuationScorer``). The main context and
        what it holds are left alone."""
        for context, continuation in pairs:
            if not context or not continuation:
                raise ValueError("score_continuations() needs a context and a continuation of at least one token each")
        if not pairs:
            return []
        longest = max(len(c) + len(k) - 1 for c, k in pairs)
        if self._scorer is None or not self._scorer.fits(longest):
            if self._scorer is not None:
                self._scorer.close()
            self._scorer = ContinuationScorer(self._llm, longest, self._n_vocab, self.settings.n_ubatch, self._threads())
        before = self._scorer.tokens_computed
        try:
            return self._scorer.score(pairs)
        finally:
            self.scored_tokens_computed += self._scorer.tokens_computed - before


# Tokens evaluated per llama_decode when scoring, beside the prefix kept in the cache: big
# enough that the matrix products run at prompt-processing speed, small enough that the
# attention over the batch's own cells (every token attends over all of them, masked)
# stays a small part of the work.
SCORE_BATCH_TOKENS = 512
SCORE_MAX_SEQS = 256  # llama.cpp's LLAMA_MAX_SEQ
# logits rows copied out of one decode at most (a 262k vocabulary: 256 rows)
SCORE_LOGITS_BYTES = 256 << 20


def _lcp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ContinuationScorer:
    """Scores (context, continuation) pairs many to a ``llama_decode``.

    Each distinct evaluated sequence (the context and all of the continuation but its
    last token) is one llama.cpp sequence id. The sequences are sorted, so those with a
    shared prefix are neighbours, and a batch is their prefix tree: a token shared by
    several sequences is evaluated once and carries all their ids, which a unified KV
    cache allows; each token attends only to the cells of its own sequences. Logits are
    produced only for the tokens whose next token is scored.

    Sequence 0 keeps, between batches, the prefix the last batch shares with the next
    one (few-shot examples): the next batch's sequences get its cells with
    ``llama_memory_seq_cp`` (no copy in a unified cache, only another id on the cells)
    and start after it, so a prefix runs through the model once per run of documents
    that share it rather than once per batch. Every scored token is still evaluated in
    the same context it would have in a pass of its own.
    """

    def __init__(self, llm, longest: int, n_vocab: int, n_ubatch: int, threads: tuple[int, int]):
        import llama_cpp

        self.n_vocab = n_vocab
        self.capacity = max(SCORE_BATCH_TOKENS, longest)  # tokens in one decode
        self.tokens_computed = 0
        self.max_rows = max(1, SCORE_LOGITS_BYTES // (4 * n_vocab))
        self.longest = longest
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        # the kept prefix (at most the longest sequence) plus one batch
        params.n_ctx = -(-(longest + self.capacity) // 256) * 256
        params.n_batch = max(self.capacity, SCORE_MAX_SEQS)  # llama.cpp reserves an output row per sequence
        params.n_ubatch = min(n_ubatch, self.capacity)
        params.n_seq_max = SCORE_MAX_SEQS
        params.kv_unified = True
        self._ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self._ctx:
            raise BackendError("llama.cpp could not create the scoring context")
        self._batch = llama_cpp.llama_batch_init(self.capacity, 0, SCORE_MAX_SEQS)
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self.set_threads(*threads)
        self._kept: tuple[int, ...] = ()  # what sequence 0 holds

    def fits(self, longest: int) -> bool:
        return longest <= self.longest

    def set_threads(self, n_threads: int, n_threads_batch: int) -> None:
        import llama_cpp

        llama_cpp.llama_set_n_threads(self._ctx, n_threads, n_threads_batch)

    def close(self) -> None:
        import llama_cpp

        if self._ctx is not None:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        import llama_cpp

        # one sequence per distinct evaluated path; each pair scores the last len(cont) tokens' logits
        paths: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, cont) in enumerate(pairs):
            paths.setdefault(tuple(ctx) + tuple(cont[:-1]), []).append(i)
        order = sorted(paths)
        # the shortest context among a path's pairs: its logits rows start there
        first_row = [min(len(pairs[i][0]) for i in paths[p]) - 1 for p in order]
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        llama_cpp.llama_memory_clear(self._mem, False)
        self._kept = ()
        start = 0
        while start < len(order):
            end, kept = self._plan(order, first_row, start)
            self._decode(order, paths, first_row, pairs, start, end, kept, results)
            if end < len(order):
                self._keep(order[end - 1][:_lcp(order[end - 1], order[end])], end - start)
            start = end
        llama_cpp.llama_memory_clear(self._mem, False)
        self._kept = ()
        return results  # type: ignore[return-value]

    def _plan(self, order, first_row, start: int) -> tuple[int, int]:
        """The batch order[start:end] and how much of the kept prefix it reuses."""
        kept = len(self._kept)
        end, emitted, rows = start, 0, 0
        while end < len(order) and end - start < SCORE_MAX_SEQS - 1:
            path = order[end]
            k = min(kept, _lcp(self._kept, path), first_row[end])
            row_count = len(path) - first_row[end]
            if k == kept:
                shared = _lcp(path, order[end - 1]) if end > start else 0
                new_emitted = emitted + len(path) - max(k, shared)
            else:  # this path reuses less of the kept prefix: the batch's paths start earlier
                new_emitted = sum(len(order[j]) - max(k, _lcp(order[j], order[j - 1]) if j > start else 0)
                                  for j in range(start, end + 1))
            if end > start and (new_emitted > self.capacity or rows + row_count > self.max_rows):
                break
            kept, emitted, rows = k, new_emitted, rows + row_count
            end += 1
        return end, kept

    def _keep(self, prefix: tuple[int, ...], last_seq: int) -> None:
        """Sequence 0 takes over ``prefix`` from the batch's last sequence; everything else goes."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self._mem, 0, len(prefix), -1)
        if prefix:
            llama_cpp.llama_memory_seq_cp(self._mem, last_seq, 0, 0, len(prefix))
        llama_cpp.llama_memory_seq_keep(self._mem, 0)
        self._kept = prefix

    def _decode(self, order, paths, first_row, pairs, start: int, end: int, kept: int, results) -> None:
        import llama_cpp

        mem, batch = self._mem, self._batch
        llama_cpp.llama_memory_seq_rm(mem, 0, kept, -1)
        self._kept = self._kept[:kept]
        seqs: list[list[int]] = []  # the sequence ids of each batch token
        node: list[int] = []  # node[d]: the batch index of depth d on the current path
        wants: list[list[int]] = []  # per path: batch indices of its logits rows
        n = 0
        for j in range(start, end):
            seq = j - start + 1  # 0 holds the kept prefix
            path = order[j]
            if kept:
                llama_cpp.llama_memory_seq_cp(mem, 0, seq, 0, kept)
            shared = max(kept, _lcp(path, order[j - 1]) if j > start else 0)
            del node[shared - kept:]
            for d in range(kept, len(path)):
                if d >= shared:
                    batch.token[n] = path[d]
                    batch.pos[n] = d
                    batch.logits[n] = 0
                    seqs.append([])
                    node.append(n)
                    n += 1
                seqs[node[d - kept]].append(seq)
            rows = node[first_row[j] - kept:]
            for i in rows:
                batch.logits[i] = 1
            wants.append(rows)
        for i, ids in enumerate(seqs):
            batch.n_seq_id[i] = len(ids)
            row = batch.seq_id[i]
            for k, s in enumerate(ids):
                row[k] = s
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, batch)
        self.tokens_computed += n
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc} while scoring {end - start} sequences of {n} tokens")
        out_index = np.cumsum([batch.logits[i] != 0 for i in range(n)]) - 1
        n_out = int(out_index[-1]) + 1
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._ctx), shape=(n_out, self.n_vocab))
        top = logits.max(axis=1)
        lse = top.astype(np.float64) + np.log(np.exp(logits - top[:, None]).sum(axis=1, dtype=np.float64))
        argmax = logits.argmax(axis=1)
        for j, rows in zip(range(start, end), wants):
            out = out_index[rows]
            for i in paths[order[j]]:
                ctx, cont = pairs[i]
                r = out[len(ctx) - 1 - first_row[j]:]
                target = np.asarray(cont)
                lp = float((logits[r, target].astype(np.float64) - lse[r]).sum())
                results[i] = (lp, bool((argmax[r] == target).all()))
