"""Runs load groups in worker processes; a failure becomes a record, not an exception.

Each group gets its own process, so its memory peaks are its own and a crash (a
signal, an abort inside the engine, running out of memory) ends only that group:
its unfinished cases are recorded as failed with the cause and the tail of the
worker's error output, and the next group runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from harness import __version__
from harness.config import PerfTests
from harness.environment import fingerprint, redact
from harness.plan import Case, LoadGroup
from harness.record import BackendInfo, Failure, RunRecord
from harness.registry import get as get_backend
from harness.store import write_record
from harness.worker import Job, JobCase

STDERR_TAIL_CHARS = 4000

Event = Callable[[dict], None]


@dataclass
class Outcome:
    records: list[RunRecord] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.records if r.status != "ok"]


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _exit_cause(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
        return f"worker died from {name}{hint}"
    return f"worker exited with code {code}"


def _failure_record(group: LoadGroup, case: Case, run_id: str, failure: Failure, command: list[str]) -> RunRecord:
    cls = get_backend(group.backend)
    return RunRecord(
        run_id=run_id, created_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        harness_version=__version__, command=command, model=case.model, environment=fingerprint(),
        backend=BackendInfo(name=group.backend, version=cls.installed_version(), settings=case.settings.model_dump()),
        status="failed", failures=[failure],
    )


def run_group(group: LoadGroup, tests: PerfTests, out_dir: Path, command: list[str],
              on_event: Event | None = None, timeout_s: float | None = None) -> Outcome:
    run_ids = {c.index: new_run_id() for c in group.cases}
    job = Job(
        backend=group.backend, model=group.model, tests=tests, command=command,
        cases=[JobCase(index=c.index, run_id=run_ids[c.index], settings=c.settings.model_dump()) for c in group.cases],
    )
    outcome = Outcome()
    failures: dict[int, Failure] = {}
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err, text=True, start_new_session=True,
        )
        proc.stdin.write(job.model_dump_json())
        proc.stdin.close()
        try:
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = event.get("event")
                if kind == "record":
                    record = RunRecord.model_validate(event["record"])
                    outcome.records.append(record)
                    outcome.paths.append(write_record(record, out_dir))
                elif kind == "failed":
                    failures[event["index"]] = Failure(cause=event["cause"], detail=event.get("detail"))
                if on_event:
                    on_event(event)
            code = proc.wait(timeout=timeout_s)
        except BaseException:
            # Ctrl-C or a timeout: take the whole worker process group down with us
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
        err.seek(0)
        tail = redact(err.read()[-STDERR_TAIL_CHARS:]) or None
    done = {r.run_id for r in outcome.records}
    for case in group.cases:
        if run_ids[case.index] in done:
            continue
        failure = failures.get(case.index) or Failure(cause=_exit_cause(code) if code else "worker ended without a result")
        failure.stderr_tail = tail
        record = _failure_record(group, case, run_ids[case.index], failure, command)
        outcome.records.append(record)
        outcome.paths.append(write_record(record, out_dir))
        if on_event:
            on_event({"event": "failed", "index": case.index, "cause": failure.cause})
    return outcome


def run_plan(groups: list[LoadGroup], tests: PerfTests, out_dir: Path, command: list[str],
             on_event: Event | None = None) -> Outcome:
    total = Outcome()
    for group in groups:
        result = run_group(group, tests, out_dir, command, on_event)
        total.records.extend(result.records)
        total.paths.extend(result.paths)
    return total
