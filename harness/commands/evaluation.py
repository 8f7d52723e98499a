"""`harness eval`: pre-flight every input, run lm-eval in a worker process, return the record.

Checks that need no model and no lm-eval import (options, backend, model file, suite,
task folders and their YAML) happen here, before any process starts. Task names and
task data are checked by the worker before it loads the model (lm-eval's TaskManager
does the resolving); a problem there comes back as a ``refused`` event and ends the
run with one line and no result file, like every other bad input.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.core import registry
from harness.core.backend import setting_error
from harness.commands.bench import check_installed
from harness.core.errors import BackendNotInstalled, ConfigError
from harness.core.models import ModelInfo
from harness.core.record_factory import failed_record, new_run_id
from harness.execution.runner import OnEvent, Outcome, run_job
from harness.measurement.suites import TaskConfigError, bundled_tasks_dir, check_tasks_dir, select_tasks
from harness.output.store import check_writable_dir

# Bump when the adapter would answer the same request differently (it keys the request cache).
ADAPTER_VERSION = 2


class EvalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # None: the backend's default (the bundled model; a server's only model)
    backend: str = "llamacpp"
    settings: dict[str, Any] = {}  # backend settings by name (--set, and the server options)
    tasks: str | None = None
    suite: str | None = None
    tasks_dirs: list[Path] = []
    limit: int | float | None = None  # documents per task, or a fraction (0 < limit < 1) of each task's documents
    num_fewshot: int | None = None
    seed: list[int] | None = None  # lm-eval's four seeds: python random, numpy, torch, few-shot sampling
    gen_kwargs: str | None = None  # lm-eval's generation arguments for every generative task, KEY=VALUE,...
    threads: int | None = None
    out_dir: Path
    log_samples: bool = False
    allow_code_execution: bool = False
    apply_chat_template: bool | None = None  # None: on for a backend that takes chat messages, else off
    fewshot_as_multiturn: bool | None = None  # None: lm-eval's default
    system_instruction: str | None = None
    concurrency: int | None = None  # generation requests in flight (a text generator's)
    api_price: str | None = None  # NAME=IN/OUT per million tokens: record the run's cost
    use_cache: bool = True
    mc_scoring: str = "loglikelihood"  # or "letters" (harness.measurement.letters)
    allow_generated_letters: bool = False
    command: list[str] = []
    timeout_s: float | None = None


def check_lm_eval() -> str:
    if importlib.util.find_spec("lm_eval") is None:
        raise BackendNotInstalled("lm-eval is not installed; install it with: pip install 'openbench-harness[eval]' "
                                  "(or: make setup)")
    return version("lm_eval")


def request_cache_prefix(model: ModelInfo, backend_cls, settings: dict, lm_eval_version: str,
                         apply_chat_template: bool, letters: str | None = None) -> Path:
    """Where lm-eval keeps answers for this model file, backend and settings (use_cache).

    lm-eval keys its cache by the request alone, so everything else that can change an
    answer goes into the file name: a different file, backend, engine or setting never
    reuses old answers, and a rerun after an interruption skips the finished requests.
    """
    from harness.core.paths import cache_dir
    from harness.output.store import _slug

    neutral = {k for k, meta in backend_cls.Settings.metadata().items() if meta.answer_neutral}
    key = {
        "model_sha256": model.sha256, "backend": backend_cls.name, "backend_version": backend_cls.installed_version(),
        "engine_version": backend_cls.engine_version(), "lm_eval": lm_eval_version, "adapter": ADAPTER_VERSION,
        # a setting that cannot change an answer (a thread count) is left out
        "settings": {k: v for k, v in sorted(settings.items()) if k not in neutral},
        "chat_template": apply_chat_template,
    }
    if letters:  # letter-scored answers (and generated-letter ones) never stand in for others
        key["letters"] = letters
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = cache_dir() / "lm-eval-requests"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{_slug(model.name or Path(model.path).stem)}-{backend_cls.name}-{digest}"


def prepare(request: EvalRequest):
    """Every check that can run before a process starts; returns the worker's job."""
    from harness.execution.eval_worker import EvalJob

    if request.limit is not None and not (request.limit >= 1 or 0 < request.limit < 1):
        raise ConfigError(f"--limit must be a count of at least 1 or a fraction between 0 and 1 (got {request.limit}); "
                          f"leave it out to run every document")
    if request.num_fewshot is not None and request.num_fewshot < 0:
        raise ConfigError(f"--num-fewshot must be 0 or more (got {request.num_fewshot})")
    if request.threads is not None and request.threads < 1:
        raise ConfigError(f"--threads must be at least 1 (got {request.threads})")
    if request.concurrency is not None and request.concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1 (got {request.concurrency})")
    if request.api_price is not None:
        from harness.measurement.cost import parse_api_price

        parse_api_price(request.api_price)
    lm_eval_version = check_lm_eval()
    backend_cls = registry.get(request.backend)
    check_installed(backend_cls)
    check_writable_dir(request.out_dir)
    if request.mc_scoring not in ("loglikelihood", "letters"):
        raise ConfigError(f"--mc-scoring must be loglikelihood or letters (got '{request.mc_scoring}')")
    selection = select_tasks(request.tasks, request.suite, request.limit, request.allow_code_execution)
    if request.mc_scoring == "letters":
        selection.letter_tasks = list(selection.tasks)
    if request.allow_generated_letters and not selection.letter_tasks:
        raise ConfigError("--allow-generated-letters is for letter scoring: add --mc-scoring letters")
    dirs = [check_tasks_dir(bundled_tasks_dir())] + [check_tasks_dir(Path(d)) for d in request.tasks_dirs]
    for name in selection.tasks:
        if name.endswith(".yaml") and not Path(name).is_file():
            raise TaskConfigError(f"--tasks {name}: no such task file")
    values = dict(request.settings)
    if request.threads is not None:
        threads = backend_cls.Settings.role("threads")
        if threads is None:
            raise ConfigError(f"backend '{backend_cls.name}' has no thread setting; leave out --threads")
        values[threads] = request.threads
    backend_cls.check_setting_names(values)
    # the backend resolves: a GGUF for llama.cpp, a converted Hugging Face directory for vLLM,
    # a served model for the openai backend
    model = backend_cls.resolve_model(request.model, values)  # every setting, checked before the network
    try:
        settings = backend_cls.default_settings(model, **values)
    except ValidationError as exc:
        raise setting_error(backend_cls.name, exc) from None
    from harness.core.backend import TextGenerator

    chat = request.apply_chat_template
    if chat is None:  # a chat API is asked in messages, as lm-eval's chat path builds them
        chat = issubclass(backend_cls, TextGenerator) and "messages" in backend_cls.prompt_forms(settings)
    multiturn = request.fewshot_as_multiturn
    if selection.letter_tasks:  # the letters protocol is a chat protocol: questions and few-shot turns as messages
        if request.apply_chat_template is False:
            raise ConfigError("letter scoring asks through the chat template; leave out --no-apply-chat-template")
        chat = True
        if multiturn is None:
            multiturn = True
    if multiturn and not chat:
        raise ConfigError("--fewshot-as-multiturn needs the chat path: add --apply-chat-template")
    run_id = new_run_id()
    letters = None
    if selection.letter_tasks:
        letters = "first-token, or generated where none" if request.allow_generated_letters else "first-token"
    cache = (str(request_cache_prefix(model, backend_cls, settings.model_dump(), lm_eval_version,
                                      chat, letters)) if request.use_cache else None)
    samples_path = str(request.out_dir.resolve() / f"eval-{run_id}.samples.jsonl") if request.log_samples else None
    return EvalJob(
        run_id=run_id, command=request.command, backend=backend_cls.name, model=model,
        settings=settings.model_dump(), selection=selection, tasks_dirs=[str(d) for d in dirs], limit=request.limit,
        num_fewshot=request.num_fewshot, seed=request.seed, gen_kwargs=request.gen_kwargs,
        apply_chat_template=chat,
        allow_code_execution=request.allow_code_execution, log_samples=request.log_samples,
        samples_path=samples_path, request_cache=cache, system_instruction=request.system_instruction,
        fewshot_as_multiturn=multiturn, concurrency=request.concurrency,
        api_price=request.api_price, allow_generated_letters=request.allow_generated_letters,
    )


def run_eval(request: EvalRequest, on_event: OnEvent | None = None) -> Outcome:
    job = prepare(request)
    outcome = Outcome()
    keep = outcome.keeper(request.out_dir)
    report = run_job("harness.execution.eval_worker", job, on_event, request.timeout_s, on_record=keep)
    if report.refused:
        raise TaskConfigError(report.refused.message)
    if report.stopped:
        outcome.stopped = report.stopped
        return outcome
    if not outcome.records:
        keep(failed_record(report.failure(), run_id=job.run_id, backend=job.backend, settings=job.settings,
                           model=job.model, command=job.command))
    return outcome
