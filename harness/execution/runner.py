"""Runs load groups in worker processes; a failure becomes a record, not an exception.

Each group gets its own process, so its memory peaks are its own and a crash (a
signal, an abort inside the engine, running out of memory) ends only that group:
its unfinished cases are recorded as failed with the cause and the tail of the
worker's error output, and the next group runs.

A worker runs in its own session (its own process group) under an optional wall-clock
timeout. When it times out, is stopped, or ends, nothing it started may outlive it:
its process group is signalled, and so is every descendant seen while it ran (a server
it started in a session of its own leaves the group, not the tree).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil
from pydantic import BaseModel, ValidationError

from harness.core.config import PerfTests
from harness.core.environment import redact
from harness.core.errors import OutputFileError
from harness.core.events import CaseFailed, Event, RecordDone, Refused, parse_event
from harness.measurement.meters import now_ns
from harness.execution.plan import LoadGroup
from harness.core.record import Failure, RunRecord
from harness.core.record_factory import failed_record, new_run_id
from harness.output.store import write_record
from harness.execution.worker import Job, JobCase

STDERR_TAIL_CHARS = 4000

OnEvent = Callable[[Event], None]


@dataclass
class Outcome:
    records: list[RunRecord] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    stopped: str | None = None  # why the run was stopped before its end (a signal's name), if it was
    # records measured but not written (a full disk mid-run): the CLI prints them, then the error
    unsaved: list = field(default_factory=list)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status != "ok"]

    def keeper(self, out_dir: Path | None) -> Callable[[RunRecord], None]:
        """Keeps each record as it comes, written to ``out_dir`` at once where there is one;
        a record that cannot be written is kept unsaved and the measurement goes on (the
        CLI prints what was measured, then the error)."""
        def keep(record: RunRecord) -> None:
            self.records.append(record)
            if out_dir is None:
                return
            try:
                self.paths.append(write_record(record, out_dir))
            except OutputFileError as exc:
                self.unsaved.append(exc)
        return keep


# what engines print when a device or host allocation fails, before they abort
GPU_OOM = re.compile(r"(?i)(CUDA out of memory|OutOfMemoryError|cudaMalloc failed|CUDA error: out of memory|"
                     r"hipMalloc failed|HIP out of memory|failed to allocate (CUDA|Metal|Vulkan|ROCm)[^\n]*buffer|"
                     r"ggml_backend_\w+_buffer_type_alloc_buffer: allocating [^\n]* failed)")
HOST_OOM = re.compile(r"(MemoryError|std::bad_alloc|Cannot allocate memory|out of memory)")


def oom_kill_count() -> int | None:
    """Processes the kernel's out-of-memory killer has ended in this cgroup, or None if unreadable."""
    for path, key in (("/sys/fs/cgroup/memory.events", "oom_kill"), ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill")):
        try:
            for line in Path(path).read_text().splitlines():
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def exit_cause(code: int, stderr_tail: str | None = None, oom_killed: bool = False) -> str:
    """Why a worker ended without its results, from its exit status and its last words."""
    tail = stderr_tail or ""
    if GPU_OOM.search(tail):
        what = "out of GPU memory"
    elif code == -signal.SIGKILL and oom_killed:
        return "out of memory: the kernel's OOM killer ended the worker (SIGKILL)"
    elif HOST_OOM.search(tail):
        what = "out of memory"
    else:
        what = None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if what:
            return f"{what}: worker died from {name}"
        hint = " (killed from outside, or out of memory)" if -code == signal.SIGKILL else ""
        return f"worker died from {name}{hint}"
    return f"{what}: worker exited with code {code}" if what else f"worker exited with code {code}"


class ProcessTree:
    """A worker and every process it starts, so all can be ended.

    Three nets: the worker's process group (its session); every descendant seen while it
    runs (a server that made a session of its own leaves the group, not the tree); and,
    on Linux, this process as a child subreaper, so a descendant orphaned by the worker's
    end is re-parented here instead of to init and can still be found.
    """

    def __init__(self, proc: subprocess.Popen, children_before: set[int]):
        self.proc = proc
        self.children_before = children_before
        self.seen: dict[int, psutil.Process] = {}

    def snapshot(self) -> None:
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def _signal_all(self, sig: int) -> list[psutil.Process]:
        try:
            os.killpg(self.proc.pid, sig)  # the worker's session: pgid == its pid
        except (ProcessLookupError, PermissionError):
            pass
        alive = []
        for p in self.seen.values():
            try:
                p.send_signal(sig)  # psutil refuses a pid that was reused since we saw it
                alive.append(p)
            except psutil.Error:
                pass
        return alive

    def kill(self, grace_s: float = 2.0) -> None:
        """SIGTERM (servers get to shut down), then SIGKILL whatever is left after grace_s."""
        self.snapshot()
        alive = self._signal_all(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        psutil.wait_procs(alive, timeout=grace_s if self.proc.poll() is None else 0.5)
        self._signal_all(signal.SIGKILL)
        self.proc.wait()

    def kill_leftovers(self) -> None:
        """After the worker ended: anything it left running goes too."""
        self._signal_all(signal.SIGKILL)
        for _ in range(5):  # killing an orphan may orphan its own children: they come here next
            orphans = [c for c in _children() if c.pid not in self.children_before and c.pid != self.proc.pid]
            if not orphans:
                return
            for p in orphans:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(orphans, timeout=2)  # they are our children now: this reaps them


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children()
    except psutil.Error:
        return []


def child_pids() -> set[int]:
    """This process's children now: what a ProcessTree started later must not take down."""
    return {c.pid for c in _children()}


_subreaper = False


def become_subreaper() -> None:
    """Orphaned descendants of our workers become our children (Linux), not init's."""
    global _subreaper
    if not _subreaper and _PRCTL is not None:
        PR_SET_CHILD_SUBREAPER = 36
        _PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        _subreaper = True


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# resolved here, in the parent: between fork and exec the child only makes the call
_PRCTL = _prctl()
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child (a worker, a server), before exec: if the process that started it is killed
    (SIGKILL leaves it no chance to clean up), the kernel kills the child too instead of
    leaving it running in its own session. The thread that started the child must outlive
    it. Linux only; elsewhere a no-op."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


@dataclass
class WorkerExit:
    code: int | None
    stderr_tail: str | None  # redacted
    ended_by: str | None  # "timeout", the stop reason, or None when the worker ended by itself
    oom_killed: bool  # the kernel's OOM killer ended a process of this cgroup meanwhile

    def cause(self, timeout_s: float | None) -> str:
        if self.ended_by == "timeout":
            return f"timed out after {timeout_s:g} s (wall clock); the worker and every process it started were killed"
        if self.ended_by:
            return f"stopped by {self.ended_by}"
        return exit_cause(self.code, self.stderr_tail, self.oom_killed) if self.code else "worker ended without a result"


def run_worker(module: str, job_json: str, on_event: OnEvent, timeout_s: float | None = None,
               stop: Callable[[], str | None] | None = None) -> WorkerExit:
    """``python -m MODULE`` in a session of its own with the job on stdin (one line); its events
    (harness.core.events, redacted) go to ``on_event`` as they come, and an event that awaits
    the parent is answered on stdin once ``on_event`` has handled it.

    ``timeout_s`` bounds its wall-clock time; ``stop`` is polled while it runs and, when it
    returns a reason (say "SIGINT"), ends it early. Either way the worker and everything it
    started are ended (SIGTERM, then SIGKILL), and so is anything it leaves behind.
    """
    ended_by: str | None = None
    oom_before = oom_kill_count()
    with tempfile.TemporaryFile(mode="w+") as err:
        become_subreaper()
        before = child_pids()
        proc = subprocess.Popen(
            [sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err, text=True, start_new_session=True, preexec_fn=die_with_parent,
        )
        tree = ProcessTree(proc, before)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:  # a thread, so the wait below can watch the clock
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        def reply(text: str) -> None:
            try:
                proc.stdin.write(text)
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass  # the worker has ended (or its stdin is closed); its exit status says why

        threading.Thread(target=pump, daemon=True).start()
        deadline = now_ns() + int(timeout_s * 1e9) if timeout_s else None
        try:
            reply(job_json + "\n")  # one line: model_dump_json writes none inside
            while True:
                reason = stop() if stop else None
                if reason:
                    ended_by = reason
                    break
                left = (deadline - now_ns()) / 1e9 if deadline else 0.25
                if left <= 0:
                    ended_by = "timeout"
                    break
                try:
                    line = lines.get(timeout=min(0.25, left))
                except queue.Empty:
                    tree.snapshot()
                    continue
                if line is None:
                    break
                try:
                    event = parse_event(redact(line))  # so no secret reaches a record, a file or the screen
                except ValidationError:
                    continue
                on_event(event)
                if event.awaits_parent:
                    reply("\n")
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            if ended_by is None:
                # stdout is closed; a worker that hangs on after that still meets the deadline
                left = (deadline - now_ns()) / 1e9 if deadline else None
                try:
                    proc.wait(timeout=max(left, 0.01) if left is not None else None)
                except subprocess.TimeoutExpired:
                    ended_by = "timeout"
            if ended_by:
                tree.kill()
            tree.kill_leftovers()
        except BaseException:
            # Ctrl-C or anything unexpected: take the worker and all it started down with us
            tree.kill(grace_s=0.5)
            raise
        err.seek(0)
        tail = redact(err.read()[-STDERR_TAIL_CHARS:]) or None
    oom_after = oom_kill_count()
    return WorkerExit(code=proc.returncode, stderr_tail=tail, ended_by=ended_by,
                      oom_killed=oom_before is not None and oom_after is not None and oom_after > oom_before)


@dataclass
class WorkerReport:
    """What one worker's events said, and how it ended: the one place where a worker's
    events become records, for bench cases, accuracy runs and sweep cells alike."""

    timeout_s: float | None
    records: list[RunRecord] = field(default_factory=list)
    failures: dict[int | None, Failure] = field(default_factory=dict)  # by case index
    refused: Refused | None = None  # the first refusal
    exit: WorkerExit | None = None

    def failure(self, index: int | None = None) -> Failure:
        """Why case ``index`` has no record: what the worker said of it, unless the worker
        was cut off (a timeout); else how the worker ended. With its last error output."""
        said = self.failures.get(index) if self.exit.ended_by is None else None
        failure = (said.model_copy() if said else None) or Failure(cause=self.exit.cause(self.timeout_s))
        failure.stderr_tail = self.exit.stderr_tail
        return failure

    @property
    def stopped(self) -> str | None:
        """The stop reason (a signal's name) when the run was stopped before its end."""
        return self.exit.ended_by if self.exit.ended_by not in (None, "timeout") else None


def run_job(module: str, job: BaseModel, on_event: OnEvent | None = None, timeout_s: float | None = None,
            stop: Callable[[], str | None] | None = None,
            on_record: Callable[[RunRecord], None] | None = None) -> WorkerReport:
    """Run ``job`` in a ``python -m MODULE`` worker (run_worker) and collect what it says:
    each finished record (also given to ``on_record`` as it comes), each case's failure,
    a refusal. Every event also goes to ``on_event``, for the screen."""
    report = WorkerReport(timeout_s=timeout_s)

    def collect(event: Event) -> None:
        if isinstance(event, RecordDone):
            report.records.append(event.record)
            if on_record:
                on_record(event.record)
        elif isinstance(event, CaseFailed):
            report.failures.setdefault(event.index, Failure(cause=event.cause, detail=event.detail))
        elif isinstance(event, Refused):
            report.refused = report.refused or event
        if on_event:
            on_event(event)

    report.exit = run_worker(module, job.model_dump_json(), collect, timeout_s, stop)
    return report


def run_group(group: LoadGroup, tests: PerfTests, out_dir: Path | None, command: list[str],
              on_event: OnEvent | None = None, timeout_s: float | None = None,
              stop: Callable[[], str | None] | None = None) -> Outcome:
    """Run one load group in a worker process and record every case, finished or not.

    A timeout records the unfinished cases as timed out; a stop (see run_worker) leaves
    them without a record and ``Outcome.stopped`` says why. Each record is written to
    ``out_dir`` as it comes; with ``out_dir`` None they are only returned (a sweep cell,
    whose records the sweep writes, on this machine or back from a Ray node).
    """
    run_ids = {c.index: new_run_id() for c in group.cases}
    job = Job(
        backend=group.backend, model=group.model, tests=tests, command=command,
        cases=[JobCase(index=c.index, run_id=run_ids[c.index], settings=c.settings.model_dump()) for c in group.cases],
    )
    outcome = Outcome()
    keep = outcome.keeper(out_dir)
    report = run_job("harness.execution.worker", job, on_event, timeout_s, stop, on_record=keep)
    if report.stopped:
        outcome.stopped = report.stopped
        return outcome
    done = {r.run_id for r in report.records}
    for case in group.cases:
        if run_ids[case.index] in done:
            continue
        failure = report.failure(case.index)
        keep(failed_record(failure, run_id=run_ids[case.index], backend=group.backend,
                           settings=case.settings.model_dump(), model=case.model, command=command))
        if on_event:
            on_event(CaseFailed(index=case.index, cause=failure.cause))
    return outcome


def run_plan(groups: list[LoadGroup], tests: PerfTests, out_dir: Path, command: list[str],
             on_event: OnEvent | None = None) -> Outcome:
    total = Outcome()
    for group in groups:
        result = run_group(group, tests, out_dir, command, on_event)
        total.records.extend(result.records)
        total.paths.extend(result.paths)
        total.unsaved.extend(result.unsaved)
    return total
