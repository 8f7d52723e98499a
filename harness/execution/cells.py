"""One sweep cell as a job a process can run, here or on a Ray node, and the local executor that runs
cells one after another, each in a worker process of its own under its timeout."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict

from harness.core import registry
from harness.core.config import PerfTests
from harness.core.errors import HarnessError
from harness.core.events import Event, RequestsDone
from harness.core.models import ModelInfo
from harness.core.record import Failure, RunRecord
from harness.core.record_factory import failed_record
from harness.execution.matrix import Cell, SuiteSpec
from harness.execution.plan import Case, LoadGroup
from harness.execution.runner import OnEvent, run_group, run_job
from harness.measurement.meters import now_ns

if TYPE_CHECKING:
    from harness.execution.sweep import SweepPlan


class CellJob(BaseModel):
    """One cell as the process that runs it needs it: plain data, so that it can travel to
    another node of a Ray cluster (harness.execution.ray_sweep) as well as run here."""

    model_config = ConfigDict(extra="forbid")

    index: int
    kind: Literal["perf", "suite"]
    model: ModelInfo
    backend: str
    settings: dict[str, Any]
    timeout_s: float
    tests: PerfTests | None = None
    suite: SuiteSpec | None = None
    allow_code_execution: bool = False
    cache: bool = True  # a suite cell answers a request asked before from the request cache
    command: list[str] = []


class CellResult(BaseModel):
    """What running a cell gave: its record (a failure is a record too), or the reason it was
    stopped before it had one; nothing of it is written yet."""

    record: RunRecord | None = None
    stopped: str | None = None
    wall_s: float | None = None  # the whole cell: process start, load, work
    node: dict[str, str] | None = None  # the Ray node that ran it; None here


def cell_job(cell: Cell, plan: "SweepPlan", command: list[str]) -> CellJob:
    return CellJob(index=cell.index, kind=cell.kind, model=cell.model, backend=cell.backend,
                   settings=cell.settings.model_dump(mode="json"), timeout_s=cell.timeout_s, tests=cell.tests,
                   suite=cell.suite, allow_code_execution=plan.matrix.allow_code_execution, cache=cell.cache,
                   command=command)


def unrun_record(job: CellJob, failure: Failure | str, run_id: str | None = None) -> RunRecord:
    """The record of a cell that ended without one of its own (it never started, or its
    process gave none). Its environment is that of the machine making it: the node's."""
    return failed_record(failure, run_id=run_id, backend=job.backend, settings=job.settings, model=job.model,
                         command=job.command)


class _CellEvents:
    """A cell's worker events for the sweep's screen: each under the cell's index, an
    accuracy run's request counts a line per quarter, not per request."""

    def __init__(self, index: int, on_event: OnEvent | None):
        self.index, self.on_event = index, on_event
        self.shown: dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        if self.on_event is None:
            return
        if isinstance(event, RequestsDone):
            if not event.total:
                return
            quarter = 4 * event.done // event.total
            if quarter <= self.shown.get(event.kind, 0):
                return
            self.shown[event.kind] = quarter
        self.on_event(event.model_copy(update={"index": self.index}))


def _execute_suite_cell(job: CellJob, on_event: OnEvent | None, stop: Callable[[], str | None] | None,
                        scratch_dir: Path) -> CellResult:
    """An accuracy cell: harness eval's own job and worker (harness.commands.evaluation), with the
    cell's settings, timeout and the sweep's stop."""
    from harness.commands.evaluation import EvalRequest, check_lm_eval, request_cache_prefix
    from harness.commands.evaluation import prepare as prepare_eval

    spec = job.suite
    # out_dir only passes eval's folder check: a sweep cell logs no samples, its record comes back
    request = EvalRequest(model=job.model.path, backend=job.backend, suite=spec.suite,
                          tasks=",".join(spec.tasks) if spec.tasks else None, limit=spec.limit,
                          out_dir=scratch_dir, allow_code_execution=job.allow_code_execution,
                          use_cache=job.cache, command=job.command, timeout_s=job.timeout_s)
    try:
        eval_job = prepare_eval(request)
    except HarnessError as exc:
        return CellResult(record=unrun_record(job, f"evaluation refused: {exc}"))
    # the matrix's model reference and every setting of the cell, not only the thread count
    # `harness eval` takes; the request cache is keyed by exactly these settings
    eval_job.model = job.model
    eval_job.settings = dict(job.settings)
    if eval_job.request_cache:
        eval_job.request_cache = str(request_cache_prefix(job.model, registry.get(job.backend), eval_job.settings,
                                                          check_lm_eval(), eval_job.apply_chat_template))
    report = run_job("harness.execution.eval_worker", eval_job, _CellEvents(job.index, on_event), job.timeout_s, stop)
    if report.stopped:
        return CellResult(stopped=report.stopped)
    if report.records:
        return CellResult(record=report.records[0])
    if report.refused and report.exit.ended_by is None:
        failure = Failure(cause=f"evaluation refused: {report.refused.message}", stderr_tail=report.exit.stderr_tail)
    else:
        failure = report.failure()
    return CellResult(record=unrun_record(job, failure, run_id=eval_job.run_id))


def execute_cell(job: CellJob, on_event: OnEvent | None = None, stop: Callable[[], str | None] | None = None,
                 scratch_dir: Path | None = None) -> CellResult:
    """Run one cell in a worker process of its own under the cell's timeout; a crash, a
    timeout or running out of memory becomes its failure record. Writes no result file:
    the caller does (a local sweep here; on a Ray cluster the driver, once the record is back).
    ``stop`` ends it early (see runner.run_worker); without one, an exception (a Ray
    cancellation's KeyboardInterrupt) does, taking the worker and all it started with it."""
    started = now_ns()
    if job.kind == "suite":
        result = _execute_suite_cell(job, on_event, stop, scratch_dir or Path(tempfile.gettempdir()))
    else:
        settings = registry.get(job.backend).Settings(**job.settings)
        group = LoadGroup(backend=job.backend, model=job.model,
                          cases=[Case(index=job.index, model=job.model, settings=settings)])
        outcome = run_group(group, job.tests, None, job.command, _CellEvents(job.index, on_event),
                            timeout_s=job.timeout_s, stop=stop)
        result = CellResult(stopped=outcome.stopped) if outcome.stopped else CellResult(record=outcome.records[0])
    result.wall_s = (now_ns() - started) / 1e9
    return result


Begin = Callable[[CellJob], "CellResult | None"]


class LocalCells:
    """The cells one after another on this machine, each in its own worker process."""

    def __init__(self, on_event: OnEvent | None, scratch_dir: Path):
        self.on_event = on_event
        self.scratch_dir = scratch_dir

    def run(self, jobs: list[CellJob], begin: Begin, stop: Callable[[], str | None],
            log: Callable[[str], None]) -> Iterator[tuple[CellJob, CellResult]]:
        for job in jobs:
            if stop():
                return
            result = begin(job) or execute_cell(job, self.on_event, stop, self.scratch_dir)
            yield job, result
            if result.stopped:
                return


