"""Backends that fail the way real ones do, for the sweep fault tests.

Found only through the ``harness.backends`` entry-point group (the dist-info folder
beside this package; put this folder on PYTHONPATH). Each wraps the real llama.cpp
backend, so a cell without a fault measures the real SmolLM2; the faults are real too:
a real loopback server that never answers, a real abort.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Literal

from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
from harness.core.backend import setting
from harness.core.errors import BackendError

# A server that accepts every connection and never answers: the shape of a wedged
# inference server (its socket is open, its engine is stuck).
SILENT_SERVER = r"""
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
with open(sys.argv[1] + ".tmp", "w") as fh:
    fh.write(str(s.getsockname()[1]))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
held = []
while True:
    conn, _ = s.accept()
    held.append(conn)
"""

# what an engine that logs its configuration might print before it dies
LEAKY_VARS = ("OPENAI_API_KEY", "HF_TOKEN", "MY_SERVICE_PASSWORD")


class FaultySettings(LlamaCppSettings):
    fault: Literal["none", "hang_http", "abort_with_env", "orphan_server", "bug_in_main"] = setting("none", reload=True)
    state_dir: str = setting("", reload=True)  # hang_http: where the server's port and pid files go


class FaultyBackend(LlamaCppBackend):
    name = "faulty"
    Settings = FaultySettings
    resolve_keys = (*LlamaCppBackend.resolve_keys, "fault")

    @classmethod
    def resolve_model(cls, ref, settings=None):
        if (settings or {}).get("fault") == "bug_in_main":
            # a plugin's bug in the harness's own process, before any worker: an unexpected
            # exception whose message carries a secret from the environment
            card: dict = {"token": os.environ.get("MY_SERVICE_PASSWORD", "")}
            raise KeyError(f"context_length (model card {card})")
        return super().resolve_model(ref, settings)

    def load(self):
        if self.settings.fault == "hang_http":
            self._talk_to_silent_server()
        elif self.settings.fault == "orphan_server":
            # a worker that starts a server in a session of its own and dies at once: no
            # snapshot of its children can have seen the server
            server = self._start_silent_server()
            (Path(self.settings.state_dir) / "orphan.pid").write_text(str(server.pid))
            os._exit(5)
        elif self.settings.fault == "abort_with_env":
            for var in LEAKY_VARS:
                print(f"engine config: {var}={os.environ.get(var, '')}", file=sys.stderr)
            sys.stderr.flush()
            os.abort()
        return super().load()

    def _start_silent_server(self) -> subprocess.Popen:
        port_file = Path(self.settings.state_dir) / "port"
        port_file.unlink(missing_ok=True)
        return subprocess.Popen([sys.executable, "-c", SILENT_SERVER, str(port_file)], start_new_session=True)

    def _talk_to_silent_server(self) -> None:
        """Start a server in a session of its own (as a daemonizing server would, leaving
        the worker's process group) and wait for an answer that never comes."""
        state = Path(self.settings.state_dir)
        server = self._start_silent_server()
        (state / "server.pid").write_text(str(server.pid))
        port_file = state / "port"
        for _ in range(200):
            if port_file.exists():
                break
            time.sleep(0.05)
        else:
            raise BackendError("the test server did not start")
        (state / "worker.pid").write_text(str(os.getpid()))
        # no timeout: only the cell's wall-clock limit can end this
        urllib.request.urlopen(f"http://127.0.0.1:{port_file.read_text()}/v1/models")
