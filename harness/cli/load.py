"""`harness load`: a load test's options, parsed into a TrafficRequest for harness.commands.traffic."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from harness.cli.app import FORMAT_HELP, check_format
from harness.core.errors import HarnessError
from harness.core.paths import DEFAULT_RESULTS_DIR
from harness.execution import interrupts


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
    from harness.commands.traffic import run_traffic
    from harness.measurement.serving import server_backend
    from harness.measurement.traffic_options import TrafficRequest, parse_goodput, parse_metric_percentiles, \
        parse_percentile_metrics, parse_rates, parse_slo
    from harness.output.printers import PRINTERS, RECORD_FORMATS
    from harness.output.progress import EventView

    check_format(fmt, RECORD_FORMATS)
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
    view = EventView()
    try:
        outcome = run_traffic(request, view)
    except KeyboardInterrupt as exc:
        # typer would turn this into a silent exit 130; say what happened (any server started is stopped by now)
        kept = getattr(exc, "kept", None)
        error = HarnessError("interrupted; " + (kept or "no result file written") +
                             (f" (the {serve} server started for the run is stopped)" if serve else ""))
        error.exit_code = interrupts.exit_code(exc)
        raise error from None
    finally:
        view.close()
    print(PRINTERS[fmt]([outcome.record]))
    print(f"[harness] wrote {outcome.path}", file=sys.stderr)


