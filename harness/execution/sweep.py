"""`harness sweep FILE.yaml`: a matrix of models x backends x work, run cell by cell.

A matrix file names models, backends with their settings (lists multiply, as on the
command line), perf tests and accuracy suites. It expands into cells: one model, one
backend with one value of every setting, and one piece of work (the perf tests, or one
suite). Before the first cell runs, all of it is checked: every model resolves and passes
pre-flight, every backend is installed and knows its settings, every suite exists, the
results folder is writable with room to spare. Bad input is one line naming the cell and
nothing runs; in particular a wrong model path in the middle of the matrix is caught here,
before hours of earlier cells have been spent (a model file that disappears or changes
after pre-flight fails only its own cells, at their turn).

Each cell runs in its own worker process under a wall-clock timeout (runner.run_worker:
harness.execution.worker for perf cells, harness eval's harness.execution.eval_worker for suite cells).
A crash, a timeout or running out of memory becomes that cell's failure, with the cause
and the tail of its error output, and the sweep goes on. SIGINT or SIGTERM stop the
sweep: the running cell's processes are ended, it is marked interrupted, finished cells
stay. The summary (``sweep.json`` beside the cells' result files, kind "sweep") is
rewritten atomically after every cell, so it is never behind by more than the running cell.

``--resume`` keeps every cell whose content (model sha256, backend and its version,
settings, work, harness version) matches a cell that finished ok, after re-reading its
result file (a damaged one is refused by name), and runs the rest. A failed cell's old
result file is removed once its rerun has written a new one, so the folder holds one
result per cell; results of cells no longer in the matrix are kept and listed in
``superseded_files``."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from harness import __version__
from harness.core.environment import fingerprint
from harness.core.errors import ConfigError
from harness.core.models import ModelInfo
from harness.core.record import RunRecord, SweepCell, SweepRecord
from harness.core.record_factory import new_run_id, utc_now
from harness.execution.cell_estimates import measured_speeds, estimate
from harness.execution.cells import CellJob, CellResult, LocalCells, cell_job, unrun_record
from harness.execution.matrix import Cell, Matrix, backend_entries, expand, load_matrix
from harness.execution.runner import OnEvent
from harness.execution.sweep_folder import ResumeState, check_out_dir, default_out_dir, plan_resume
from harness.output.store import SWEEP_SUMMARY_NAME as SUMMARY_NAME, read_record, write_record, write_sweep


SUMMARY_TAIL_CHARS = 1500  # of the stderr tail, in the summary (the cell's record keeps 4000)


class StopOnSignal:
    """SIGINT and SIGTERM ask the sweep to stop; runner.run_group polls the answer.

    Nothing is raised from the handler, so a stop can never land between writing a
    result file and recording it in the summary.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame) -> None:
        self.reason = self.reason or signal.Signals(signum).name

    def __enter__(self) -> "StopOnSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __call__(self) -> str | None:
        return self.reason


class SweepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    matrix_file: Path
    out_dir: Path | None = None
    resume: bool = False
    dry_run: bool = False
    command: list[str] = []


@dataclass
class SweepPlan:
    matrix_file: Path
    matrix: Matrix
    matrix_sha256: str
    matrix_data: dict
    cells: list[Cell]
    out_dir: Path
    resume: ResumeState
    model_stamps: dict[str, tuple[int, int]]  # model path -> (size, mtime) as pre-flight saw it
    skipped_backends: dict[str, str] = field(default_factory=dict)  # what `auto` left out, and why

    @property
    def total_estimate_s(self) -> float:
        return sum(c.estimate_s or 0 for c in self.cells if c.key not in self.resume.kept)

    @property
    def unknown_estimates(self) -> int:
        return sum(1 for c in self.cells if c.estimate_s is None and c.key not in self.resume.kept)


@dataclass
class SweepOutcome:
    summary: SweepRecord
    summary_path: Path
    records: list[RunRecord]


def prepare(request: SweepRequest) -> SweepPlan:
    """Parse, expand and check everything; write nothing."""
    matrix, sha, data = load_matrix(request.matrix_file)
    cells = expand(matrix, request.matrix_file)
    stamps: dict[str, tuple[int, int]] = {}
    for cell in cells:
        if cell.model.path not in stamps:
            try:
                st = Path(cell.model.path).stat()
            except OSError as exc:
                raise ConfigError(f"cell {cell.index} ({cell.label}): model file {cell.model.path}: {exc.strerror}") from None
            stamps[cell.model.path] = (st.st_size, st.st_mtime_ns)
    out_dir = request.out_dir or default_out_dir(request.matrix_file)
    check_out_dir(out_dir, matrix.min_free_disk_mib, create=False)
    summary_path = out_dir / SUMMARY_NAME
    if summary_path.exists() and not request.resume:
        raise ConfigError(f"{out_dir} already holds a sweep ({summary_path}); continue it with --resume, "
                          "or give another --out")
    resume = plan_resume(cells, out_dir) if request.resume else ResumeState()
    measured = measured_speeds(out_dir)
    for cell in cells:
        cell.estimate_s, cell.estimate_source = estimate(cell, measured)
    skipped = backend_entries(matrix, request.matrix_file)[1]
    return SweepPlan(request.matrix_file, matrix, sha, data, cells, out_dir, resume, stamps, skipped)


def _summary_cell(cell: Cell) -> SweepCell:
    return SweepCell(index=cell.index, key=cell.key, label=cell.label, kind=cell.kind, model_ref=cell.model.ref,
                     model_sha256=cell.model.sha256, backend=cell.backend, backend_version=cell.backend_version,
                     settings=cell.settings.model_dump(mode="json"),
                     perf=cell.tests.model_dump() if cell.tests else None,
                     suite=cell.suite.name if cell.suite else None, timeout_s=cell.timeout_s)


def _model_unchanged(model: ModelInfo, stamps: dict[str, tuple[int, int]]) -> str | None:
    """Why a model file can no longer be used as pre-flight saw it, or None."""
    path = Path(model.path)
    try:
        st = path.stat()
    except OSError:
        return f"model file missing since pre-flight: {path}"
    if (st.st_size, st.st_mtime_ns) != stamps[model.path]:
        return f"model file changed since pre-flight (its sha256 would not match the record): {path}"
    return None


def run_sweep(plan: SweepPlan, command: list[str], log: Callable[[str], None],
              on_event: OnEvent | None = None, executor: Any = None) -> SweepOutcome:
    """Run the cells that are not kept, through ``executor`` (LocalCells by default; a
    harness.execution.ray_sweep.RayCells spreads them over a cluster). Whatever runs them, their
    records are written here, one by one as they come back, and so is the summary."""
    out_dir = plan.out_dir
    check_out_dir(out_dir, plan.matrix.min_free_disk_mib, create=True)
    executor = executor or LocalCells(on_event, out_dir)
    summary_path = out_dir / SUMMARY_NAME
    previous = plan.resume.previous
    summary = SweepRecord(
        sweep_id=previous.sweep_id if previous else new_run_id(),
        created_at=previous.created_at if previous else utc_now(), updated_at=utc_now(),
        harness_version=__version__, command=command, matrix_file=str(plan.matrix_file),
        matrix_sha256=plan.matrix_sha256, matrix=plan.matrix_data, environment=fingerprint(),
        superseded_files=plan.resume.superseded,
    )
    for cell in plan.cells:
        kept = plan.resume.kept.get(cell.key)
        if kept:
            summary.cells.append(kept.model_copy(update={"index": cell.index, "label": cell.label, "reused": True}))
        else:
            earlier = plan.resume.rerun.get(cell.key)
            summary.cells.append(_summary_cell(cell).model_copy(update={"attempts": earlier.attempts if earlier else 0}))
    write_sweep(summary, summary_path)
    stamps = plan.model_stamps
    n = len(plan.cells)
    by_index = {cell.index: (cell, entry) for cell, entry in zip(plan.cells, summary.cells)}
    jobs = []
    for cell, entry in zip(plan.cells, summary.cells):
        if entry.reused:
            log(f"cell {cell.index}/{n} {cell.label}: kept from an earlier run ({entry.result_file})")
        else:
            jobs.append(cell_job(cell, plan, command))

    def begin(job: CellJob) -> CellResult | None:
        """The cell is about to run: say so in the summary (a sweep killed meanwhile reruns
        it on --resume); a model file changed since pre-flight fails it here."""
        cell, entry = by_index[job.index]
        log(f"cell {cell.index}/{n} {cell.label}: running (timeout {cell.timeout_s:g} s)")
        entry.attempts += 1
        entry.status = "running"
        write_sweep(summary, summary_path)
        problem = _model_unchanged(cell.model, stamps)
        return CellResult(record=unrun_record(job, problem)) if problem else None

    with StopOnSignal() as stop:
        for job, result in executor.run(jobs, begin, stop, log):
            cell, entry = by_index[job.index]
            entry.node = result.node
            if result.stopped:
                entry.status, entry.cause = "interrupted", f"stopped by {result.stopped}"
                write_sweep(summary, summary_path)
                log(f"cell {cell.index}/{n} {cell.label}: interrupted by {result.stopped}")
                continue
            record = result.record
            path = write_record(record, out_dir)
            earlier = plan.resume.rerun.get(cell.key)
            entry.status = record.status
            entry.cause = record.failures[0].cause if record.failures else None
            tail = next((f.stderr_tail for f in record.failures if f.stderr_tail), None)
            entry.stderr_tail = tail[-SUMMARY_TAIL_CHARS:] if tail else None
            entry.result_file = path.name
            entry.run_id, entry.finished_at = record.run_id, utc_now()
            entry.wall_s = result.wall_s
            summary.updated_at = utc_now()
            write_sweep(summary, summary_path)
            if earlier and earlier.result_file and earlier.result_file != path.name:
                # the rerun's result replaces the failed one: one result per cell in the folder
                (out_dir / earlier.result_file).unlink(missing_ok=True)
            where = f" on {result.node['hostname']} ({result.node['ip']})" if result.node else ""
            log(f"cell {cell.index}/{n} {cell.label}: {record.status}{where}" + (f": {entry.cause}" if entry.cause else ""))
        unfinished = any(c.status in ("pending", "running", "interrupted") for c in summary.cells)
        summary.interrupted_by = stop() if unfinished else None
    summary.status = "interrupted" if summary.interrupted_by else "complete"
    summary.updated_at = utc_now()
    write_sweep(summary, summary_path)
    # every cell's record as it is on disk (redacted), in matrix order
    records = [read_record(out_dir / c.result_file) for c in summary.cells if c.result_file]
    return SweepOutcome(summary, summary_path, records)
