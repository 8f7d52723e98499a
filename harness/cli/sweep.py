"""`harness sweep`: a matrix file's options, for harness.execution.sweep."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from harness.cli.app import FORMAT_HELP, check_format


def sweep(
    file: Path = typer.Argument(..., help="matrix file (YAML): models, backends with settings, perf tests, suites"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for the sweep's results and its sweep.json (default results/runs/sweep-<file name>)"),
    resume: bool = typer.Option(False, "--resume", help="keep cells that finished with the same content, run the others (failed ones again)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check everything and print the plan with a duration estimate; run nothing"),
    fmt: str = typer.Option("md", "--format", "-f", help=FORMAT_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray", help="run the cells as Ray tasks on a cluster: its ADDRESS (host:port), auto (the cluster this machine joined with ray start) or local (one started here for the sweep)"),
) -> None:
    """Run a matrix of models x backends x tests, each cell in its own process, surviving faults."""
    from harness.core.environment import redact
    from harness.output.printers import PRINTERS, SWEEP_PRINTERS, sweep_plan_text
    from harness.execution.sweep import SweepRequest, prepare, run_sweep

    check_format(fmt)
    if ray_address is not None:
        from harness.execution.ray_sweep import import_ray

        import_ray()  # not installed: one line saying how, before any work
    command = ["harness", *sys.argv[1:]]
    plan = prepare(SweepRequest(matrix_file=file, out_dir=out, resume=resume, dry_run=dry_run, command=command))
    if dry_run:
        print(sweep_plan_text(plan, fmt))
        return

    def log(line: str) -> None:
        print(redact(f"[harness] {line}"), file=sys.stderr, flush=True)

    from harness.output.progress import EventView

    for name, why in plan.skipped_backends.items():
        log(f"backend {name} left out of auto: {why}")
    on_event = EventView("cell", failures=False, live=False)
    executor = None
    if ray_address is not None:
        from harness.execution.ray_sweep import connect
        from harness.execution.cells import cell_job

        jobs = [cell_job(c, plan, command) for c in plan.cells if c.key not in plan.resume.kept]
        executor = connect(ray_address, jobs, {c.index: c.label for c in plan.cells}, log)
    try:
        outcome = run_sweep(plan, command, log, on_event, executor=executor)
    finally:
        if executor is not None:
            executor.close()  # a --ray local cluster ends with the sweep
    summary = outcome.summary
    print(SWEEP_PRINTERS[fmt](summary), end="" if fmt == "csv" else "\n")
    measured = [r for r in outcome.records if r.perf or r.accuracy]
    if fmt == "md" and measured:
        print()
        print(PRINTERS[fmt](measured))
    log(f"wrote {outcome.summary_path}")
    if summary.interrupted_by:
        raise typer.Exit(143 if summary.interrupted_by == "SIGTERM" else 130)
    if any(c.status != "ok" for c in summary.cells):
        raise typer.Exit(1)


