"""The `harness` command. Commands parse options, build a config, call one function, print.

Errors a user can fix come out as one line on stderr with a non-zero exit, never a
traceback: see main().
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException

from harness.execution import interrupts
from harness.core.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_STATUS_HELP, HarnessError
from harness.core.paths import DEFAULT_RESULTS_DIR

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark open-weight language models on your own hardware.",
    epilog=EXIT_STATUS_HELP,
)

FORMAT_HELP = "output format: md, csv or json"


def _print_version(value: bool) -> None:
    if value:
        from harness import __version__

        print(f"harness {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                 help="print the harness's version and exit"),
) -> None:
    """Benchmark open-weight language models on your own hardware."""


RECORD_FORMAT_HELP = "output format: md, csv, json, jsonl or sql"


def _check_format(fmt: str, formats: tuple[str, ...] | None = None) -> str:
    from harness.output.printers import FORMATS

    formats = formats or FORMATS
    if fmt not in formats:
        raise HarnessError(f"--format: unknown format '{fmt}'; use one of {', '.join(formats)}")
    return fmt


def _joined(values: list[str] | None) -> str | None:
    """A repeatable list option as one comma list: -p 128 -p 512 and -p 128,512 are the same."""
    return ",".join(values) if values else None


BENCH_FORMAT_HELP = "output format, as llama-bench's -o: md, csv, json, jsonl or sql"


@app.command()
def bench(
    model: list[str] = typer.Option([], "--model", "-m", metavar="LIST", help="model references, comma-separated or repeated: .gguf paths (split files: the first part), bundled names, ollama:NAME:TAG, lmstudio:PUBLISHER/REPO/FILE or hf:ORG/REPO:FILE (default smollm2-135m)"),
    backend: str = typer.Option("llamacpp", "--backend", "-b", metavar="NAME", help="backend name (see `harness backends`)"),
    pp: list[str] = typer.Option([], "--pp", "-p", "--n-prompt", metavar="LIST", help="prompt lengths to test (default 512), comma-separated or repeated; 'none' to skip"),
    tg: list[str] = typer.Option([], "--tg", "-n", "--n-gen", metavar="LIST", help="generation lengths to test (default 128), comma-separated or repeated; 'none' to skip"),
    pg: list[str] = typer.Option([], "--pg", "-pg", metavar="PP,TG", help="prompt then generation timed together (llama-bench's pp512+tg128); repeat for more"),
    depth: list[str] = typer.Option([], "--n-depth", "-d", metavar="LIST", help="run each test with this many tokens already in the cache (named pp512 @ d4096); default 0"),
    reps: str = typer.Option("5", "--reps", "-r", metavar="N", help="timed repetitions per test (after one warm-up)"),
    threads: list[str] = typer.Option([], "--threads", "-t", metavar="LIST", help="thread counts (default: physical cores)"),
    n_gpu_layers: list[str] = typer.Option([], "--n-gpu-layers", "-ngl", metavar="LIST", help="layers to offload (default: all when the build has GPU support)"),
    n_batch: list[str] = typer.Option([], "--n-batch", "--batch-size", metavar="LIST", help="logical batch sizes (default 2048)"),
    n_ubatch: list[str] = typer.Option([], "--n-ubatch", "--ubatch-size", "-ub", metavar="LIST", help="physical batch sizes (default 512)"),
    cache_type_k: list[str] = typer.Option([], "--cache-type-k", "-ctk", metavar="LIST", help="KV cache type of K: f16 (default), q8_0, q4_0, ..."),
    cache_type_v: list[str] = typer.Option([], "--cache-type-v", "-ctv", metavar="LIST", help="KV cache type of V (quantized types need flash attention)"),
    split_mode: list[str] = typer.Option([], "--split-mode", "-sm", metavar="LIST", help="how several GPUs share the model: none, layer (default) or row"),
    main_gpu: list[str] = typer.Option([], "--main-gpu", "-mg", metavar="LIST", help="the GPU for the model (split mode none) or its small tensors (row)"),
    tensor_split: list[str] = typer.Option([], "--tensor-split", "-ts", metavar="LIST", help="each GPU's share of the model, e.g. 3/1; comma-separated for several splits"),
    flash_attn: list[str] = typer.Option([], "--flash-attn", "-fa", metavar="LIST", help="flash attention: 0, 1 or 0,1"),
    mmap: list[str] = typer.Option([], "--mmap", "-mmp", metavar="LIST", help="memory-map the model: 0, 1 or 0,1 (default 1)"),
    n_ctx: list[str] = typer.Option([], "--n-ctx", metavar="LIST", help="context size (default: sized to the largest test)"),
    batch: Optional[str] = typer.Option(None, "--batch", metavar="LIST", help="offline batch throughput: batch sizes, comma-separated (that many requests submitted at once; batching backends: vllm)"),
    batch_pp: int = typer.Option(128, "--batch-pp", metavar="N", help="prompt tokens of each request in a --batch test"),
    batch_tg: int = typer.Option(128, "--batch-tg", metavar="N", help="tokens generated by each request in a --batch test (end-of-sequence ignored)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=LIST", help="any backend setting, KEY=V1,V2 (repeatable; 'none' = the engine's default), e.g. --set enable_prefix_caching=0,1 --set compilation_mode=0"),
    out: Path = typer.Option(DEFAULT_RESULTS_DIR, "--out", "--out-dir", metavar="PATH", help="folder for result files"),
    output: Optional[str] = typer.Option(None, "--output", "-o", metavar="FORMAT", help=BENCH_FORMAT_HELP),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", metavar="FORMAT", help="the same as -o"),
) -> None:
    """Measure prompt processing (ppN), generation (tgN), time to first token and memory."""
    from harness.commands.bench import BenchRequest, parse_set_options, run_bench
    from harness.core.config import parse_bool_list, parse_int_list, parse_pg_list, parse_split_list, parse_word_list
    from harness.output.printers import PRINTERS, RECORD_FORMATS
    from harness.core.registry import get as get_backend

    if output is not None and fmt is not None and output != fmt:
        raise HarnessError(f"-o {output} and --format {fmt} disagree; give the format once")
    fmt = output or fmt or "md"
    if fmt not in RECORD_FORMATS:
        hint = "; give the results folder with --out PATH" if output is not None else ""
        raise HarnessError(f"-o/--format: unknown format '{fmt}'; use one of {', '.join(RECORD_FORMATS)} "
                           f"(as llama-bench's -o){hint}")
    reps_list = parse_int_list("--reps", reps)
    if len(reps_list) != 1:
        raise HarnessError("--reps takes one number")
    backend_cls = get_backend(backend)
    # each option -> the backend's own setting (its settings model names them)
    options = {
        "threads": parse_int_list("--threads", _joined(threads)),
        "n-gpu-layers": parse_int_list("--n-gpu-layers", _joined(n_gpu_layers), minimum=0),
        "n-batch": parse_int_list("--n-batch", _joined(n_batch)),
        "n-ubatch": parse_int_list("--n-ubatch", _joined(n_ubatch)),
        "cache-type-k": parse_word_list("--cache-type-k", _joined(cache_type_k)),
        "cache-type-v": parse_word_list("--cache-type-v", _joined(cache_type_v)),
        "split-mode": parse_word_list("--split-mode", _joined(split_mode), ("none", "layer", "row")),
        "main-gpu": parse_int_list("--main-gpu", _joined(main_gpu), minimum=0),
        "tensor-split": parse_split_list("--tensor-split", _joined(tensor_split)),
        "flash-attn": parse_bool_list("--flash-attn", _joined(flash_attn)),
        "mmap": parse_bool_list("--mmap", _joined(mmap)),
        "n-ctx": parse_int_list("--n-ctx", _joined(n_ctx)),
    }
    grid = {backend_cls.setting_for_option(opt): values for opt, values in options.items() if values}
    pp_list = parse_int_list("--pp", _joined(pp), allow_none=True)
    tg_list = parse_int_list("--tg", _joined(tg), allow_none=True)
    request = BenchRequest(
        models=[m.strip() for item in model for m in item.split(",") if m.strip()], backend=backend,
        pp=[512] if pp_list is None else pp_list, tg=[128] if tg_list is None else tg_list,
        pg=parse_pg_list("-pg", pg), depth=parse_int_list("--n-depth", _joined(depth), minimum=0) or [0],
        reps=reps_list[0], grid=grid,
        out_dir=out, command=["harness", *sys.argv[1:]],
        batch=parse_int_list("--batch", batch) or [], batch_pp=batch_pp, batch_tg=batch_tg,
    )
    extra = parse_set_options(set_)
    clash = sorted(k for k in extra if request.grid.get(k))
    if clash:
        raise HarnessError(f"--set {clash[0]} repeats an option given on its own; give it once")
    request.grid.update(extra)
    from harness.output.progress import EventView

    view = EventView("case")
    try:
        outcome = run_bench(request, view)
    finally:
        view.close()
    print(PRINTERS[fmt](outcome.records))
    for p in outcome.paths:
        print(f"[harness] wrote {p}", file=sys.stderr)
    _raise_unsaved(outcome)
    if outcome.failed:
        raise typer.Exit(1)


@app.command()
def models(fmt: str = typer.Option("md", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP)) -> None:
    """List the bundled and local models, and those Ollama and LM Studio hold, with size, quantization and license."""
    from harness.core.catalog import list_models
    from harness.output.printers import _params_label, table_text

    rows = list_models()
    if _check_format(fmt) == "json":
        print(json.dumps(rows, indent=2))
        return
    header = ["name", "source", "size MiB", "params", "quant", "license", "path"]
    table = [[r["name"], r["source"], str(r.get("size_mib", "")), _params_label(r.get("parameters")) if "parameters" in r else "",
              r.get("quantization") or "", r.get("license") or "", r.get("error") or r["path"]] for r in rows]
    print(table_text(fmt, header, table, {2, 3}))


@app.command()
def backends(fmt: str = typer.Option("md", "--format", "-f", metavar="FORMAT", help=FORMAT_HELP)) -> None:
    """List backends and whether each is installed."""
    from harness.core import registry
    from harness.output.printers import table_text

    _check_format(fmt)
    rows = []
    for name, target in sorted(registry.available().items()):
        try:
            cls = registry.get(name)
            ver = cls.installed_version()
            rows.append([name, ver or "not installed", "" if ver else cls.install_hint, target])
        except HarnessError as exc:
            rows.append([name, "broken", str(exc), target])
    print(table_text(fmt, ["backend", "version", "install", "module"], rows))


@app.command()
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

    _check_format(fmt)
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


@app.command()
def show(
    paths: list[Path] = typer.Argument(..., help="result files, folders of them, or sweep summaries (sweep.json)"),
    fmt: str = typer.Option("md", "--format", "-f", metavar="FORMAT", help=RECORD_FORMAT_HELP),
) -> None:
    """Print result files; a sweep summary prints its cells, then their results (as CSV: its cells)."""
    from harness.output.printers import PRINTERS, RECORD_FORMATS, SWEEP_PRINTERS
    from harness.output.store import load_records

    _check_format(fmt, RECORD_FORMATS)
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


@app.command()
def env(fmt: str = typer.Option("json", "--format", "-f", metavar="FORMAT", help="output format: json (default), md or csv")) -> None:
    """Print the environment fingerprint stored with every result."""
    from harness.core.environment import fingerprint
    from harness.output.printers import table_text

    _check_format(fmt)
    info = fingerprint()
    if fmt == "json":
        print(json.dumps(info, indent=2))
        return

    def flat(prefix: str, value) -> list[list[str]]:
        if isinstance(value, dict):
            return [row for k, v in value.items() for row in flat(f"{prefix}.{k}" if prefix else str(k), v)]
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return [row for i, v in enumerate(value) for row in flat(f"{prefix}[{i}]", v)]
        shown = " ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else str(value))
        return [[prefix, shown]]

    print(table_text(fmt, ["key", "value"], flat("", info)))


@app.command()
def load(
    base_url: Optional[str] = typer.Option(None, "--base-url", help="a running OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"),
    serve: Optional[str] = typer.Option(None, "--serve", help="start a server on loopback for the run and stop it after: llamacpp or vllm"),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="REF", help="model reference: what --serve loads (default smollm2-135m), and the tokenizer for random prompts"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="the model's name at the server (default: the only one it lists)"),
    api: str = typer.Option("completions", "--api", help="completions or chat"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="NAME of the environment variable that holds the API key"),
    concurrency: Optional[str] = typer.Option(None, "--concurrency", "-c", help="fixed concurrencies, comma-separated (default 1)"),
    rate: Optional[str] = typer.Option(None, "--rate", "--request-rate", help="request rates per second with Poisson arrivals, comma-separated; inf = all at once"),
    sweep: Optional[int] = typer.Option(None, "--sweep", help="synchronous, all-at-once, then this many rates spaced between their throughputs"),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", help="cap on in-flight requests for --rate and --sweep"),
    requests: Optional[int] = typer.Option(None, "--requests", "-n", "--num-prompts", help="requests per load point (default 16 unless --duration is given)"),
    duration: Optional[float] = typer.Option(None, "--duration", help="seconds per load point: no request starts after this"),
    warmup: int = typer.Option(1, "--warmup", help="uncounted requests before the first load point"),
    input_len: Optional[int] = typer.Option(None, "--input-len", "--random-input-len", help="prompt tokens (random tokens; default 128; with --dataset: cut to this)"),
    output_len: int = typer.Option(64, "--output-len", "--random-output-len", help="output tokens per request"),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "--dataset-path", help="prompts: JSON lines with a \"prompt\" field, or one prompt per line"),
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--no-ignore-eos", help="ask for exactly --output-len tokens (ignore_eos + min_tokens)"),
    slo: Optional[str] = typer.Option(None, "--slo", metavar="KEY=MS,...", help="service-level objectives for goodput, e.g. ttft_ms=500,tpot_ms=50 (also e2el_ms)"),
    goodput: list[str] = typer.Option([], "--goodput", metavar="KEY:MS", help="vllm bench serve's form of --slo: ttft:500 tpot:50 (also e2el); repeatable"),
    percentile_metrics: Optional[str] = typer.Option(None, "--percentile-metrics", metavar="LIST", help="metrics to report percentiles of, as vllm bench serve: ttft,tpot,itl,e2el"),
    metric_percentiles: Optional[str] = typer.Option(None, "--metric-percentiles", metavar="LIST", help="which percentiles of --percentile-metrics, e.g. 25,50,99 (default 99)"),
    burstiness: float = typer.Option(1.0, "--burstiness", metavar="X", help="arrival burstiness for --rate, as vllm bench serve: gamma-distributed gaps, 1 = Poisson, below 1 burstier"),
    seed: int = typer.Option(0, "--seed", help="seed for prompts and arrival times"),
    retries: int = typer.Option(2, "--retries", help="retries of a 429/5xx or failed connection (backoff, Retry-After honoured)"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds before one request is given up"),
    serve_python: Optional[str] = typer.Option(None, "--serve-python", help="Python interpreter that runs the --serve server (default: this one)"),
    serve_arg: list[str] = typer.Option([], "--serve-arg", help="extra argument for the --serve server; repeat for several"),
    serve_timeout: Optional[float] = typer.Option(None, "--serve-timeout", help="seconds to wait for the --serve server to be ready"),
    out: Path = typer.Option(DEFAULT_RESULTS_DIR, "--out", "-o", help="folder for result files"),
    fmt: str = typer.Option("md", "--format", "-f", help=FORMAT_HELP),
) -> None:
    """Load-test an OpenAI-compatible server: throughput, TTFT, TPOT, ITL, latency, goodput."""
    from harness.core.config import parse_int_list
    from harness.measurement.serving import server_backend
    from harness.measurement.traffic import run_traffic
    from harness.measurement.traffic_options import TrafficRequest, parse_goodput, parse_metric_percentiles, \
        parse_percentile_metrics, parse_rates, parse_slo
    from harness.output.printers import PRINTERS, RECORD_FORMATS

    _check_format(fmt, RECORD_FORMATS)
    if serve is not None:
        server_backend(serve)
    if api not in ("completions", "chat"):
        raise HarnessError(f"--api: '{api}' is not completions or chat")
    slos = parse_slo(slo)
    for key, ms in parse_goodput(goodput).items():
        if key in slos:
            raise HarnessError(f"--goodput {key.removesuffix('_ms')} repeats --slo {key}; give it once")
        slos[key] = ms
    for option, value in (("--sweep", sweep), ("--max-concurrency", max_concurrency), ("--requests", requests)):
        if value is not None and value < 1:
            raise HarnessError(f"{option}: {value} must be at least 1")
    request = TrafficRequest(
        base_url=base_url, serve=serve, model=model, model_name=model_name, api=api, api_key_env=api_key_env,
        concurrency=parse_int_list("--concurrency", concurrency) or [], rates=parse_rates("--rate", rate) or [],
        sweep=sweep, max_concurrency=max_concurrency,
        requests=requests if requests is not None or duration is not None else 16, duration_s=duration,
        warmup=warmup, input_len=input_len if input_len is not None or dataset is not None else 128,
        output_len=output_len, dataset=dataset, ignore_eos=ignore_eos, slo=slos, seed=seed,
        percentile_metrics=parse_percentile_metrics(percentile_metrics),
        metric_percentiles=parse_metric_percentiles(metric_percentiles), burstiness=burstiness,
        retries=retries, timeout_s=timeout, serve_python=serve_python, serve_args=serve_arg,
        serve_timeout_s=serve_timeout, out_dir=out, command=["harness", *sys.argv[1:]],
    )
    try:
        outcome = run_traffic(request, log=lambda line: print(f"[harness] {line}", file=sys.stderr, flush=True))
    except KeyboardInterrupt as exc:
        # typer would turn this into a silent exit 130; say what happened (any server started is stopped by now)
        kept = getattr(exc, "kept", None)
        error = HarnessError("interrupted; " + (kept or "no result file written") +
                             (f" (the {serve} server started for the run is stopped)" if serve else ""))
        error.exit_code = interrupts.exit_code(exc)
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
    from harness.output import compare as cmp
    from harness.output.store import load_records

    _check_format(fmt)
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


@app.command()
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

    _check_format(fmt)
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


# ---------------------------------------------------------------------------- harness eval (accuracy)


@app.command("eval")
def eval_(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model reference: a .gguf path, a bundled name, or hf:ORG/REPO:FILE (default smollm2-135m); with --backend openai, the served model's name (default: the only one the server lists)"),
    backend: str = typer.Option("llamacpp", "--backend", "-b", help="backend name (see `harness backends`)"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="--backend openai: the OpenAI-compatible server, e.g. https://api.example.com/v1"),
    api: Optional[str] = typer.Option(None, "--api", help="--backend openai: chat (default) or completions"),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="--backend openai: NAME of the environment variable that holds the API key"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="any backend setting, KEY=VALUE (repeatable), e.g. --set compilation_mode=0"),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-eval task or group names, comma-separated (bundled: mmlu_snapshot, gsm8k, truthfulqa_mc1, truthfulqa_mc2, humaneval, ...)"),
    suite: Optional[str] = typer.Option(None, "--suite", help="a bundled suite: quick, standard or open-vs-closed"),
    tasks_dir: list[Path] = typer.Option([], "--tasks-dir", help="a folder of lm-eval task YAML files with local data; repeatable; overrides bundled tasks of the same name"),
    limit: Optional[str] = typer.Option(None, "--limit", metavar="N", help="at most N documents per task, or a fraction of each task's below 1 (0.1 = a tenth), as lm-eval's --limit (replaces a suite's fixed sample)"),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", metavar="N", help="override every task's number of few-shot examples (default: each task's own)"),
    seed: Optional[str] = typer.Option(None, "--seed", metavar="LIST", help="lm-eval's seeds for python random, numpy, torch and few-shot sampling: one number for all four, or four comma-separated (default 0,1234,1234,1234)"),
    gen_kwargs: Optional[str] = typer.Option(None, "--gen-kwargs", metavar="KEY=VALUE,...", help="generation arguments for every generative task, as lm-eval's --gen_kwargs, e.g. temperature=0,max_gen_toks=64"),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", metavar="N", help="threads (default: physical cores)"),
    out: Path = typer.Option(DEFAULT_RESULTS_DIR, "--out", "-o", "--output-path", metavar="PATH", help="folder for result files"),
    fmt: str = typer.Option("md", "--format", "-f", metavar="FORMAT", help=RECORD_FORMAT_HELP),
    log_samples: bool = typer.Option(False, "--log-samples", help="also write every document's prompt, answers and scores (JSON Lines) beside the result"),
    allow_code_execution: bool = typer.Option(False, "--allow-code-execution", help="run tasks that execute model-written code (humaneval), sandboxed"),
    apply_chat_template: Optional[bool] = typer.Option(None, "--apply-chat-template/--no-apply-chat-template", help="lm-eval's chat path: prompts as chat messages, rendered with the model's own chat template in process, sent as messages to a chat API (default: on for --api chat, off otherwise)"),
    fewshot_as_multiturn: Optional[bool] = typer.Option(None, "--fewshot-as-multiturn/--no-fewshot-as-multiturn", help="with the chat path: each few-shot example its own user/assistant turn (default: lm-eval's)"),
    system_instruction: Optional[str] = typer.Option(None, "--system-instruction", help="with the chat path: a system message before every prompt"),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="generation requests in flight at once on a text generator (an API; default 1)"),
    api_price: Optional[str] = typer.Option(None, "--api-price", help="NAME=IN/OUT, the API's price per million input/output tokens: the record gets the run's cost"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not reuse or store answers in lm-eval's request cache"),
    mc_scoring: str = typer.Option("loglikelihood", "--mc-scoring", metavar="MODE", help="multiple-choice tasks: loglikelihood (lm-eval's, each choice's text) or letters (lettered choices through the chat template, one generated token, the letters' probabilities: runs on chat APIs too)"),
    allow_generated_letters: bool = typer.Option(False, "--allow-generated-letters", help="with --mc-scoring letters: where an API returns no log-probabilities, score the generated letter (labelled as its own protocol)"),
) -> None:
    """Measure accuracy with lm-eval on the bundled offline tasks (or any lm-eval task)."""
    from harness.commands.bench import parse_set_options
    from harness.commands.evaluation import EvalRequest, run_eval
    from harness.output.printers import PRINTERS, RECORD_FORMATS

    _check_format(fmt, RECORD_FORMATS)
    settings: dict = {}
    for key, values in parse_set_options(set_).items():
        if len(values) != 1:
            raise HarnessError(f"--set {key}: one value per evaluation (a list of settings is a sweep: harness sweep)")
        settings[key] = values[0]
    for key, option, value in (("base_url", "--base-url", base_url), ("api", "--api", api),
                               ("api_key_env", "--api-key-env", api_key_env)):
        if value is None:
            continue
        if backend != "openai":
            raise HarnessError(f"{option} is for --backend openai (a server's API); leave it out for {backend}")
        if key in settings:
            raise HarnessError(f"--set {key} repeats {option}; give it once")
        settings[key] = value
    from harness.core.config import parse_gen_kwargs, parse_limit, parse_seed

    request = EvalRequest(
        model=model, backend=backend, settings=settings, tasks=tasks, suite=suite, tasks_dirs=tasks_dir,
        limit=parse_limit("--limit", limit), num_fewshot=num_fewshot, seed=parse_seed("--seed", seed),
        gen_kwargs=parse_gen_kwargs("--gen-kwargs", gen_kwargs), threads=threads, out_dir=out, log_samples=log_samples,
        allow_code_execution=allow_code_execution, apply_chat_template=apply_chat_template, use_cache=not no_cache,
        fewshot_as_multiturn=fewshot_as_multiturn, system_instruction=system_instruction, concurrency=concurrency,
        api_price=api_price, mc_scoring=mc_scoring, allow_generated_letters=allow_generated_letters,
        command=["harness", *sys.argv[1:]],
    )
    from harness.output.progress import EventView

    view = EventView()
    try:
        outcome = run_eval(request, view)
    except KeyboardInterrupt as exc:
        # typer would make this a silent exit 130; the worker is already stopped
        error = HarnessError("interrupted; no result file written (answers already scored stay in the request "
                             "cache unless --no-cache: a rerun skips them)")
        error.exit_code = interrupts.exit_code(exc)
        raise error from None
    finally:
        view.close()
    print(PRINTERS[fmt](outcome.records))
    for p in outcome.paths:
        print(f"[harness] wrote {p}", file=sys.stderr)
    for r in outcome.records:
        if r.evaluation and r.evaluation.samples_file:
            print(f"[harness] wrote {r.evaluation.samples_file}", file=sys.stderr)
    _raise_unsaved(outcome)
    if outcome.failed or outcome.stopped:
        raise typer.Exit(1)


def _raise_unsaved(outcome) -> None:
    """A record measured but not written (the disk filled up): its figures are on stdout now."""
    if outcome.unsaved:
        first = outcome.unsaved[0]
        n = len(outcome.unsaved)
        first.kept = (f"the {n} result{'s' if n > 1 else ''} not saved {'are' if n > 1 else 'is'} printed above "
                      f"({len(outcome.paths)} saved)")
        raise first


def _say_interrupted(exc: KeyboardInterrupt) -> int:
    print("error: interrupted" + (" (SIGTERM)" if isinstance(exc, interrupts.Terminated) else "") + _kept(exc),
          file=sys.stderr)
    return interrupts.exit_code(exc)


def _kept(exc: BaseException) -> str:
    """Where the work finished before a failure is, when the failing command kept some."""
    kept = getattr(exc, "kept", None)
    return f"; {kept}" if kept and kept not in str(exc) else ""


# what help shows for a value instead of Python's type names (<list[str]>, <str>)
_METAVARS = {"str": "TEXT", "int": "N", "float": "X", "Path": "PATH", "bool": ""}


def _metavar(param) -> str:
    if getattr(param, "is_flag", False):
        return ""  # a flag takes no value
    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    from typing import get_args, get_origin

    while get_origin(annotation) is not None and get_args(annotation):  # Optional[...], list[...]
        annotation = next((a for a in get_args(annotation) if a is not type(None)), None)
    return _METAVARS.get(getattr(annotation, "__name__", ""), "VALUE")


def _command_tree():
    """The click command behind the Typer app, with a metavariable on every parameter that
    names none of its own (Typer would show the Python type)."""
    root = typer.main.get_command(app)
    for cmd in [root, *getattr(root, "commands", {}).values()]:
        help_option = cmd.get_help_option(typer.main._click.Context(cmd, help_option_names=["--help"]))
        for param in [*cmd.params, *([help_option] if help_option else [])]:
            if param.param_type_name == "argument":  # its name is its metavariable; the type column goes
                param.display_type_rich = lambda ctx, shown=_metavar(param): shown
            elif param.metavar is None:
                param.metavar = _metavar(param)
    return root


def with_hyphens(argv: list[str], root) -> list[str]:
    """lm-eval's and vLLM's underscore spellings as aliases: --num_fewshot is --num-fewshot,
    --output_path=x is --output-path=x, for every option of the command being run. Only
    tokens that name a real option after the change are touched; nothing after "--"."""
    sub = next((a for a in argv if not a.startswith("-")), None)
    cmd = getattr(root, "commands", {}).get(sub) if sub else None
    if cmd is None:
        return argv
    names = {opt for param in cmd.params for opt in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ()))}
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--") and "_" in arg.partition("=")[0]:
            name, eq, value = arg.partition("=")
            alias = "--" + name[2:].replace("_", "-")
            if name not in names and alias in names:
                arg = alias + eq + value
        out.append(arg)
    return out


def joined_goodput(argv: list[str]) -> list[str]:
    """vllm bench serve writes --goodput ttft:500 tpot:50 (several values after one flag);
    click takes one, so the KEY:MS words that follow are joined into it."""
    out: list[str] = []
    for arg in argv:
        if out and len(out) >= 2 and out[-2] == "--goodput" and re.fullmatch(r"[a-z0-9_]+:[^\s]+", arg) \
                and not arg.startswith("-"):
            out[-1] = f"{out[-1]} {arg}"
            continue
        out.append(arg)
    return out


def main() -> None:
    """Run the CLI; every way out is one of the exit statuses in docs/exit-codes.md."""
    from harness.core.environment import RedactingStream

    interrupts.install()

    # nothing the harness prints may carry a key, whoever formatted it
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    # standalone_mode=False lets usage errors reach us, so they print as one line
    # instead of click's boxed usage text
    try:
        root = _command_tree()
        args = joined_goodput(with_hyphens(sys.argv[1:], root))
        code = root.main(args=args, prog_name="harness", standalone_mode=False)
        stopped_by = interrupts.first_seen()
        if code == 130 and stopped_by:  # typer makes an uncaught Ctrl-C a silent return of 130
            code = _say_interrupted(stopped_by)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        code = 130
    except TyperException as exc:
        if exc.format_message():  # empty when the message is the help already shown
            from harness.core.environment import redact  # a bad option's value may be a key

            print(f"error: {redact(exc.format_message())}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except HarnessError as exc:
        from harness.core.environment import redact

        print(f"error: {redact(str(exc))}{redact(_kept(exc))}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt as exc:
        code = _say_interrupted(exc)
    except OSError as exc:
        code = _os_error(exc)
    except Exception as exc:
        code = _internal_error(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _os_error(exc: OSError) -> int:
    """A file the harness could not read or write (a full disk, a read-only folder): one line naming it."""
    from harness.core.environment import redact
    from harness.core.errors import describe_os_error

    if exc.filename is None:
        return _internal_error(exc)  # no path to name: treated as a bug, with its traceback kept
    print(f"error: {redact(describe_os_error(exc))}{redact(_kept(exc))}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _internal_error(exc: BaseException) -> int:
    """A bug, not bad input: one line, and the traceback (secrets removed) in a log file."""
    import traceback

    from harness import __version__
    from harness.core.environment import redact

    text = redact(f"harness {__version__}\ncommand: harness {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    where = _write_crash_log(text)
    summary = redact(f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    if where is None:
        print(f"error: internal error ({summary}); the traceback could not be written to a log file, so here it is:",
              file=sys.stderr)
        print(text.rstrip(), file=sys.stderr)
    else:
        print(f"error: internal error ({summary}){redact(_kept(exc))}; the traceback is in {where} "
              "(please include it in a bug report)", file=sys.stderr)
    return EXIT_INTERNAL


def _write_crash_log(text: str) -> Path | None:
    """The traceback in $HARNESS_CACHE_DIR/logs (else the temporary folder); None if neither takes it."""
    import os
    import tempfile
    import time

    from harness.core.paths import cache_dir

    name = f"error-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.log"
    for folder in (lambda: cache_dir() / "logs", lambda: Path(tempfile.gettempdir())):
        try:
            path = folder() / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


if __name__ == "__main__":
    main()
