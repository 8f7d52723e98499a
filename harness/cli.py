"""The `harness` command. Commands parse options, build a config, call one function, print.

Errors a user can fix come out as one line on stderr with a non-zero exit, never a
traceback: see main().
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException

from harness.errors import HarnessError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark open-weight language models on your own hardware.",
)

FORMAT_HELP = "output format: md, csv or json"


def _check_format(fmt: str) -> str:
    from harness.printers import FORMATS

    if fmt not in FORMATS:
        raise HarnessError(f"--format: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    return fmt


def _progress_printer():
    """A rich progress display on a terminal; plain log lines otherwise."""
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            console=console, transient=True)
        state: dict = {}

        def on_event(ev: dict) -> None:
            if not state:
                progress.start()
            if ev["event"] == "progress":
                key = (ev["index"], ev["test"])
                if key not in state:
                    state[key] = progress.add_task(f"case {ev['index']} {ev['test']}", total=ev["reps"] + 1)
                progress.update(state[key], completed=ev["rep"] + 1)
            elif ev["event"] == "loading":
                console.log(f"loading {ev['model']}")
            elif ev["event"] == "failed":
                console.log(f"[red]case {ev['index']} failed: {ev['cause']}[/red]")

        return on_event, progress.stop

    def on_log(ev: dict) -> None:
        if ev["event"] == "progress":
            what = "warm-up" if ev["rep"] == 0 else f"rep {ev['rep']}/{ev['reps']}"
            print(f"[harness] case {ev['index']} {ev['test']} {what}", file=sys.stderr, flush=True)
        elif ev["event"] == "loading":
            print(f"[harness] loading {ev['model']}", file=sys.stderr, flush=True)
        elif ev["event"] == "failed":
            print(f"[harness] case {ev['index']} failed: {ev['cause']}", file=sys.stderr, flush=True)

    return on_log, lambda: None


@app.command()
def bench(
    model: list[str] = typer.Option(["smollm2-135m"], "--model", "-m", help="model reference: a .gguf path, a bundled name, or hf:ORG/REPO:FILE; repeat for several"),
    backend: str = typer.Option("llamacpp", "--backend", "-b", help="backend name (see `harness backends`)"),
    pp: str = typer.Option("512", "--pp", "-p", help="prompt lengths to test, comma-separated; 'none' to skip"),
    tg: str = typer.Option("128", "--tg", "-n", help="generation lengths to test, comma-separated; 'none' to skip"),
    reps: str = typer.Option("5", "--reps", "-r", help="timed repetitions per test (after one warm-up)"),
    threads: Optional[str] = typer.Option(None, "--threads", "-t", help="thread counts, comma-separated (default: physical cores)"),
    n_gpu_layers: Optional[str] = typer.Option(None, "--n-gpu-layers", "-ngl", help="layers to offload, comma-separated (default: all when the build has GPU support)"),
    n_batch: Optional[str] = typer.Option(None, "--n-batch", help="logical batch sizes, comma-separated (default 2048)"),
    n_ubatch: Optional[str] = typer.Option(None, "--n-ubatch", help="physical batch sizes, comma-separated (default 512)"),
    flash_attn: Optional[str] = typer.Option(None, "--flash-attn", "-fa", help="flash attention: 0, 1 or 0,1"),
    mmap: Optional[str] = typer.Option(None, "--mmap", help="memory-map the model: 0, 1 or 0,1 (default 1)"),
    n_ctx: Optional[str] = typer.Option(None, "--n-ctx", help="context size (default: sized to the largest test)"),
    out: Path = typer.Option(Path("results/runs"), "--out", "-o", help="folder for result files"),
    fmt: str = typer.Option("md", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Measure prompt processing (ppN), generation (tgN), time to first token and memory."""
    from harness.bench import BenchRequest, run_bench
    from harness.config import parse_bool_list, parse_int_list
    from harness.printers import PRINTERS

    _check_format(fmt)
    reps_list = parse_int_list("--reps", reps)
    if len(reps_list) != 1:
        raise HarnessError("--reps takes one number")
    request = BenchRequest(
        models=model, backend=backend,
        pp=parse_int_list("--pp", pp, allow_none=True), tg=parse_int_list("--tg", tg, allow_none=True),
        reps=reps_list[0],
        grid={
            "n_threads": parse_int_list("--threads", threads),
            "n_gpu_layers": parse_int_list("--n-gpu-layers", n_gpu_layers, minimum=0),
            "n_batch": parse_int_list("--n-batch", n_batch),
            "n_ubatch": parse_int_list("--n-ubatch", n_ubatch),
            "flash_attn": parse_bool_list("--flash-attn", flash_attn),
            "use_mmap": parse_bool_list("--mmap", mmap),
            "n_ctx": parse_int_list("--n-ctx", n_ctx),
        },
        out_dir=out, command=["harness", *sys.argv[1:]],
    )
    on_event, stop = _progress_printer()
    try:
        outcome = run_bench(request, on_event)
    finally:
        stop()
    print(PRINTERS[fmt](outcome.records))
    for p in outcome.paths:
        print(f"[harness] wrote {p}", file=sys.stderr)
    if outcome.failed:
        raise typer.Exit(1)


@app.command()
def models(fmt: str = typer.Option("md", "--format", "-f", help="md or json")) -> None:
    """List the bundled and local models with size, quantization and license."""
    from harness.catalog import list_models

    rows = list_models()
    if _check_format(fmt) == "json":
        print(json.dumps(rows, indent=2))
        return
    from harness.printers import _md_table

    header = ["name", "source", "size MiB", "params", "quant", "license", "path"]
    from harness.printers import _params_label

    table = [[r["name"], r["source"], str(r.get("size_mib", "")), _params_label(r.get("parameters")) if "parameters" in r else "",
              r.get("quantization") or "", r.get("license") or "", r.get("error") or r["path"]] for r in rows]
    print(_md_table(header, table, {2, 3}))


@app.command()
def backends() -> None:
    """List backends and whether each is installed."""
    from harness import registry
    from harness.printers import _md_table

    rows = []
    for name, target in sorted(registry.available().items()):
        try:
            cls = registry.get(name)
            ver = cls.installed_version()
            rows.append([name, ver or "not installed", "" if ver else cls.install_hint, target])
        except HarnessError as exc:
            rows.append([name, "broken", str(exc), target])
    print(_md_table(["backend", "version", "install", "module"], rows, set()))


@app.command()
def sweep(
    file: Path = typer.Argument(..., help="matrix file (YAML): models, backends with settings, perf tests, suites"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for the sweep's results and its sweep.json (default results/runs/sweep-<file name>)"),
    resume: bool = typer.Option(False, "--resume", help="keep cells that finished with the same content, run the others (failed ones again)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check everything and print the plan with a duration estimate; run nothing"),
    fmt: str = typer.Option("md", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Run a matrix of models x backends x tests, each cell in its own process, surviving faults."""
    from harness.environment import redact
    from harness.printers import PRINTERS, SWEEP_PRINTERS, sweep_plan_markdown
    from harness.sweep import SweepRequest, prepare, run_sweep

    _check_format(fmt)
    command = ["harness", *sys.argv[1:]]
    plan = prepare(SweepRequest(matrix_file=file, out_dir=out, resume=resume, dry_run=dry_run, command=command))
    if dry_run:
        print(sweep_plan_markdown(plan))
        return

    def log(line: str) -> None:
        print(redact(f"[harness] {line}"), file=sys.stderr, flush=True)

    def on_event(ev: dict) -> None:
        if ev["event"] == "progress":
            what = "warm-up" if ev["rep"] == 0 else f"rep {ev['rep']}/{ev['reps']}"
            log(f"cell {ev['index']} {ev['test']} {what}")

    outcome = run_sweep(plan, command, log, on_event)
    summary = outcome.summary
    print(SWEEP_PRINTERS[fmt](summary))
    measured = [r for r in outcome.records if r.perf or r.accuracy]
    if fmt == "md" and measured:
        print()
        print(PRINTERS[fmt](measured))
    log(f"wrote {outcome.summary_path}")
    if summary.interrupted_by:
        raise typer.Exit(143 if summary.interrupted_by == "SIGTERM" else 130)
    if any(c.status != "ok" for c in summary.cells):
        raise typer.Exit(1)


@app.command()
def show(
    paths: list[Path] = typer.Argument(..., help="result files, folders of them, or sweep summaries (sweep.json)"),
    fmt: str = typer.Option("md", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Print result files; a sweep summary prints its cells, then their results (as CSV: its cells)."""
    from harness.printers import PRINTERS, SWEEP_PRINTERS
    from harness.store import load_records

    _check_format(fmt)
    for p in paths:
        if not p.exists():
            raise HarnessError(f"no such file or folder: {p}")
    records, sweeps = load_records(paths)
    if not records and not sweeps:
        raise HarnessError(f"no result files in {', '.join(map(str, paths))}")
    if fmt == "json":
        runs = [json.loads(r.model_dump_json()) for r in records]
        print(json.dumps({"sweeps": [json.loads(s.model_dump_json()) for s in sweeps], "runs": runs} if sweeps else
                         (runs[0] if len(runs) == 1 else runs), indent=2))
        return
    if fmt == "csv" and sweeps:  # one CSV: a sweep's cells, each with its status
        print(SWEEP_PRINTERS["csv"](sweeps), end="")
        return
    for s in sweeps:
        print(SWEEP_PRINTERS[fmt](s))
        print()
    if records:
        print(PRINTERS[fmt](records))


@app.command()
def env() -> None:
    """Print the environment fingerprint stored with every result."""
    from harness.environment import fingerprint

    print(json.dumps(fingerprint(), indent=2))


@app.command()
def load(
    base_url: Optional[str] = typer.Option(None, "--base-url", help="a running OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"),
    serve: Optional[str] = typer.Option(None, "--serve", help="start a server on loopback for the run and stop it after: llamacpp or vllm"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model reference: what --serve loads, and the tokenizer for random prompts"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="the model's name at the server (default: the only one it lists)"),
    api: str = typer.Option("completions", "--api", help="completions or chat"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="NAME of the environment variable that holds the API key"),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", "-c", help="fixed concurrencies, comma-separated (default 1)"),
    rate: Optional[str] = typer.Option(None, "--rate", help="request rates per second with Poisson arrivals, comma-separated; inf = all at once"),
    sweep: Optional[int] = typer.Option(None, "--sweep", help="synchronous, all-at-once, then this many rates spaced between their throughputs"),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", help="cap on in-flight requests for --rate and --sweep"),
    requests: Optional[int] = typer.Option(None, "--requests", "-n", help="requests per load point (default 16 unless --duration is given)"),
    duration: Optional[float] = typer.Option(None, "--duration", help="seconds per load point: no request starts after this"),
    warmup: int = typer.Option(1, "--warmup", help="uncounted requests before the first load point"),
    input_len: Optional[int] = typer.Option(None, "--input-len", help="prompt tokens (random tokens; default 128; with --dataset: cut to this)"),
    output_len: int = typer.Option(64, "--output-len", help="output tokens per request"),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="prompts: JSON lines with a \"prompt\" field, or one prompt per line"),
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--no-ignore-eos", help="ask for exactly --output-len tokens (ignore_eos + min_tokens)"),
    slo: Optional[str] = typer.Option(None, "--slo", help="service-level objectives for goodput, e.g. ttft_ms=500,tpot_ms=50 (also e2el_ms)"),
    seed: int = typer.Option(0, "--seed", help="seed for prompts and arrival times"),
    retries: int = typer.Option(2, "--retries", help="retries of a 429/5xx or failed connection (backoff, Retry-After honoured)"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds before one request is given up"),
    serve_python: Optional[str] = typer.Option(None, "--serve-python", help="Python interpreter that runs the --serve server (default: this one)"),
    serve_arg: list[str] = typer.Option([], "--serve-arg", help="extra argument for the --serve server; repeat for several"),
    serve_timeout: Optional[float] = typer.Option(None, "--serve-timeout", help="seconds to wait for the --serve server to be ready"),
    out: Path = typer.Option(Path("results/runs"), "--out", "-o", help="folder for result files"),
    fmt: str = typer.Option("md", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Load-test an OpenAI-compatible server: throughput, TTFT, TPOT, ITL, latency, goodput."""
    from harness.config import parse_int_list
    from harness.load import LoadRequest, parse_rates, parse_slo, run_load
    from harness.printers import PRINTERS

    _check_format(fmt)
    if serve is not None and serve not in ("llamacpp", "vllm"):
        raise HarnessError(f"--serve: unknown server '{serve}'; use llamacpp or vllm")
    if api not in ("completions", "chat"):
        raise HarnessError(f"--api: '{api}' is not completions or chat")
    for option, value in (("--sweep", sweep), ("--max-concurrency", max_concurrency), ("--requests", requests)):
        if value is not None and value < 1:
            raise HarnessError(f"{option}: {value} must be at least 1")
    request = LoadRequest(
        base_url=base_url, serve=serve, model=model, model_name=model_name, api=api, api_key_env=api_key_env,
        concurrency=parse_int_list("--concurrency", concurrency) or [], rates=parse_rates("--rate", rate) or [],
        sweep=sweep, max_concurrency=max_concurrency,
        requests=requests if requests is not None or duration is not None else 16, duration_s=duration,
        warmup=warmup, input_len=input_len if input_len is not None or dataset is not None else 128,
        output_len=output_len, dataset=dataset, ignore_eos=ignore_eos, slo=parse_slo(slo), seed=seed,
        retries=retries, timeout_s=timeout, serve_python=serve_python, serve_args=serve_arg,
        serve_timeout_s=serve_timeout, out_dir=out, command=["harness", *sys.argv[1:]],
    )
    try:
        outcome = run_load(request, log=lambda line: print(f"[harness] {line}", file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        # typer would turn this into a silent exit 130; say what happened (any server started is stopped by now)
        error = HarnessError("interrupted; no result file written" + (f" (the {serve} server started for the run is stopped)" if serve else ""))
        error.exit_code = 130
        raise error from None
    print(PRINTERS[fmt]([outcome.record]))
    print(f"[harness] wrote {outcome.path}", file=sys.stderr)


@app.command()
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
    from harness import compare as cmp

    _check_format(fmt)
    if stat not in ("mwu", "bootstrap"):
        raise HarnessError(f"--stat: unknown test '{stat}'; use mwu or bootstrap")
    perf_limit = cmp.parse_threshold("--threshold", threshold)
    acc_limit = cmp.parse_threshold("--acc-threshold", acc_threshold)
    if perf_limit.unit != "%" or acc_limit.unit != "pt":
        raise HarnessError("--threshold takes a percentage (5%), --acc-threshold points (1pt)")
    rules = cmp.parse_fail_on(fail_on) if fail_on else []
    base_records, base_files = cmp.load_records([base], "base")
    comparisons = []
    for h in head:
        head_records, head_files = cmp.load_records([h], "head")
        comparisons.append(cmp.compare(base_records, head_records, base_paths=base_files, head_paths=head_files,
                                       head_label=str(h) if len(head) > 1 else "head", by=by, threshold=perf_limit,
                                       acc_threshold=acc_limit, alpha=alpha, stat=stat, gate=rules))  # type: ignore[arg-type]
    if rules:
        cmp.check_gate_matches(comparisons, rules)
    print(cmp.PRINTERS[fmt](comparisons), end="" if fmt == "md" else "\n")
    for c in comparisons:
        for w in c.warnings:
            print(f"warning: {w}", file=sys.stderr)
    failures = cmp.gate_failures(comparisons)
    if failures:
        raise cmp.GateFailed(f"--fail-on: {len(failures)} flagged regression(s): " + "; ".join(failures))


@app.command()
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
) -> None:
    """One self-contained HTML report: tables, plots, open against closed, openness, cost."""
    from harness.cost import CostInputs, parse_api_price
    from harness.report import build_report, load_runs, write_report

    inputs = CostInputs(kwh_price=kwh_price, hw_cost=hw_cost, hw_lifetime_h=hw_lifetime_h, power_w=power_w,
                        currency=currency).check()
    prices = [parse_api_price(p) for p in api_price]
    records, files = load_runs(runs)
    rep = build_report(records, files, inputs, prices, title=title, scores_path=reference, openness_path=openness)
    for path in write_report(rep, html, png_dir):
        print(f"[harness] wrote {path}", file=sys.stderr)


@app.command()
def trend(
    history: list[Path] = typer.Argument(..., help="result files or folders (e.g. results/history)"),
    last: int = typer.Option(14, "--last", help="how many nights to show"),
    fmt: str = typer.Option("md", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Metric values per night from a history of results, newest last."""
    from harness.compare import load_records, trend as trend_table
    from harness.printers import _md_table

    _check_format(fmt)
    if last < 1:
        raise HarnessError("--last must be at least 1")
    records, _ = load_records(history, "history")
    header, rows = trend_table(records, last)
    if fmt == "json":
        print(json.dumps([dict(zip(header, r)) for r in rows], indent=2))
    elif fmt == "csv":
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    else:
        print(_md_table(header, rows, set(range(5, len(header)))))


def main() -> None:
    from harness.environment import RedactingStream

    # nothing the harness prints may carry a key, whoever formatted it
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    # standalone_mode=False lets usage errors reach us, so they print as one line
    # instead of click's boxed usage text
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        code = 130
    except TyperException as exc:
        if exc.format_message():  # empty when the message is the help already shown
            from harness.environment import redact  # a bad option's value may be a key

            print(f"error: {redact(exc.format_message())}", file=sys.stderr)
        code = 2
    except HarnessError as exc:
        from harness.environment import redact

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    except Exception:
        # a bug, not bad input: keep the traceback for the report, without any secret in it
        import traceback

        from harness.environment import redact

        print(redact(traceback.format_exc()).rstrip(), file=sys.stderr)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
