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
    outcome = run_load(request, log=lambda line: print(f"[harness] {line}", file=sys.stderr, flush=True))
    print(PRINTERS[fmt]([outcome.record]))
    print(f"[harness] wrote {outcome.path}", file=sys.stderr)


def main() -> None:
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
            print(f"error: {exc.format_message()}", file=sys.stderr)
        code = 2
    except HarnessError as exc:
        from harness.environment import redact

        print(f"error: {redact(str(exc))}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
