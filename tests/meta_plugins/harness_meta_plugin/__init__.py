"""A third-party backend that knows nothing of llama.cpp's setting names, used by the tests.

Found only through the ``harness.backends`` entry-point group (the dist-info folder
beside it). Its settings declare their own labels, short names, bench option, reload
keys, column and thread role, and it has a server of its own (``server.py``, an
OpenAI-compatible stand-in), so the tests can show that the harness's tables, sweep
matrices, ``--threads`` and ``harness load --serve`` come from a backend's declarations.
"""

from __future__ import annotations

import os

from harness.core.backend import Backend, BackendSettings, TextGenerator, setting
from harness.core.errors import BackendError


class ToySettings(BackendSettings):
    workers: int | None = setting(None, label="w", option="threads", column="always", answer_neutral=True,
                                  role="threads")
    chunk: int = setting(64, label="chunk_size", reload=True, column=True)
    lanes: int = setting(1, reload=True)  # no column: never in a table
    n_positions: int = setting(0, reload=True, role="context")


class ToyBackend(TextGenerator, Backend):
    """Declares its settings and its server; it runs nothing in process."""

    name = "toy"
    Settings = ToySettings
    serve_ready_timeout_s = 60.0

    @classmethod
    def installed_version(cls) -> str:
        return "0.0.0"

    @classmethod
    def serve_command(cls, model_path: str, *, python: str, name: str, host: str, port: int, n_ctx: int,
                      extra: list[str]) -> list[str]:
        return [python, "-m", "harness_meta_plugin.server", "--host", host, "--port", str(port), "--name", name,
                "--model", model_path, *extra]

    @classmethod
    def server_version(cls, python: str) -> str:
        if os.environ.get("TOY_FAULT") == "bug_in_server_version":  # a plugin's bug, met in the load-test worker
            return {}["version"]
        return "toy 0.0.0 server"

    def load(self):
        raise BackendError("the toy backend runs only as a server (harness load --serve toy)")

    def close(self) -> None:
        pass

    def generate(self, requests, *, concurrency=None, on_result=None):
        raise BackendError("the toy backend runs only as a server")
