"""SIGTERM and Ctrl-C as one exception, so one clean-up path serves both.

Raised where Ctrl-C would be, SIGTERM unwinds through the same ``finally`` and
``except KeyboardInterrupt`` blocks: a worker's whole process tree is ended (a vLLM
engine's own processes too, which would otherwise be left running) and a server the run
started is stopped. A sweep installs handlers of its own while it runs (it stops between
cells instead).
"""

from __future__ import annotations

import signal

from harness.core.errors import EXIT_SIGINT, EXIT_SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, as a KeyboardInterrupt."""


# the first signal that interrupted this process (typer turns an uncaught KeyboardInterrupt
# into a bare exit status, so the CLI reads which one it was here)
seen: list[int] = []


def raise_on_signal(signum: int, _frame) -> None:
    seen.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install() -> None:
    signal.signal(signal.SIGTERM, raise_on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where a shell made it ignored
        signal.signal(signal.SIGINT, raise_on_signal)


def exit_code(exc: KeyboardInterrupt) -> int:
    return EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT


def first_seen() -> KeyboardInterrupt | None:
    if not seen:
        return None
    return Terminated() if seen[0] == signal.SIGTERM else KeyboardInterrupt()
