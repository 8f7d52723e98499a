"""The commands over result files: `harness show`, `compare`, `report` and `trend`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from harness.cli.app import FORMAT_HELP, RECORD_FORMAT_HELP, check_format
from harness.core.errors import HarnessError


def show(
    paths: list[Path] = typer.Argument(..., help="result files, folders of them, or sweep summaries (sweep.json)"),
    fmt: str = typer.Option("md", "--format", "-f", metavar="FORMAT", help=RECORD_FORMAT_HELP),
) -> None:
    """Print result files; a sweep summary prints its cells, then their results (as CSV: its cells)."""
    from harness.output.printers import PRINTERS, RECORD_FORMATS, SWEEP_PRINTERS
    from harness.output.store import load_records

    check_format(fmt, RECORD_FORMATS)
    loaded = load_records(paths, summaries=True)
    records, sweeps = loaded.records, loaded.sweeps
    if fmt == "json":  # always a list: the run records, then any sweep summaries (kind "sweep")
        print(json.dumps([json.loads(r.model_dump_json()) for r in records] +
                         [json.loads(s.model_dump_json()) for s in sweeps], indent=2))
        return
    if fmt in ("jsonl", "sql"):
        print(PRINTERS[fmt](records))
        return
    if fmt == "csv" and sweeps:  # one CSV: a sweep's cells, each with its status
        print(SWEEP_PRINTERS["csv"](sweeps), end="")
        return
    for s in sweeps:
        print(SWEEP_PRINTERS[fmt](s))
        print()
    if records:
        print(PRINTERS[fmt](records))


def compare(
    base: Path = typer.Argument(..., help="base: a result file or a folder of them"),
    head: list[Path] = typer.Argument(..., help="head: result files or folders; each is compared with base"),
    by: Optional[str] = typer.Option(None, "--by", help="the axis: a setting (threads, n_batch, ...), model, quantization or backend; found automatically when it is the only difference"),
    threshold: str = typer.Option("5%", "--threshold", help="smallest performance change that is flagged"),
    acc_threshold: str = typer.Option("1pt", "--acc-threshold", help="smallest accuracy change that is flagged, in points"),
    alpha: float = typer.Option(0.05, "--alpha", help="significance level"),
    stat: str = typer.Option("mwu", "--stat", help="performance test: mwu (Mann-Whitney U on raw samples) or bootstrap (interval of head/base)"),
    fail_on: Optional[str] = typer.Option(None, "--fail-on", help="exit 1 on a flagged regression, e.g. tg_tps:-5%,acc:-1pt (METRIC, TEST/METRIC or accuracy)"),
    fmt: str = typer.Option("md", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Compare runs: base, head and the change per metric, with noise told apart from change."""
    from harness.output import compare as cmp
    from harness.output import compare_printers
    from harness.output.store import load_records

    check_format(fmt)
    if stat not in ("mwu", "bootstrap"):
        raise HarnessError(f"--stat: unknown test '{stat}'; use mwu or bootstrap")
    perf_limit = cmp.parse_threshold("--threshold", threshold)
    acc_limit = cmp.parse_threshold("--acc-threshold", acc_threshold)
    if perf_limit.unit != "%" or acc_limit.unit != "pt":
        raise HarnessError("--threshold takes a percentage (5%), --acc-threshold points (1pt)")
    rules = cmp.parse_fail_on(fail_on) if fail_on else []
    base_side = load_records([base], "base")
    comparisons = []
    for h in head:
        head_side = load_records([h], "head")
        comparisons.append(cmp.compare(base_side.records, head_side.records, base_paths=list(map(str, base_side.files)),
                                       head_paths=list(map(str, head_side.files)),
                                       head_label=str(h) if len(head) > 1 else "head", by=by, threshold=perf_limit,
                                       acc_threshold=acc_limit, alpha=alpha, stat=stat, gate=rules))  # type: ignore[arg-type]
    if rules:
        cmp.check_gate_matches(comparisons, rules)
    print(compare_printers.PRINTERS[fmt](comparisons), end="" if fmt == "md" else "\n")
    for c in comparisons:
        for w in c.warnings:
            print(f"warning: {w}", file=sys.stderr)
    failures = compare_printers.gate_failures(comparisons)
    if failures:
        raise cmp.GateFailed(f"--fail-on: {len(failures)} flagged regression(s): " + "; ".join(failures))


def report(
    runs: list[Path] = typer.Argument(..., help="result files or folders"),
    html: Path = typer.Option(..., "--html", help="the HTML file to write (PNG plots go beside it)"),
    png_dir: Optional[Path] = typer.Option(None, "--png-dir", help="folder for the PNG plots (default: beside the HTML)"),
    title: str = typer.Option("Benchmark report", "--title"),
    power_w: Optional[float] = typer.Option(None, "--power-w", help="average power draw in W (default: measured, where the meters could)"),
    kwh_price: Optional[float] = typer.Option(None, "--kwh-price", help="electricity price per kWh"),
    hw_cost: Optional[float] = typer.Option(None, "--hw-cost", help="hardware price, amortized over --hw-lifetime-h"),
    hw_lifetime_h: Optional[float] = typer.Option(None, "--hw-lifetime-h", help="hours over which --hw-cost is written off"),
    api_price: list[str] = typer.Option([], "--api-price", help="an API's prices per million tokens, NAME=IN/OUT; repeat"),
    currency: str = typer.Option("USD", "--currency", help="currency of the prices, for labels"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="published scores YAML (default: harness/data/published_scores.yaml)"),
    openness: Optional[Path] = typer.Option(None, "--openness", help="openness facts YAML (default: harness/data/openness.yaml)"),
    min_docs: int = typer.Option(100, "--min-docs", help="a score from fewer documents is a smoke test: greyed, labelled, never the best"),
    closed_model: list[str] = typer.Option([], "--closed-model", help="a served model NAME to treat as closed (e.g. behind a proxy on this machine); repeat"),
) -> None:
    """One self-contained HTML report: tables, plots, open against closed, openness, cost."""
    from harness.measurement.cost import CostInputs, parse_api_price
    from harness.output.report import build_report, write_report
    from harness.output.store import load_records

    inputs = CostInputs(kwh_price=kwh_price, hw_cost=hw_cost, hw_lifetime_h=hw_lifetime_h, power_w=power_w,
                        currency=currency).check()
    prices = [parse_api_price(p) for p in api_price]
    loaded = load_records(runs)
    rep = build_report(loaded.records, loaded.files, inputs, prices, title=title, scores_path=reference, openness_path=openness,
                       min_docs=min_docs, closed_models=closed_model)
    for path in write_report(rep, html, png_dir):
        print(f"[harness] wrote {path}", file=sys.stderr)


def trend(
    history: list[Path] = typer.Argument(..., help="result files or folders (e.g. results/history)"),
    last: int = typer.Option(14, "--last", metavar="N", help="how many nights to show"),
    png: Optional[Path] = typer.Option(None, "--png", metavar="PATH", help="also draw the trend as a PNG plot: a panel per metric, a line per series"),
    fmt: str = typer.Option("md", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP),
) -> None:
    """Metric values per night from a history of results, newest last."""
    from harness.output.trend import trend as trend_table
    from harness.output.printers import table_text
    from harness.output.store import load_records

    check_format(fmt)
    if last < 1:
        raise HarnessError("--last must be at least 1")
    records = load_records(history, "history").records
    header, rows = trend_table(records, last)
    if png is not None:
        from harness.output.trend import trend_png
        from harness.output.store import write_atomic

        write_atomic(png, trend_png(records, last))
        print(f"[harness] wrote {png}", file=sys.stderr)
    print(table_text(fmt, header, rows, set(range(5, len(header)))))


