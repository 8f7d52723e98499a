"""`harness load`: the load test runs in a worker process (harness.execution.traffic_worker);
its record is written here, rewritten after every load point the worker reports.

The options are checked here before any process starts (traffic_options.validate); what
needs the server (the key, the model name, the warm-up) is checked in the worker, before
the first timed request, and comes back as a ``refused`` event. A run that cannot measure
anything leaves no result file; once a load point has finished, it is on disk (PointStore),
whatever happens to the rest of the run: a failing point, Ctrl-C, or the worker's death.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import HarnessError, MeasurementFailed, WorkerBug
from harness.core.events import Event, PointDone, Refused
from harness.core.record import Failure, RunRecord
from harness.execution import interrupts
from harness.execution.runner import OnEvent, run_job
from harness.measurement.traffic_options import TrafficRequest, validate


@dataclass
class TrafficOutcome:
    record: RunRecord
    path: Path


def run_traffic(req: TrafficRequest, on_event: OnEvent | None = None) -> TrafficOutcome:
    """The load test of ``req``, its record written to ``req.out_dir``; a HarnessError (or the
    KeyboardInterrupt of a signal) says why it did not finish, and ``kept`` on it what of
    it is on disk."""
    validate(req)
    store = PointStore(req.out_dir)

    def collect(event: Event) -> None:
        if isinstance(event, PointDone):
            store.write(event.record)
        if on_event:
            on_event(event)

    worker_tail = None  # the worker's last error output, when it ended without its record
    try:
        report = run_job("harness.execution.traffic_worker", req, collect)
        if report.refused:
            raise _refused(report.refused)
        if not report.records:
            failure = report.failure()
            worker_tail = failure.stderr_tail
            raise _ended(failure, crashed=report.exit.code == 3)
        return TrafficOutcome(report.records[0], store.write(report.records[0]))
    except BaseException as exc:
        store.stopped(exc, worker_tail)
        raise


def _ended(failure: Failure, crashed: bool) -> Exception:
    """Why the worker ended without its record: a bug (exit 3: its traceback on stderr) is an
    internal error; a kill, a signal or running out of memory is a failed measurement."""
    tail = (failure.stderr_tail or "").strip()
    last = tail.splitlines()[-1][-300:] if tail else ""
    if crashed:
        return WorkerBug(f"the load test's worker: {last or failure.cause}",
                         f"the load test's worker (harness.execution.traffic_worker):\n{tail}")
    return MeasurementFailed(f"the load test's worker ended without its record: {failure.cause}"
                             + (f"; its last error output: {last}" if last else ""))


def _refused(event: Refused) -> HarnessError:
    error = HarnessError(event.message)
    error.exit_code = event.exit_code
    return error


class PointStore:
    """A load test's record on disk, rewritten (atomically) after every load point.

    Until the last point it has status "incomplete", so a harness killed outright leaves
    every finished point behind in a file that says what it is. A failure or an interrupt
    after the first point rewrites it as "partial" with the cause; before the first point
    there is nothing to keep and no file is written.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.record: RunRecord | None = None  # as the worker last sent it
        self.path: Path | None = None  # set by the first write that succeeds
        self.points_on_disk = 0

    def write(self, record: RunRecord) -> Path:
        from harness.output.store import write_record

        self.record = record
        self.path = write_record(record, self.out_dir)
        self.points_on_disk = len(record.load)
        return self.path

    def stopped(self, exc: BaseException, stderr_tail: str | None = None) -> None:
        """The run ends early: the finished points stay, with why the rest are missing."""
        if self.record is None:  # no load point has finished
            return
        if isinstance(exc, KeyboardInterrupt):
            cause = f"interrupted ({'SIGTERM' if isinstance(exc, interrupts.Terminated) else 'SIGINT'})"
        else:
            cause = str(exc) or type(exc).__name__
        n = len(self.record.load)
        self.record.failures.append(Failure(cause=f"stopped after {n} load point{'s' if n > 1 else ''}: {cause}",
                                            stderr_tail=stderr_tail))
        self.record.status = "partial"
        try:
            self.write(self.record)
        except (OSError, HarnessError):
            pass  # the file as the last write left it ("incomplete") stays; the first error is the one shown
        if self.path is not None:  # the CLI's one line says where the finished work is
            n = self.points_on_disk
            exc.kept = f"the {n} finished load point{'s are' if n > 1 else ' is'} kept in {self.path}"
