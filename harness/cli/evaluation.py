"""`harness eval`: lm-eval's options, parsed into an EvalRequest for harness.commands.evaluation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from harness.cli.app import RECORD_FORMAT_HELP, check_format, raise_unsaved
from harness.core.errors import HarnessError
from harness.core.paths import DEFAULT_RESULTS_DIR
from harness.execution import interrupts


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

    check_format(fmt, RECORD_FORMATS)
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
    raise_unsaved(outcome)
    if outcome.failed or outcome.stopped:
        raise typer.Exit(1)


