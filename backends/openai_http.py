"""The `openai` backend: any OpenAI-compatible server over HTTP (vLLM's, llama.cpp's, a hosted API)
through the Backend contract, as a text generator. The requests, retries, streaming and their timing
are backends/openai_client.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable, Literal, Mapping

from pydantic import ValidationError, field_validator

from harness.backends.openai_client import (MAX_SERVER_STOPS, Api, HttpStatusError, OpenAIClient, RequestResult,
                                            RetryPolicy, api_key_from_env, normalize_base_url, request_body, safe_url)
from harness.core.backend import (Backend, BackendSettings, GenerationRequest, GenerationResult, LoadInfo, ResultHook,
                                  TextGenerator, setting, setting_error)
from harness.core.errors import BackendError, ConfigError
from harness.core.models import ModelInfo


class OpenAISettings(BackendSettings):
    base_url: str = setting(reload=True)
    model_name: str | None = setting(None, reload=True)  # the name the server serves; None: the only one it lists
    api: Api = setting("chat", reload=True)
    api_key_env: str | None = setting(None, reload=True)  # the NAME of the variable holding the key, never the key
    timeout_s: float = setting(300.0)
    max_retries: int = setting(3)
    backoff_s: float = setting(0.5)
    # the served model's context length, for servers that do not report it (vLLM's /v1/models does)
    n_ctx: int | None = setting(None, role="context")
    # sent with every generation request; None: send none (an API that refuses the field)
    seed: int | None = setting(0, role="seed")
    # the body's name for the output limit: OpenAI's reasoning models take only max_completion_tokens
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = setting("max_tokens")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return normalize_base_url(v)

    @field_validator("max_retries")
    @classmethod
    def _retries(cls, v: int) -> int:
        if v < 0:
            raise ValueError("max_retries must be 0 or more")
        return v


def _client(s: OpenAISettings, timeout_s: float) -> OpenAIClient:
    return OpenAIClient(s.base_url, api_key_from_env(s.api_key_env), timeout_s,
                        RetryPolicy(max_retries=s.max_retries, backoff_s=s.backoff_s))


def remote_model_info(base_url: str, model_name: str) -> ModelInfo:
    """A ModelInfo for a model known only by its name at a server (no file, no hash)."""
    shown = safe_url(normalize_base_url(base_url))
    return ModelInfo(ref=f"openai:{model_name}", name=model_name, path=shown, sha256="", format="openai-api",
                     size_bytes=0, source=f"served at {shown}")


@dataclass(frozen=True)
class Generation:
    """One generate() answer, for the lm-eval adapter."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


class OpenAIHttpBackend(TextGenerator, Backend):
    """The Backend contract over HTTP: a text generator, the one capability an
    OpenAI-compatible API has (prompt log-probabilities and token-level evaluation are not
    part of it). Generation needs no tokenizer: token counts come from the API's usage.
    """

    name = "openai"
    Settings = OpenAISettings
    install_hint = "pip install 'openbench-harness[openai]' (or: make setup)"
    resolve_keys = ("base_url", "model_name", "api_key_env", "max_retries", "backoff_s")
    concurrent = True  # requests in flight at once (--concurrency)

    def __init__(self, model: ModelInfo, settings: OpenAISettings):
        super().__init__(model, settings)
        self.client: OpenAIClient | None = None
        self.served_name: str | None = None
        self._listing: dict = {}
        self._tokenizer_route: str | None = None  # "vllm" or "llamacpp", found on first use
        self._bos: int | None = None

    @classmethod
    def has_tokenizer(cls, settings: BackendSettings | None = None) -> bool:
        return False  # some servers expose theirs (tokenize() finds it), a hosted API does not

    @classmethod
    def prompt_forms(cls, settings: BackendSettings | None = None) -> frozenset[str]:
        api = getattr(settings, "api", "chat")
        return frozenset({"text", "messages"}) if api == "chat" else frozenset({"text"})

    @classmethod
    def describe(cls, model: ModelInfo, settings: BackendSettings | None = None) -> str:
        api = getattr(settings, "api", "chat")
        what = "a chat API" if api == "chat" else "a completions API"
        return f"{model.name} at {model.path} is {what} without prompt log-probabilities"

    @classmethod
    def installed_version(cls) -> str | None:
        try:
            return version("httpx")
        except PackageNotFoundError:
            return None

    @classmethod
    def default_settings(cls, model: ModelInfo, **overrides) -> OpenAISettings:
        return OpenAISettings(**overrides)

    @classmethod
    def resolve_model(cls, ref: str | None, settings: Mapping[str, Any] | None = None) -> ModelInfo:
        """The served model, by name (``--model-name``, else the model reference, else the only
        one the server lists), checked against the server's list before any worker starts."""
        settings = dict(settings or {})
        if not settings.get("base_url"):
            raise ConfigError("the openai backend needs the server's address: give --base-url URL "
                              "(e.g. http://127.0.0.1:8000/v1)")
        try:
            s = OpenAISettings(**settings)
        except ValidationError as exc:
            raise setting_error(cls.name, exc) from None
        client = _client(s, timeout_s=min(s.timeout_s, 30.0))  # a model list answers fast or not at all
        try:
            name, _ = client.resolve_model(s.model_name or ref or None)
        finally:
            client.close()
        return remote_model_info(s.base_url, name)

    def load(self) -> LoadInfo:
        s = self.settings
        self.client = _client(s, timeout_s=s.timeout_s)
        # resolve_model() named the served model before the worker started
        self.served_name, self._listing = self.client.resolve_model(s.model_name or self.model.name)
        return LoadInfo(n_ctx=self._known_n_ctx() or 0, n_vocab=0, device="remote", mmap=False)

    def _known_n_ctx(self) -> int | None:
        return int(self._listing.get("max_model_len") or 0) or self.settings.n_ctx or None

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def effective_settings(self) -> dict:
        d = self.settings.model_dump()
        d["base_url"] = safe_url(d["base_url"])
        # recorded as key_variable: redact() takes any value under a name like "api_key..." for a secret
        d["key_variable"] = d.pop("api_key_env")
        if self.served_name:
            d["model_name"] = self.served_name
        return d

    def _need(self) -> OpenAIClient:
        if self.client is None:
            raise BackendError("the openai backend is not loaded; call load() first")
        return self.client

    # -- tokens, through the server's own tokenizer
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        client = self._need()
        for route in ([self._tokenizer_route] if self._tokenizer_route else ["vllm", "llamacpp"]):
            try:
                if route == "vllm":
                    data = client.post_json("/tokenize", {"model": self.served_name, "prompt": text,
                                                          "add_special_tokens": add_special})
                else:
                    data = client.post_json("/extras/tokenize", {"input": text})
            except HttpStatusError as exc:
                if exc.status in (404, 405) and not self._tokenizer_route:
                    continue
                raise
            self._tokenizer_route = route
            return [int(t) for t in data["tokens"]]
        raise BackendError(f"{client.shown_url} offers no tokenizer endpoint (/tokenize or /extras/tokenize); "
                           "this needs a server that exposes its tokenizer")

    def detokenize(self, tokens: list[int]) -> str:
        client = self._need()
        if not self._tokenizer_route:
            self.tokenize("a")  # finds the route, or says there is none
        if self._tokenizer_route == "vllm":
            return client.post_json("/detokenize", {"model": self.served_name, "tokens": list(tokens)})["prompt"]
        return client.post_json("/extras/detokenize", {"tokens": list(tokens)})["text"]

    @property
    def bos_token(self) -> int | None:
        return None  # the server adds its own special tokens to a text prompt

    @property
    def eos_token(self) -> int | None:
        return None

    @property
    def n_vocab(self) -> int:
        raise BackendError("an OpenAI-compatible server does not report its vocabulary size")

    @property
    def n_ctx(self) -> int:
        known = self._known_n_ctx()
        if known is None:
            raise BackendError(f"{self._need().shown_url} does not report the model's context length; "
                               "give it as the openai backend's n_ctx setting")
        return known

    # -- generation
    def _path(self) -> str:
        return "chat/completions" if self.settings.api == "chat" else "completions"

    def stream_request(self, prompt: str | list[dict], max_tokens: int, *, ignore_eos: bool = False,
                       temperature: float = 0.0, stop: list[str] | None = None,
                       on_text: Callable[[str], None] | None = None) -> RequestResult:
        """One streamed request with per-chunk arrival times; failures are in the result."""
        client = self._need()
        body = request_body(self.settings.api, self.served_name, prompt, max_tokens, temperature=temperature,
                            ignore_eos=ignore_eos, stop=stop)
        return client.stream(self._path(), body, self.settings.api, on_text)

    def complete(self, prompt: str | list[dict], max_tokens: int, stop: list[str] | None = None,
                 temperature: float = 0.0) -> Generation:
        """Text for one prompt (or chat messages), in one streamed request.

        OpenAI's API takes at most four stop sequences; any further ones are applied
        here, by cutting the text at the earliest stop that appears.
        """
        stop = [s for s in (stop or []) if s]
        r = self.stream_request(prompt, max_tokens, temperature=temperature, stop=stop[:MAX_SERVER_STOPS] or None)
        if not r.ok:
            raise BackendError(f"generation failed at {self._need().shown_url}: {r.error_kind}: {r.error}"
                               f"{f' (after {r.retries} retries)' if r.retries else ''}")
        text = r.text
        cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
        if cuts:
            text = text[: min(cuts)]
        return Generation(text, r.finish_reason, r.usage_prompt_tokens, r.usage_completion_tokens)

    def generate(self, requests: list[GenerationRequest], *, concurrency: int | None = None,
                 on_result: ResultHook | None = None) -> list[GenerationResult]:
        """Every request, ``concurrency`` in flight at a time (1 when not given); see
        harness.backends.openai_generate."""
        from harness.backends.openai_generate import generate_all

        return generate_all(self._need(), self.served_name, self.settings.api, requests,
                            concurrency=concurrency or 1, on_result=on_result, seed=self.settings.seed,
                            max_tokens_field=self.settings.max_tokens_field)
