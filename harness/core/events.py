"""What a worker process tells the harness while it runs: one typed event per line.

A worker (harness.execution.worker for speed, harness.execution.eval_worker for accuracy,
harness.execution.traffic_worker for a load test) writes each event
as one JSON line on its own channel; the parent (harness.execution.runner.run_worker) parses it
back into the same type. Commands render these events (harness.output.progress) and turn them
into records (harness.execution.runner.WorkerReport); neither looks inside an untyped dict.

``index`` names the case of a load group, or the cell of a sweep; an accuracy run has
one case and leaves it None.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Callable, ClassVar, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from harness.core.environment import redact
from harness.core.errors import EXIT_BAD_INPUT
from harness.core.record import RunRecord


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # the worker waits until the parent has handled the event (harness.execution.runner.run_worker
    # answers it on the worker's stdin) before it goes on
    awaits_parent: ClassVar[bool] = False

    index: int | None = None


class Loading(_Event):
    """The worker starts loading its model."""

    event: Literal["loading"] = "loading"
    model: str


class Phase(_Event):
    """A step of an accuracy run begins ("loading model", "scoring", a context resize)."""

    event: Literal["phase"] = "phase"
    what: str


class RepDone(_Event):
    """A speed test finished repetition ``rep`` of ``reps`` (0 is the warm-up)."""

    event: Literal["rep"] = "rep"
    test: str
    rep: int
    reps: int


class RequestsDone(_Event):
    """An accuracy run has answered ``done`` of ``total`` requests of one kind."""

    event: Literal["requests"] = "requests"
    kind: str
    done: int
    total: int


class CaseFailed(_Event):
    """A case ends without a record of its own; the parent records this failure for it."""

    event: Literal["failed"] = "failed"
    cause: str
    detail: str | None = None


class Refused(_Event):
    """The job cannot go on, for a reason the user can fix (bad input, a server that fails
    every request): the worker sends no more records, and the command ends with ``exit_code``
    (harness.core.errors)."""

    event: Literal["refused"] = "refused"
    message: str
    exit_code: int = EXIT_BAD_INPUT


class RecordDone(_Event):
    """A case's record, finished (a partial or failed one is a record too)."""

    event: Literal["record"] = "record"
    record: RunRecord


class PointDone(_Event):
    """A load test's record after one more finished load point, still "incomplete": the
    parent rewrites its file, so a run cut off later keeps every point finished so far."""

    event: Literal["point"] = "point"
    record: RunRecord
    # the file is rewritten before the next point starts, as in one process: the parent's
    # redacting and writing never share the machine with a timed request
    awaits_parent: ClassVar[bool] = True


Event = Annotated[Union[Loading, Phase, RepDone, RequestsDone, CaseFailed, Refused, RecordDone, PointDone],
                  Field(discriminator="event")]
_EVENT = TypeAdapter(Event)


def parse_event(line: str) -> Event:
    """One channel line as its event; pydantic's ValidationError when it is none."""
    return _EVENT.validate_json(line)


class Channel:
    """The worker's side: events go to the process's original stdout, one JSON line each;
    the parent's lines (the job, then an answer to each event that awaits it) come on its
    original stdin.

    Everything else written to stdout from then on (an engine's C code printing to fd 1)
    is moved to stderr, so it can never corrupt the channel; what the worker starts reads
    an empty stdin, never the parent's lines."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._in = os.fdopen(os.dup(0), "r")
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)

    def job_text(self) -> str:
        return self._in.readline()

    def send(self, event: _Event) -> None:
        self._out.write(event.model_dump_json() + "\n")
        self._out.flush()
        if event.awaits_parent:
            self._in.readline()  # "" when the parent is gone: nothing left to wait for


JobT = TypeVar("JobT", bound=BaseModel)


def serve_job(job_type: type[JobT], run: Callable[[JobT, Channel], None],
              answer: Callable[[Exception], "_Event | None"] = lambda exc: None) -> int:
    """A worker process's main: the job from stdin, run with the channel's events. An error
    ``answer`` turns into an event ends the job with that event (exit 0: the harness reads
    it); any other is a crash, its traceback (secrets removed) on stderr, exit 3."""
    channel = Channel()
    job = job_type.model_validate_json(channel.job_text())
    try:
        run(job, channel)
    except Exception as exc:
        event = answer(exc)
        if event is None:
            sys.stderr.write(redact(traceback.format_exc()))
            return 3
        channel.send(event)
    return 0
