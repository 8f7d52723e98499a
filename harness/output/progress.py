"""Worker events on the screen, for every command that runs workers (bench, eval, sweep).

On a terminal, repetitions and request counts are rich progress bars and the other
events log lines above them; elsewhere (a CI log, a pipe) every event is one line,
``[harness] ...``, on stderr. Events are already redacted when they get here.
"""

from __future__ import annotations

import sys

from harness.core.events import CaseFailed, Event, Loading, Phase, RepDone, RequestsDone


def event_line(event: Event, unit: str) -> str | None:
    """The event as one line of text (None for one that has none), under its case or cell."""
    where = f"{unit} {event.index} " if event.index is not None else ""
    if isinstance(event, RepDone):
        return f"{where}{event.test} " + ("warm-up" if event.rep == 0 else f"rep {event.rep}/{event.reps}")
    if isinstance(event, RequestsDone):
        return f"{where}{event.kind} {event.done}/{event.total}"
    if isinstance(event, Phase):
        return f"{where}{event.what}"
    if isinstance(event, Loading):
        return f"{where}loading {event.model}"
    if isinstance(event, CaseFailed):
        return f"{where}failed: {event.cause}"
    return None


class EventView:
    """Shows events as they come; ``close()`` ends the display.

    ``unit`` names what an event's index counts ("case" in a bench, "cell" in a sweep).
    ``failures=False`` leaves failure events to the command's own report of them (a sweep
    logs each cell's outcome). ``live=None`` draws bars exactly when stderr is a terminal.
    """

    def __init__(self, unit: str = "case", failures: bool = True, live: bool | None = None):
        from rich.console import Console

        self.unit, self.failures = unit, failures
        self.console = Console(stderr=True, log_path=False)  # the log line's source would be this file
        self.live = self.console.is_terminal if live is None else live
        self._bars: dict = {}
        self._progress = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, CaseFailed) and not self.failures:
            return
        if not self.live:
            line = event_line(event, self.unit)
            if line:
                print(f"[harness] {line}", file=sys.stderr, flush=True)
            return
        progress = self._started()
        if isinstance(event, RepDone):
            key = (event.index, event.test)
            if key not in self._bars:
                where = f"{self.unit} {event.index} " if event.index is not None else ""
                self._bars[key] = progress.add_task(f"{where}{event.test}", total=event.reps + 1)
            progress.update(self._bars[key], completed=event.rep + 1)
        elif isinstance(event, RequestsDone):
            key = (event.index, event.kind)
            if key not in self._bars:
                self._bars[key] = progress.add_task(event.kind, total=event.total)
            progress.update(self._bars[key], completed=event.done, total=event.total)
        else:
            line = event_line(event, self.unit)
            if line:
                from rich.text import Text

                self.console.log(Text(line, style="red" if isinstance(event, CaseFailed) else ""))

    def _started(self):
        if self._progress is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                      console=self.console, transient=True)
            self._progress.start()
        return self._progress

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
