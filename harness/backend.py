"""The contract every backend implements.

Constructing a backend validates its settings and touches nothing else; ``load()``
does the heavy work. Timing happens in harness.perf around these calls, so every
backend is measured the same way; a backend never reads a clock or formats output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from harness.models import ModelInfo


class BackendSettings(BaseModel):
    """Base of each backend's typed settings; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Settings that need a fresh model load when they change; the others (threads, say)
    # are applied to a loaded model. plan.py groups configurations by these.
    load_keys: ClassVar[tuple[str, ...]] = ()

    def load_identity(self) -> tuple:
        return tuple(getattr(self, k) for k in self.load_keys)


@dataclass(frozen=True)
class Capabilities:
    logprobs: bool  # can return logits/log-probabilities of evaluated tokens
    streaming: bool
    batching: bool
    chat_template: bool


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
