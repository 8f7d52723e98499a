"""A third-party backend package, as a user would publish one, used by the tests.

It is found only through the ``harness.backends`` entry-point group (see the
dist-info folder beside it), which is the point: plugin discovery is exercised for
real. The backends wrap the real llama.cpp backend.
"""

from __future__ import annotations

import os
import signal

from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
from harness.core.backend import setting


class CrashSettings(LlamaCppSettings):
    crash_on_load: bool = setting(False, reload=True)


class CrashingBackend(LlamaCppBackend):
    """llama.cpp that dies from a real SIGSEGV after loading when asked to."""

    name = "crashy"
    Settings = CrashSettings

    def load(self):
        info = super().load()
        if self.settings.crash_on_load:
            os.kill(os.getpid(), signal.SIGSEGV)
        return info


class UninstalledBackend(LlamaCppBackend):
    """A backend whose engine package is missing."""

    name = "uninstalled"
    install_hint = "pip install imaginary-engine"

    @classmethod
    def installed_version(cls):
        return None


class QueuedBackend(LlamaCppBackend):
    """llama.cpp taking a batch of requests at once and answering them one after another, as
    a batching engine with a single slot would: a batch test runs on the bundled model."""

    name = "queued"
    concurrent = True
