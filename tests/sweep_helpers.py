"""Helpers for the sweep and fault tests: a `harness sweep` process watched line by line."""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
FAULT_PLUGINS = Path(__file__).resolve().parent / "fault_plugins"


class LiveCli:
    """`python -m harness.cli ARGS` running in the background; its stderr read as it comes."""

    def __init__(self, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stdout: list[str] = []
        threading.Thread(target=self._pump_err, daemon=True).start()
        threading.Thread(target=lambda: self._stdout.append(self.proc.stdout.read()), daemon=True).start()

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 120) -> str:
        """Block until a stderr line matches; fail with everything seen if it never does."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        for line in self.lines:
            if rx.search(line):
                return line
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if rx.search(line):
                return line
        raise AssertionError(f"never saw /{pattern}/ on stderr; got:\n{''.join(self.lines)}")

    def workers(self, module: str = "harness.execution.worker") -> list[psutil.Process]:
        """The worker processes (``python -m module``) this command runs now."""
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if module in k.cmdline()]

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        while True:
            line = self._queue.get(timeout=10)
            if line is None:
                break
            self.lines.append(line)
        for _ in range(100):
            if self._stdout:
                break
            time.sleep(0.05)
        return code, "".join(self._stdout), "".join(self.lines)


def wait_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """True when the process no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def result_files(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*.json") if p.name != "sweep.json")


def all_files(*dirs: Path) -> list[Path]:
    return [p for d in dirs for p in d.rglob("*") if p.is_file()]
