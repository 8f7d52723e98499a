"""`make nightly`: the bundled models on every available backend, kept as a history.

    python -m harness.commands.nightly --models "smollm2-135m gemma3-270m" --backends auto \\
        --bench-args "--pp 512 --tg 128 --reps 5" --suite quick \\
        --out results/nightly --history results/history

Steps, each run as the user would run it (the harness CLI in a subprocess), so one
failing model or backend never stops the others and the artifacts always exist:
  1. `harness bench` for every model on every backend that is installed and can run
     unattended (a backend whose settings need a value, such as a server URL, cannot);
  2. `harness eval --suite SUITE --no-cache` for the same pairs, where the eval command exists
     (a night measures; it never recalls answers from an earlier night's request cache);
  3. tonight's result files copied into HISTORY/<UTC stamp>/ (files are only added);
  4. `harness compare` against the previous night (gated by --fail-on, when given),
     `harness trend` over the history (a table and trend.png), `harness report` on
     tonight's results (HTML and PNGs);
  5. summary.md, also appended to $GITHUB_STEP_SUMMARY when that is set.
Exit status 1 when a bench or eval failed, or the comparison flagged a regression that
--fail-on names, after everything else has been written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path

from harness.core import registry
from harness.output.store import write_atomic


def unattended_backends() -> tuple[list[str], dict[str, str]]:
    """Backends that are installed and need no value the nightly cannot give; and why others are skipped."""
    ok, skipped = [], {}
    for name in sorted(registry.available()):
        try:
            cls = registry.get(name)
            if cls.installed_version() is None:
                skipped[name] = "not installed"
                continue
        except Exception as exc:  # a broken plugin must not stop the others
            skipped[name] = f"cannot load: {exc}"
            continue
        required = [k for k, f in cls.Settings.model_fields.items() if f.is_required()]
        if required:
            skipped[name] = f"needs {', '.join(required)} (not run unattended)"
            continue
        ok.append(name)
    return ok, skipped


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


def _has_command(name: str) -> bool:
    return subprocess.run([sys.executable, "-m", "harness.cli", name, "--help"], capture_output=True).returncode == 0


def run(models: list[str], backends: list[str], bench_args: list[str], suite: str | None, report_args: list[str],
        out: Path, history: Path, stamp: str, fail_on: str | None = None) -> int:
    runs = out / "runs" / stamp  # a folder per night, so a reused --out never mixes nights
    runs.mkdir(parents=True, exist_ok=True)
    lines = [f"# Nightly {stamp}", ""]
    if backends == ["auto"]:
        backends, skipped = unattended_backends()
        for name, why in skipped.items():
            lines.append(f"- backend {name} skipped: {why}")
    failed = []
    eval_ok = bool(suite) and _has_command("eval")
    if suite and not eval_ok:
        lines.append(f"- accuracy suite {suite} skipped: this harness has no eval command")
    for backend in backends:
        for model in models:
            res = _harness(["bench", "--model", model, "--backend", backend, *bench_args, "--out", str(runs)])
            lines.append(f"- bench {model} on {backend}: {'ok' if res.returncode == 0 else f'FAILED (exit {res.returncode})'}")
            if res.returncode:
                failed.append(f"bench {model} {backend}")
            if eval_ok:
                # --no-cache: a night measures its accuracy; answers recalled from an earlier
                # night's request cache would hide a scoring regression
                res = _harness(["eval", "--model", model, "--backend", backend, "--suite", str(suite), "--no-cache",
                                "--out", str(runs)])
                lines.append(f"- eval {suite} {model} on {backend}: {'ok' if res.returncode == 0 else f'FAILED (exit {res.returncode})'}")
                if res.returncode:
                    failed.append(f"eval {model} {backend}")
    tonight = sorted(runs.glob("*.json"))
    night_dir = history / stamp
    previous = sorted(d for d in history.iterdir() if d.is_dir() and d.name < stamp) if history.exists() else []
    for f in tonight:
        write_atomic(night_dir / f.name, f.read_text())
    lines.append(f"- {len(tonight)} result file(s) appended to {night_dir}")
    lines.append("")
    if not tonight:
        lines.append("No results tonight: nothing to compare or report.")
    else:
        if previous:
            rules = [r for r in (fail_on or "").split(",") if r.strip()]
            if not eval_ok:  # no accuracy tonight: an accuracy rule would match nothing, which compare refuses
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
    p.add_argument("--models", required=True, help="space-separated model references")
    p.add_argument("--backends", default="auto", help="space-separated backend names, or auto")
    p.add_argument("--bench-args", default="", help="arguments for every harness bench")
    p.add_argument("--suite", default="", help="accuracy suite for harness eval; empty to skip")
    p.add_argument("--report-args", default="", help="arguments for harness report (e.g. --power-w 300 --kwh-price 0.3)")
    p.add_argument("--out", type=Path, required=True, help="folder for tonight's results and artifacts")
    p.add_argument("--history", type=Path, required=True, help="the history folder results are appended to")
    p.add_argument("--fail-on", default="", help="harness compare's --fail-on against the previous night, "
                                                   "e.g. pp_tps:-10%%,tg_tps:-10%%,accuracy:-2pt; empty: report only")
    a = p.parse_args(argv)
    models = a.models.split()
    if not models:
        print("error: --models is empty; name at least one model", file=sys.stderr)
        return 2
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return run(models, a.backends.split() or ["auto"], shlex.split(a.bench_args), a.suite or None,
               shlex.split(a.report_args), a.out, a.history, stamp, fail_on=a.fail_on or None)


if __name__ == "__main__":
    sys.exit(main())
