"""The contract every backend implements.

Constructing a backend validates its settings and touches nothing else; ``load()``
does the heavy work. Timing happens in harness.perf around these calls, so every
backend is measured the same way; a backend never reads a clock or formats output.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import ConfigError
from harness.models import ModelInfo
from harness.record import EngineMemory


def setting_error(backend_name: str, exc: ValidationError) -> ConfigError:
    """A settings model's first complaint as one line naming the setting."""
    err = exc.errors()[0]
    return ConfigError(f"{backend_name} setting '{'.'.join(map(str, err['loc']))}': {err['msg']}")


class BackendSettings(BaseModel):
    """Base of each backend's typed settings; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Settings that need a fresh model load when they change; the others (threads, say)
    # are applied to a loaded model. plan.py groups configurations by these.
    load_keys: ClassVar[tuple[str, ...]] = ()
    # `harness bench` options (llama-bench's long names, e.g. "cache-type-k") -> this backend's
    # setting, where the names differ; an option named like a setting ("n-batch") needs no entry
    bench_options: ClassVar[dict[str, str]] = {}

    def load_identity(self) -> tuple:
        return tuple(getattr(self, k) for k in self.load_keys)


@dataclass(frozen=True)
class Capabilities:
    logprobs: bool  # can return logits/log-probabilities of evaluated tokens
    streaming: bool
    batching: bool  # generate() runs several requests at once
    chat_template: bool
    # evaluate() runs the model there and then on a live KV cache, so a single call can be
    # timed (llama-bench's way). False for engines that work on whole requests (vLLM):
    # harness.perf then times generate() requests instead.
    incremental_eval: bool = True


@dataclass(frozen=True)
class GenerationRequest:
    """One whole request for generate(): prompt token ids in, up to max_tokens out."""

    prompt: list[int]
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings (the engine's own semantics)


@dataclass
class GenerationResult:
    tokens: list[int]
    text: str | None = None
    finish_reason: str | None = None
    # the engine's own timestamps for the request, in seconds on the engine's monotonic
    # clock (only differences are meaningful), where it reports them
    engine_scheduled_s: float | None = None
    engine_first_token_s: float | None = None
    engine_last_token_s: float | None = None


@dataclass(frozen=True)
class LoadInfo:
    n_ctx: int
    n_vocab: int
    device: str
    mmap: bool


LogitsWanted = Literal["none", "last", "all"]


class Backend(ABC):
    name: ClassVar[str]
    Settings: ClassVar[type[BackendSettings]]
    install_hint: ClassVar[str] = ""

    def __init__(self, model: ModelInfo, settings: BackendSettings):
        self.model = model
        self.settings = settings

    # -- discovery (no engine import needed beyond a version probe)
    @classmethod
    @abstractmethod
    def installed_version(cls) -> str | None:
        """The engine package's version, or None when it is not installed."""

    @classmethod
    def engine_version(cls) -> str | None:
        """Version of the engine under the binding, when it differs from the binding's."""
        return None

    @classmethod
    def default_settings(cls, model: ModelInfo, **overrides) -> BackendSettings:
        return cls.Settings(**overrides)

    @classmethod
    def cell_resources(cls, model: ModelInfo, settings: BackendSettings) -> dict[str, float]:
        """What one run of this backend with these settings needs from a cluster node, in
        Ray's resource names (num_cpus, num_gpus, memory in bytes), for `harness sweep --ray`.
        A backend whose settings say how many threads or GPUs it uses overrides this."""
        return {"num_cpus": 1, "num_gpus": 0}

    # the settings resolve_model() reads (a served model is found through the server's URL);
    # a sweep resolves a model once per reference and these
    resolve_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_setting_names(cls, names: Iterable[str], also_known: Iterable[str] = ()) -> None:
        """A setting this backend does not have is one ConfigError, with the closest name."""
        unknown = [k for k in names if k not in cls.Settings.model_fields]
        if unknown:
            known = sorted(set(cls.Settings.model_fields) | set(also_known))
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"backend '{cls.name}' has no setting '{unknown[0]}'{hint}")

    @classmethod
    def setting_for_option(cls, option: str) -> str:
        """The setting a `harness bench` option sets on this backend (``--cache-type-k`` ->
        llama.cpp's type_k); one ConfigError when the backend has no such setting."""
        name = option.lstrip("-")
        setting = cls.Settings.bench_options.get(name, name.replace("-", "_"))
        if setting not in cls.Settings.model_fields:
            raise ConfigError(f"--{name}: backend '{cls.name}' has no such setting; leave it out, or see its "
                              f"settings with --set")
        return setting

    @classmethod
    def resolve_model(cls, ref: str | None, settings: Mapping[str, Any] | None = None) -> ModelInfo:
        """A model reference -> the checked model this backend loads (a GGUF file by default;
        a backend that loads another format converts or downloads here, before any worker).
        ``None`` is the backend's default model; ``settings`` are the user's settings, for a
        backend whose model is found through them (a server's URL)."""
        from harness.models import DEFAULT_MODEL, resolve

        return resolve(ref or DEFAULT_MODEL)

    # -- lifecycle
    @abstractmethod
    def load(self) -> LoadInfo: ...

    @abstractmethod
    def close(self) -> None:
        """Free everything; safe to call twice."""

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    def apply(self, settings: BackendSettings) -> None:
        """Switch to settings that differ from the loaded ones only outside load_keys."""
        if settings.load_identity() != self.settings.load_identity():
            raise ValueError("settings need a new load")
        self.settings = settings

    def effective_settings(self) -> dict:
        """Every setting as it applies after load, defaults resolved, for the record."""
        return self.settings.model_dump()

    def engine_memory(self) -> "EngineMemory | None":
        """What the engine itself says about its memory after load (reserved shares, weights,
        KV-cache capacity), for engines that reserve memory up front; None otherwise."""
        return None

    # -- tokens
    @abstractmethod
    def tokenize(self, text: str, add_special: bool = True) -> list[int]: ...

    @abstractmethod
    def detokenize(self, tokens: list[int]) -> str: ...

    @property
    @abstractmethod
    def bos_token(self) -> int | None:
        """The token to start a sequence with, or None when the model adds none."""

    @property
    @abstractmethod
    def n_vocab(self) -> int: ...

    @property
    @abstractmethod
    def n_ctx(self) -> int: ...

    @property
    @abstractmethod
    def eos_token(self) -> int | None: ...

    # -- evaluation
    @abstractmethod
    def reset(self) -> None:
        """Forget all evaluated tokens (clear the KV cache)."""

    @abstractmethod
    def evaluate(self, tokens: list[int], logits: LogitsWanted = "none") -> np.ndarray | None:
        """Append ``tokens`` to the evaluated sequence.

        Returns nothing, the logits after the last token (shape [n_vocab]) or the logits
        after every token (shape [len(tokens), n_vocab]).
        """

    @abstractmethod
    def truncate(self, n_tokens: int) -> None:
        """Roll the evaluated sequence back to its first ``n_tokens`` (reuse a prefix)."""

    @abstractmethod
    def stream(
        self, prompt: list[int], max_tokens: int, ignore_eos: bool = False, temperature: float = 0.0
    ) -> Iterator[int]:
        """Generate after ``prompt``, yielding each token id as soon as it exists."""

    def score_continuations(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """For each (context, continuation): the summed log-probability of the continuation
        after the context, and whether greedy decoding would produce it (lm-eval's
        loglikelihood). The context must hold at least one token.

        This default evaluates each pair from an empty cache through evaluate(); engines
        that work on whole requests (vLLM) score them all in one batch instead.
        """
        results = []
        for context, continuation in pairs:
            if not context or not continuation:
                raise ValueError("score_continuations() needs a context and a continuation of at least one token each")
            self.reset()
            rows = self.evaluate(list(context) + list(continuation[:-1]), logits="all")[len(context) - 1:]
            x = rows.astype(np.float64)
            m = x.max(axis=-1, keepdims=True)
            logp = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
            target = np.asarray(continuation)
            results.append((float(logp[np.arange(len(target)), target].sum()), bool((rows.argmax(-1) == target).all())))
        self.reset()
        return results

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run whole requests, each from an empty cache; a batching backend runs them together.

        This default runs them one after another through stream() (stop strings are
        matched on the decoded text, which is cut before the stop string).
        """
        results = []
        for req in requests:
            self.reset()
            tokens: list[int] = []
            text, reason = "", "length"
            stream = self.stream(req.prompt, req.max_tokens, ignore_eos=req.ignore_eos, temperature=req.temperature)
            try:
                for tok in stream:
                    tokens.append(tok)
                    if req.stop:
                        text = self.detokenize(tokens)
                        hit = min((text.find(s) for s in req.stop if s and s in text), default=-1)
                        if hit >= 0:
                            text, reason = text[:hit], "stop"
                            break
            finally:
                stream.close()
            if reason != "stop":
                text = self.detokenize(tokens)
                if len(tokens) < req.max_tokens:
                    reason = "stop"
            results.append(GenerationResult(tokens=tokens, text=text, finish_reason=reason))
        self.reset()
        return results
