"""Backends a user could publish, used by the `harness eval` tests.

Found only through the ``harness.backends`` entry-point group (the dist-info folder
beside this package), so plugin discovery is exercised for real. Both wrap the real
llama.cpp backend:

* ``llamacpp-nologprobs`` says it cannot return log-probabilities (as a chat API
  cannot), so log-likelihood tasks must be refused before anything runs;
* ``llamacpp-crash-in-eval`` dies from a real SIGSEGV in the middle of scoring, so
  the crash must end up in a failed record while the harness carries on.
"""

from __future__ import annotations

import os
import signal

from backends.llamacpp import LlamaCppBackend
from harness.backend import Capabilities


class NoLogprobsBackend(LlamaCppBackend):
    name = "llamacpp-nologprobs"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(logprobs=False, streaming=True, batching=False, chat_template=self.model.chat_template)


class CrashInEvalBackend(LlamaCppBackend):
    name = "llamacpp-crash-in-eval"
    crash_after_evaluations = 3

    def evaluate(self, tokens, logits="none"):
        self._evaluations = getattr(self, "_evaluations", 0) + 1
        if self._evaluations > self.crash_after_evaluations:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().evaluate(tokens, logits)
