"""`make nightly`: a matrix file run as a sweep, kept as a history, compared and reported.

    python -m harness.commands.nightly --matrix benchmarks/nightly.yaml \\
        --out results/nightly --history results/history --fail-on tg_tps:-10%

Steps:
  1. the matrix (benchmarks/nightly.yaml: the bundled models on every installed backend that
     runs unattended, `backends: [auto]`, their speed and the quick suite with `cache: false`,
     since a night measures and never recalls an earlier night's answers) run as
     `harness sweep` runs it: each cell in its own worker process, a failing cell that
     cell's failure, into OUT/runs/<UTC stamp>/;
  2. tonight's result files and the sweep's summary copied into HISTORY/<UTC stamp>/ (files
     are only added);
  3. `harness compare` against the previous night (gated by --fail-on, when given),
     `harness trend` over the history (a table and trend.png), `harness report` on
     tonight's results (HTML and PNGs), each in its own process so that one failing never
     loses the others;
  4. summary.md, also appended to $GITHUB_STEP_SUMMARY when that is set.
Exit status 1 when a cell failed, the matrix was refused, or the comparison flagged a
regression that --fail-on names, after everything else has been written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path

from harness.core.environment import redact
from harness.core.errors import HarnessError
from harness.core.record import RunRecord
from harness.output.store import SWEEP_SUMMARY_NAME, write_atomic


def _harness(args: list[str], log: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.cli", *args]
    print(f"[nightly] harness {shlex.join(args)}", file=sys.stderr, flush=True)
    if log is None:
        return subprocess.run(cmd, text=True)
    proc = subprocess.run(cmd, text=True, capture_output=True)
    write_atomic(log, proc.stdout)
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    return proc


def _sweep(matrix_file: Path, runs: Path, command: list[str], lines: list[str]) -> tuple[list[str], list[RunRecord]]:
    """Run the matrix into ``runs``, adding the summary's lines for it; what failed, and the records."""
    from harness.execution.sweep import SweepRequest, prepare, run_sweep
    from harness.output.progress import EventView

    def log(line: str) -> None:
        print(redact(f"[nightly] {line}"), file=sys.stderr, flush=True)

    try:
        plan = prepare(SweepRequest(matrix_file=matrix_file, out_dir=runs, command=command))
    except HarnessError as exc:
        lines.append(f"- matrix {matrix_file} refused, nothing run: {redact(str(exc))}")
        return ["matrix"], []
    for name, why in plan.skipped_backends.items():
        lines.append(f"- backend {name} skipped: {why}")
    outcome = run_sweep(plan, command, log, EventView("cell", failures=False, live=False))
    failed = []
    for cell in outcome.summary.cells:
        if cell.status == "ok":
            lines.append(f"- {cell.label}: ok")
        else:
            lines.append(f"- {cell.label}: FAILED ({cell.status}" + (f": {cell.cause}" if cell.cause else "") + ")")
            failed.append(f"cell {cell.index}")
    return failed, outcome.records


def run(matrix_file: Path, report_args: list[str], out: Path, history: Path, stamp: str,
        fail_on: str | None = None) -> int:
    runs = out / "runs" / stamp  # a folder per night, so a reused --out never mixes nights
    lines = [f"# Nightly {stamp}", ""]
    command = ["python", "-m", "harness.commands.nightly", *sys.argv[1:]]
    failed, records = _sweep(matrix_file, runs, command, lines)
    tonight = sorted(runs.glob("*.json")) if runs.is_dir() else []
    night_dir = history / stamp
    previous = sorted(d for d in history.iterdir() if d.is_dir() and d.name < stamp) if history.exists() else []
    for f in tonight:
        write_atomic(night_dir / f.name, f.read_text())
    lines.append(f"- {sum(f.name != SWEEP_SUMMARY_NAME for f in tonight)} result file(s) and the sweep's "
                 f"summary appended to {night_dir}" if tonight else "- nothing appended to the history")
    lines.append("")
    if not records:
        lines.append("No results tonight: nothing to compare or report.")
    else:
        if previous:
            rules = [r for r in (fail_on or "").split(",") if r.strip()]
            if not any(r.accuracy for r in records):  # an accuracy rule would match nothing, which compare refuses
                rules = [r for r in rules if r.strip().partition(":")[0] != "accuracy"]
            gate = ["--fail-on", ",".join(rules)] if rules else []
            res = _harness(["compare", str(previous[-1]), str(night_dir), *gate], log=out / "compare.md")
            last_line = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else str(res.returncode)
            regressed = res.returncode == 1 and "--fail-on" in last_line
            lines += [f"## Against the previous night ({previous[-1].name})", "",
                      (out / "compare.md").read_text() if res.returncode == 0 or regressed else
                      f"not comparable: {last_line}", ""]
            if regressed:
                lines += [f"**Regression:** {last_line.removeprefix('error: ')}", ""]
                failed.append("regression")
        else:
            lines += ["No previous night in the history to compare with.", ""]
        res = _harness(["trend", str(history), "--png", str(out / "trend.png")], log=out / "trend.md")
        lines += ["## Trend", "", (out / "trend.md").read_text() if res.returncode == 0 else "trend failed", ""]
        if res.returncode == 0:
            lines += [f"Trend plot: {out / 'trend.png'}", ""]
        res = _harness(["report", str(night_dir), "--html", str(out / "report.html"), "--title", f"Nightly {stamp}", *report_args])
        if res.returncode:
            failed.append("report")
        lines.append(f"HTML report: {out / 'report.html'}" if res.returncode == 0 else "report FAILED")
    if failed:
        lines += ["", f"**Failed:** {', '.join(failed)}"]
    summary = "\n".join(lines) + "\n"
    write_atomic(out / "summary.md", summary)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as fh:
            fh.write(summary)
    print(f"[nightly] wrote {out / 'summary.md'}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.commands.nightly", description=__doc__.splitlines()[0])
    p.add_argument("--matrix", type=Path, required=True, help="the matrix file to run (make nightly: benchmarks/nightly.yaml)")
    p.add_argument("--report-args", default="", help="arguments for harness report (e.g. --power-w 300 --kwh-price 0.3)")
    p.add_argument("--out", type=Path, required=True, help="folder for tonight's results and artifacts")
    p.add_argument("--history", type=Path, required=True, help="the history folder results are appended to")
    p.add_argument("--fail-on", default="", help="harness compare's --fail-on against the previous night, "
                                                   "e.g. pp_tps:-10%%,tg_tps:-10%%,accuracy:-2pt; empty: report only")
    a = p.parse_args(argv)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return run(a.matrix, shlex.split(a.report_args), a.out, a.history, stamp, fail_on=a.fail_on or None)


if __name__ == "__main__":
    sys.exit(main())
