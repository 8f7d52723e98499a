"""The contract: a small core every backend implements, and the capabilities it declares.

The core (``Backend``) is load/close, metadata, typed settings and a tokenizer where
the backend has one. Beyond it a backend class inherits the capabilities it really has
(``StepDecoder``, ``BatchScorer``, ``TextGenerator``); each scenario (bench pp/tg,
log-likelihood tasks, generative tasks) says which it needs (``SCENARIO_NEEDS``), so
pre-flight can refuse from the class and its settings, before anything loads.

Constructing a backend validates its settings and touches nothing else; ``load()``
does the heavy work. Timing happens in harness.measurement.perf around these calls, so every
backend is measured the same way; a backend never reads a clock or formats output.
"""

from __future__ import annotations

import difflib
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticUndefined

from harness.core.errors import BackendError, ConfigError
from harness.core.models import ModelInfo
from harness.core.record import EngineMemory


def setting_error(backend_name: str, exc: ValidationError) -> ConfigError:
    """A settings model's first complaint as one line naming the setting."""
    err = exc.errors()[0]
    return ConfigError(f"{backend_name} setting '{'.'.join(map(str, err['loc']))}': {err['msg']}")


SettingRole = Literal["threads", "context", "seed"]
META_KEY = "harness"  # the key of a field's json_schema_extra that holds its SettingMeta


@dataclass(frozen=True)
class SettingMeta:
    """What the harness knows about one backend setting, from the backend's own declaration."""

    name: str
    default: Any
    # the short name: the table column's title, a sweep matrix key and a `compare --by` name
    label: str
    # the `harness bench` option (llama-bench's long name) that sets it, where that is not the
    # setting's name with dashes
    option: str | None
    reload: bool  # a change needs a fresh model load; the others are applied to a loaded model
    column: bool | Literal["always"]  # a table column when it varies or is off its default; "always": every table
    follows: str | None  # the setting this one copies unless set on its own: the two change together
    answer_neutral: bool  # cannot change an answer (left out of the eval request-cache key)
    trend: bool  # named in a `harness trend` series label
    role: SettingRole | None  # what the harness itself sets or reads (--threads, the sized context, the seed)


def setting(default: Any = PydanticUndefined, *, label: str | None = None, option: str | None = None,
            reload: bool = False, column: bool | Literal["always"] = False, follows: str | None = None,
            answer_neutral: bool = False, trend: bool = False, role: SettingRole | None = None, **field: Any) -> Any:
    """A backend settings field with its SettingMeta (any other keyword goes to pydantic's Field)."""
    meta = {"label": label, "option": option, "reload": reload, "column": column, "follows": follows,
            "answer_neutral": answer_neutral, "trend": trend, "role": role}
    return Field(default, json_schema_extra={META_KEY: meta}, **field)


@lru_cache(maxsize=None)
def _settings_metadata(settings_cls: type[BaseModel]) -> dict[str, SettingMeta]:
    found = {}
    for name, info in settings_cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        meta = dict(extra.get(META_KEY) or {})
        found[name] = SettingMeta(
            name=name, default=None if info.is_required() else info.get_default(call_default_factory=True), label=meta.get("label") or name, option=meta.get("option"),
            reload=bool(meta.get("reload")), column=meta.get("column", False), follows=meta.get("follows"),
            answer_neutral=bool(meta.get("answer_neutral")), trend=bool(meta.get("trend")), role=meta.get("role"))
    return found


class BackendSettings(BaseModel):
    """Base of each backend's typed settings; unknown keys are an error.

    Each field is declared with ``setting()``, so tables, sweeps, comparisons and the eval
    cache read what a setting is from here and no harness module names an engine's setting.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def metadata(cls) -> dict[str, SettingMeta]:
        """Every field's SettingMeta, in field order (a field declared without setting() has
        the defaults: no label, no column, applied without a reload)."""
        return _settings_metadata(cls)

    @classmethod
    def reload_keys(cls) -> tuple[str, ...]:
        """The settings that need a fresh model load when they change (plan.py groups by them)."""
        return tuple(n for n, m in cls.metadata().items() if m.reload)

    @classmethod
    def aliases(cls) -> dict[str, str]:
        """Short names (labels, and bench options in underscores) -> the setting, where they differ."""
        out: dict[str, str] = {}
        for name, meta in cls.metadata().items():
            for alias in (meta.label, meta.option and meta.option.replace("-", "_")):
                if alias and alias != name:
                    out[alias] = name
        return out

    @classmethod
    def role(cls, role: SettingRole) -> str | None:
        """The setting that plays this role, or None where the backend has none."""
        return next((n for n, m in cls.metadata().items() if m.role == role), None)

    def load_identity(self) -> tuple:
        return tuple(getattr(self, k) for k in self.reload_keys())


@dataclass(frozen=True)
class GenerationRequest:
    """One whole request for a TextGenerator: a prompt in, up to max_tokens out.

    The prompt is token ids, text, or chat messages ([{"role": ..., "content": ...}]);
    a backend says which of these it takes (``TextGenerator.prompt_forms``).
    """

    prompt: list[int] | str | list[dict]
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before the first one
    seed: int | None = None
    # > 0: return the first generated position's top_logprobs most likely tokens (letter scoring)
    top_logprobs: int = 0


def prompt_form(prompt) -> str:
    """'tokens', 'text' or 'messages'."""
    if isinstance(prompt, str):
        return "text"
    if prompt and isinstance(prompt[0], dict):
        return "messages"
    return "tokens"


@dataclass
class GenerationResult:
    tokens: list[int] = field(default_factory=list)  # empty where the engine returns text only (an HTTP API)
    text: str | None = None  # the answer (a reasoning model's reasoning is not part of it)
    finish_reason: str | None = None
    # token counts as the engine reports them (an API's usage); None where it reports none
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # reasoning tokens included, as OpenAI's usage counts them
    reasoning_tokens: int | None = None
    prompt_tokens_cached: int | None = None  # of prompt_tokens, how many a cache already held
    retries: int = 0
    # the first generated position's most likely tokens as (text, log-probability), where
    # the request asked for them and the engine returned them; None otherwise
    top_logprobs: list[tuple[str, float]] | None = None
    # as the client saw it (an HTTP API): first token of either kind (reasoning or answer), last token
    client_ttft_s: float | None = None
    client_e2e_s: float | None = None
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

    @classmethod
    def context_for(cls, positions: int) -> int:
        """The context size a test filling this many positions needs on this backend."""
        return positions

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
        by_option = {m.option: n for n, m in cls.Settings.metadata().items() if m.option}
        setting = by_option.get(name, name.replace("-", "_"))
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
        from harness.core.models import DEFAULT_MODEL, resolve

        return resolve(ref or DEFAULT_MODEL)

    # -- lifecycle
    @abstractmethod
    def load(self) -> LoadInfo: ...

    @abstractmethod
    def close(self) -> None:
        """Free everything; safe to call twice."""

    def apply(self, settings: BackendSettings) -> None:
        """Switch to settings that differ from the loaded ones only outside the reload keys."""
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

    # -- what it can do, known from the class and its settings (nothing loads)
    @classmethod
    def capability_names(cls, settings: BackendSettings | None = None) -> set[str]:
        """The capabilities this class has: 'step_decoder', 'batch_scorer', 'text_generator',
        and 'tokenizer' where the backend has one (with these settings)."""
        names = {name for cap, name in ((StepDecoder, "step_decoder"), (BatchScorer, "batch_scorer"),
                                        (TextGenerator, "text_generator")) if issubclass(cls, cap)}
        if cls.has_tokenizer(settings):
            names.add("tokenizer")
        return names

    @classmethod
    def chat_template_source(cls, model: ModelInfo) -> tuple[str, str, str] | None:
        """The model's own chat template as (template, BOS text, EOS text), or None where it has
        none; read from the model file, never run here (harness.measurement.accuracy.ChatTemplate renders
        it in a sandbox). A GGUF keeps it in its metadata; a backend whose models are another
        format reads its own."""
        if model.format != "gguf":
            return None
        from harness.measurement.chat_template import gguf_special_ids, gguf_token_texts
        from harness.core.models import read_chat_template

        source = read_chat_template(Path(model.path))
        if not source:
            return None
        ids = gguf_special_ids(model.path)
        texts = gguf_token_texts(model.path, [i for i in ids.values() if i is not None])
        return source, texts.get(ids["bos"], ""), texts.get(ids["eos"], "")

    @classmethod
    def special_token_ids(cls, model: ModelInfo) -> dict[str, int | None]:
        """The model's own BOS and EOS token ids ({'bos': ..., 'eos': ...}) as its file names
        them, for the lm-eval adapter's prefix token; empty where the backend reads none (a
        GGUF keeps them in its metadata)."""
        if model.format != "gguf":
            return {}
        from harness.measurement.chat_template import gguf_special_ids

        return gguf_special_ids(model.path)

    # -- a server of its own: `harness load --serve NAME` starts it on loopback
    serve_ready_timeout_s: ClassVar[float] = 180.0  # how long its server may take to list its models

    @classmethod
    def serve_command(cls, model_path: str, *, python: str, name: str, host: str, port: int, n_ctx: int,
                      extra: list[str]) -> list[str] | None:
        """The command line that starts this backend's OpenAI-compatible server on the model
        (``serve_model_path``) under ``name`` with ``n_ctx`` tokens of context, run by
        ``python``, with the user's ``extra`` arguments; None: this backend has no server."""
        return None

    @classmethod
    def can_serve(cls) -> bool:
        return cls.serve_command.__func__ is not Backend.serve_command.__func__

    @classmethod
    def check_server(cls, python: str) -> None:
        """BackendNotInstalled, before anything starts, where ``python`` cannot run the server."""

    @classmethod
    def serve_model_path(cls, model: ModelInfo, python: str, log: Callable[[str], None]) -> str:
        """The path the server loads the model from (a backend whose server takes another
        format converts it here, in the server's Python)."""
        return model.path

    @classmethod
    def server_version(cls, python: str) -> str | None:
        """The server's engine and version as the server's Python has it installed, or None."""
        return None

    @classmethod
    def has_tokenizer(cls, settings: BackendSettings | None = None) -> bool:
        return True

    @classmethod
    def describe(cls, model: ModelInfo, settings: BackendSettings | None = None) -> str:
        """What the model is to this backend, for a refusal line ('X is a chat API without ...')."""
        return model.name or model.ref

    # -- tokens (the core's tokenizer, where the backend has one)
    def _no_tokenizer(self):
        return BackendError(f"backend '{self.name}' has no tokenizer")

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        raise self._no_tokenizer()

    def detokenize(self, tokens: list[int]) -> str:
        raise self._no_tokenizer()

    @property
    def bos_token(self) -> int | None:
        """The token to start a sequence with, or None when the model adds none."""
        raise self._no_tokenizer()

    @property
    def n_vocab(self) -> int:
        raise self._no_tokenizer()

    @property
    def n_ctx(self) -> int:
        raise BackendError(f"backend '{self.name}' does not know its context length")

    @property
    def eos_token(self) -> int | None:
        raise self._no_tokenizer()


def python_lacks(python: str, modules: list[str]) -> list[str]:
    """Of these modules, the ones another Python interpreter (a server's) cannot import."""
    code = ("import importlib.util, sys; m = sys.argv[1:]; "
            "print(' '.join(x for x in m if importlib.util.find_spec(x) is None))")
    try:
        out = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"--serve-python {python} cannot be run: {exc}") from None
    if out.returncode != 0:
        raise ConfigError(f"--serve-python {python} cannot be run: {out.stderr.strip()[-200:]}")
    return out.stdout.split()


def python_distribution(python: str, names: list[str]) -> str | None:
    """'NAME VERSION' of the first of these distributions another Python interpreter has
    installed; '' where it has none of them, None where it cannot be asked."""
    code = ("from importlib.metadata import version\nimport sys\n"
            "for name in sys.argv[1:]:\n    try:\n        print(name, version(name)); break\n"
            "    except Exception: pass\n")
    try:
        return subprocess.run([python, "-c", code, *names], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


# ----------------------------------------------------------------------------- capabilities
# A backend class inherits the capabilities it really has, next to Backend:
#     class LlamaCppBackend(StepDecoder, TextGenerator, Backend)


class StepDecoder(ABC):
    """Evaluate tokens on a live KV cache, return the logits asked for, roll the cache back.

    evaluate() runs the model there and then, so a single call can be timed (llama-bench's
    way) and the lm-eval adapter reuses shared prefixes between requests.
    """

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


class BatchScorer(ABC):
    """Log-likelihoods of many (context, continuation) pairs in one call."""

    # tokens score_continuations() has passed through the model so far, where the engine
    # reports them (a prefix shared by several pairs is computed once); None: not reported,
    # and the lm-eval adapter counts every pair's tokens
    scored_tokens_computed: int | None = None

    @abstractmethod
    def score_continuations(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """For each (context, continuation): the summed log-probability of the continuation
        after the context, and whether greedy decoding would produce it (lm-eval's
        loglikelihood). The context must hold at least one token."""


ResultHook = Callable[[int, GenerationResult], None]  # index into the requests, its answer


class TextGenerator(ABC):
    """Many prompts or chat conversations generated at once; text, finish reason, usage."""

    # generate() really runs several requests at the same time (an engine's batch, requests
    # in flight), rather than one after another
    concurrent: ClassVar[bool] = False

    @classmethod
    def prompt_forms(cls, settings: BackendSettings | None = None) -> frozenset[str]:
        """The prompt forms generate() takes: 'tokens', 'text', 'messages'."""
        return frozenset({"tokens", "text"})

    @abstractmethod
    def generate(self, requests: list[GenerationRequest], *, concurrency: int | None = None,
                 on_result: ResultHook | None = None) -> list[GenerationResult]:
        """Answer every request (all submitted together, or ``concurrency`` in flight at a
        time); ``on_result`` is called as each answer arrives, so a caller can keep it
        before the next one is asked for."""


def generate_by_steps(backend, requests: list[GenerationRequest], on_result: ResultHook | None = None) -> list[GenerationResult]:
    """TextGenerator.generate() for a step decoder: one request after another through
    stream(), each from an empty cache (stop strings are matched on the decoded text,
    which is cut before the stop string)."""
    results = []
    for index, req in enumerate(requests):
        prompt = req.prompt
        form = prompt_form(prompt)
        if form == "messages":
            raise BackendError(f"backend '{backend.name}' takes token ids or text, not chat messages; "
                               "render them with the model's chat template first")
        if form == "text":
            prompt = backend.tokenize(prompt)
        backend.reset()
        tokens: list[int] = []
        text, reason = "", "length"
        longest_stop = max((len(s) for s in req.stop), default=0)
        stream = backend.stream(list(prompt), req.max_tokens, ignore_eos=req.ignore_eos, temperature=req.temperature)
        try:
            for tok in stream:
                tokens.append(tok)
                if req.stop:
                    before = len(text)
                    text = backend.detokenize(tokens)
                    tail = text[max(0, before - longest_stop):]
                    if any(s and s in tail for s in req.stop):
                        hit = min(text.find(s) for s in req.stop if s and s in text)
                        text, reason = text[:hit], "stop"
                        break
        finally:
            stream.close()
        if reason != "stop":
            text = backend.detokenize(tokens)
            if len(tokens) < req.max_tokens:
                reason = "stop"
        result = GenerationResult(tokens=tokens, text=text, finish_reason=reason, prompt_tokens=len(prompt),
                                  completion_tokens=len(tokens))
        results.append(result)
        if on_result:
            on_result(index, result)
    backend.reset()
    return results


def score_by_steps(backend, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """BatchScorer.score_continuations() for a step decoder: each pair from an empty cache."""
    results = []
    for context, continuation in pairs:
        if not context or not continuation:
            raise ValueError("score_continuations() needs a context and a continuation of at least one token each")
        backend.reset()
        rows = backend.evaluate(list(context) + list(continuation[:-1]), logits="all")[len(context) - 1:]
        x = rows.astype(np.float64)
        m = x.max(axis=-1, keepdims=True)
        logp = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
        target = np.asarray(continuation)
        results.append((float(logp[np.arange(len(target)), target].sum()), bool((rows.argmax(-1) == target).all())))
    backend.reset()
    return results


# ----------------------------------------------------------------------------- scenarios
# What each scenario needs, as alternatives: any one set of capabilities serves it.
SCENARIO_NEEDS: dict[str, tuple[frozenset[str], ...]] = {
    # llama-bench's pp/tg on token ids: stepped, or as whole requests of token ids
    "bench": (frozenset({"step_decoder", "tokenizer"}), frozenset({"text_generator", "token_prompts", "tokenizer"})),
    "batch": (frozenset({"text_generator", "token_prompts", "tokenizer", "concurrent"}),),
    "loglikelihood": (frozenset({"batch_scorer", "tokenizer"}), frozenset({"step_decoder", "tokenizer"})),
    "generate": (frozenset({"text_generator"}), frozenset({"step_decoder", "tokenizer"})),
}
CAPABILITY_WORDS = {"step_decoder": "a step decoder", "batch_scorer": "a batch scorer", "text_generator": "a text generator",
                    "tokenizer": "a tokenizer", "token_prompts": "token-id prompts", "concurrent": "concurrent requests"}


def serves(backend_cls, settings: BackendSettings | None, scenario: str) -> bool:
    have = set(backend_cls.capability_names(settings))
    if issubclass(backend_cls, TextGenerator):
        if "tokens" in backend_cls.prompt_forms(settings):
            have.add("token_prompts")
        if getattr(backend_cls, "concurrent", False):
            have.add("concurrent")
    return any(need <= have for need in SCENARIO_NEEDS[scenario])


def missing_for(backend_cls, settings: BackendSettings | None, scenario: str) -> str:
    """The capabilities a scenario needs, in words ('a batch scorer or a step decoder')."""
    options = [" and ".join(CAPABILITY_WORDS[c] for c in sorted(need - {"tokenizer"}) or ["tokenizer"])
               for need in SCENARIO_NEEDS[scenario]]
    return " or ".join(options)


def capability_words(backend_cls, settings: BackendSettings | None = None) -> str:
    names = backend_cls.capability_names(settings)
    return " and ".join(CAPABILITY_WORDS[n] for n in ("step_decoder", "batch_scorer", "text_generator", "tokenizer")
                        if n in names) or "no capability"
