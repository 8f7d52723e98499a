"""A server on loopback for `harness load --serve`: started through its backend's serve command,
waited for until it lists its models, and always stopped with everything it started."""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from harness.core.errors import HarnessError
from harness.execution import interrupts
from harness.measurement.traffic_options import Log, TrafficError

if TYPE_CHECKING:
    from harness.core.backend import Backend


# ------------------------------------------------------------------ a server on loopback


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_backend(name: str) -> type[Backend]:
    """The backend `--serve NAME` starts the server of; one HarnessError where there is none."""
    from harness.core import registry

    if not _can_serve(name):
        names = sorted(n for n in registry.available() if _can_serve(n))
        choices = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)
        raise HarnessError(f"--serve: unknown server '{name}'; use {choices}")
    return registry.get(name)


def _can_serve(name: str) -> bool:
    from harness.core import registry
    from harness.core.errors import BackendError

    try:
        return registry.get(name).can_serve()
    except BackendError:  # unknown, or a plugin that cannot be imported here
        return False


@contextmanager
def served(kind: str, command: list[str], port: int, timeout_s: float, log: Log) -> Iterator[str]:
    """Start the server in its own process group, wait until it lists models, always stop it."""
    import httpx

    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryFile(mode="w+") as errlog:
        log(f"starting the {kind} server on 127.0.0.1:{port}")
        from harness.execution.runner import ProcessTree, become_subreaper, child_pids, die_with_parent

        become_subreaper()
        before = child_pids()
        # die_with_parent: a harness killed outright takes its worker down, and the worker its server
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=errlog, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)
        tree = ProcessTree(proc, before)
        previous = signal.getsignal(signal.SIGTERM)
        if threading_main():  # SIGTERM unwinds through the finally below, which stops the server
            signal.signal(signal.SIGTERM, interrupts.raise_on_signal)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                code = proc.poll()
                if code is not None:
                    errlog.seek(0)
                    lines = [ln for ln in errlog.read().splitlines() if ln.strip()]
                    last = lines[-1].strip()[-300:] if lines else "no output"
                    raise TrafficError(f"the {kind} server exited with code {code} before it was ready: {last}")
                try:
                    if httpx.get(f"{url}/models", timeout=2.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TrafficError(f"the {kind} server was not ready after {timeout_s:.0f} s (raise --serve-timeout)")
                tree.snapshot()
                time.sleep(0.25)
            log(f"{kind} server ready")
            yield url
        finally:
            tree.kill(grace_s=10.0)  # a server gets to shut down; whatever it started goes with it
            tree.kill_leftovers()
            if threading_main():
                signal.signal(signal.SIGTERM, previous)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


