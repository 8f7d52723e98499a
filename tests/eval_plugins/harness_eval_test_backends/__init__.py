"""Backends a user could publish, used by the `harness eval` tests.

Found only through the ``harness.backends`` entry-point group (the dist-info folder
beside this package), so plugin discovery is exercised for real. Both wrap the real
llama.cpp backend:

* ``llamacpp-nologprobs`` declares only the text-generator capability (as a chat API
  has), generating through a real llama.cpp backend it holds, so log-likelihood tasks
  must be refused before anything runs, and generative ones run;
* ``llamacpp-crash-in-eval`` dies from a real SIGSEGV in the middle of scoring, so
  the crash must end up in a failed record while the harness carries on.
"""

from __future__ import annotations

import os
import signal

from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
from harness.core.backend import Backend, TextGenerator


class NoLogprobsBackend(TextGenerator, Backend):
    name = "llamacpp-nologprobs"
    Settings = LlamaCppSettings

    def __init__(self, model, settings):
        super().__init__(model, settings)
        self._engine = LlamaCppBackend(model, settings)

    @classmethod
    def installed_version(cls):
        return LlamaCppBackend.installed_version()

    @classmethod
    def has_tokenizer(cls, settings=None) -> bool:
        return False

    def load(self):
        return self._engine.load()

    def close(self) -> None:
        self._engine.close()

    def generate(self, requests, *, concurrency=None, on_result=None):
        return self._engine.generate(requests, concurrency=concurrency, on_result=on_result)


class CrashInEvalBackend(LlamaCppBackend):
    name = "llamacpp-crash-in-eval"
    crash_after_evaluations = 3

    def evaluate(self, tokens, logits="none"):
        self._evaluations = getattr(self, "_evaluations", 0) + 1
        if self._evaluations > self.crash_after_evaluations:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().evaluate(tokens, logits)
