"""The accuracy-measuring process: ``python -m harness.execution.eval_worker`` with an EvalJob on stdin.

Same machinery as the speed worker (harness.execution.runner.run_job): one process per run, typed
events (harness.core.events) on its channel, engine output moved to stderr. The tasks are
resolved and their data read before the model loads; a task problem ends the run with
a ``refused`` event (the parent prints one line and writes nothing), anything that
goes wrong after the model loaded becomes a failed record.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harness.core import registry
from harness.core.environment import fingerprint, redact
from harness.core.errors import HarnessError
from harness.core.events import CaseFailed, Channel, Phase, RecordDone, Refused, RequestsDone, serve_job
from harness.measurement.letters import LetterScoringError
from harness.core.models import ModelInfo
from harness.measurement.suites import TaskSelection

# The first load's context; a batch of requests that needs more reloads with enough
# (BackendLM's resize), so n_ctx ends up sized to the longest request.
INITIAL_N_CTX = 2048


class EvalJob(BaseModel):
    run_id: str
    command: list[str] = []
    backend: str
    model: ModelInfo
    settings: dict[str, Any]
    selection: TaskSelection
    tasks_dirs: list[str]  # bundled first; later folders override earlier ones by name
    limit: int | float | None = None
    num_fewshot: int | None = None
    seed: list[int] | None = None  # random, numpy, torch, few-shot
    gen_kwargs: str | None = None
    apply_chat_template: bool = False
    allow_code_execution: bool = False
    log_samples: bool = False
    samples_path: str | None = None
    request_cache: str | None = None  # lm-eval use_cache prefix (lm-eval appends _rank0.db)
    bootstrap_iters: int = 100000
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None  # None: lm-eval's default
    concurrency: int | None = None
    api_price: str | None = None  # NAME=IN/OUT per million tokens
    allow_generated_letters: bool = False


class TaskRefused(HarnessError):
    """Bad input found in the worker before any measurement: no record is written."""


def check_capabilities(cls, settings, model: ModelInfo, loaded, allow_code: bool, letter_leaves: set[str] = frozenset()) -> None:
    """Refuse, before the model loads, tasks the backend cannot serve: one line that names
    the missing capability and what would work. A letter-scored task needs what generation
    needs (one token, and its log-probabilities where the engine gives them)."""
    from harness.core.backend import capability_words, missing_for, serves

    needing = [n for n in loaded.needing_logprobs() if n not in letter_leaves]
    if needing and not serves(cls, settings, "loglikelihood"):
        runnable = [n for n in loaded.leaves if n not in needing]
        shown = ", ".join(sorted(needing)[:6]) + (f" and {len(needing) - 6} more" if len(needing) > 6 else "")
        can = (f"of the tasks asked for it can run {', '.join(sorted(runnable)[:6])}; " if runnable else "")
        raise TaskRefused(f"{shown} score{'s' if len(needing) == 1 else ''} log-likelihoods, which needs "
                      f"{missing_for(cls, settings, 'loglikelihood')}; {cls.describe(model, settings)} "
                      f"(backend '{cls.name}' has {capability_words(cls, settings)} only); {can}"
                      "--mc-scoring letters scores multiple-choice tasks from generated tokens, and the suite "
                      "open-vs-closed runs on it")
    generative = [n for n in loaded.leaves if n not in needing]
    if generative and not serves(cls, settings, "generate"):
        raise TaskRefused(f"{', '.join(sorted(generative)[:6])} generate text, which needs "
                      f"{missing_for(cls, settings, 'generate')}; backend '{cls.name}' has {capability_words(cls, settings)}")
    code = loaded.executing_code()
    if code and not allow_code:
        raise TaskRefused(f"{', '.join(code)} execute model-written code; add --allow-code-execution to run them "
                      "(sandboxed, see tasks/README.md)")
    if code:
        from harness.measurement import sandbox

        try:
            sandbox.check()
        except sandbox.SandboxUnavailable as exc:
            raise TaskRefused(f"{', '.join(code)} cannot run: {exc}") from None


def api_cost(price: str | None, usage: dict):
    from harness.measurement.cost import parse_api_price
    from harness.core.record import ApiCost

    if not price:
        return None
    p = parse_api_price(price)
    prompt = sum(u.prompt_tokens or 0 for u in usage.values())
    completion = sum(u.completion_tokens or 0 for u in usage.values())
    complete = all(u.unreported == 0 and (u.requests == 0 or u.prompt_tokens is not None) for u in usage.values())
    cost = (prompt * p.input_per_mtok + completion * p.output_per_mtok) / 1e6 if complete else None
    return ApiCost(price_name=p.name, input_per_mtok=p.input_per_mtok, output_per_mtok=p.output_per_mtok,
                   prompt_tokens=prompt, completion_tokens=completion, cost=cost)


def run_eval_job(job: EvalJob, channel: Channel) -> None:
    from harness.measurement.meters import MemorySampler, now_ns, rss_mib

    t_start = now_ns()
    from harness.measurement import accuracy, eval_results, eval_tasks
    from harness.core.record import EvalCost, EvalInfo, Failure, LoadResult
    from harness.core.record_factory import new_record

    eval_tasks.quiet_lm_eval()
    if job.allow_code_execution:
        os.environ["HARNESS_ALLOW_CODE_EXECUTION"] = "1"  # the bundled humaneval scorer's gate
    # (no phase event yet: a refused run prints nothing but its one error line)
    try:
        loaded = eval_tasks.load_tasks(job.selection.tasks, job.tasks_dirs)
    except HarnessError as exc:
        channel.send(Refused(message=redact(str(exc))))
        return

    letter_leaves: set[str] = set()
    if job.selection.letter_tasks:
        from harness.measurement import letters

        try:
            letter_leaves = letters.apply(loaded, job.selection.letter_tasks)
        except HarnessError as exc:
            channel.send(Refused(message=redact(str(exc))))
            return

    cls = registry.get(job.backend)
    settings = cls.Settings(**job.settings)
    try:
        check_capabilities(cls, settings, job.model, loaded, job.allow_code_execution, letter_leaves)
    except TaskRefused as exc:
        channel.send(Refused(message=str(exc)))
        return

    record = new_record(run_id=job.run_id, backend=cls.name, settings=settings.model_dump(), model=job.model,
                        command=job.command, environment=fingerprint(), engine_version=cls.engine_version())
    train_ctx = job.model.context_length_train
    context = cls.Settings.role("context")
    # a model run here is loaded for the context its requests need; a server's is its own
    sized = context is not None and not getattr(settings, context) and cls.has_tokenizer(settings)
    load_s = 0.0

    def load(n_ctx: int | None):
        nonlocal load_s
        s = settings.model_copy(update={context: n_ctx}) if sized and n_ctx else settings
        engine = cls(job.model, s)
        t0 = now_ns()
        info = engine.load()
        load_s += (now_ns() - t0) / 1e9
        return engine, info

    from harness.core.backend import TextGenerator

    # a chat API is sent the messages; an in-process model renders them with its own template
    takes_messages = issubclass(cls, TextGenerator) and "messages" in cls.prompt_forms(settings)
    try:
        chat = _chat_template(cls, job.model) if job.apply_chat_template and not takes_messages else None
    except HarnessError as exc:
        channel.send(Refused(message=str(exc)))
        return

    channel.send(Phase(what="loading model"))
    first_ctx = min(INITIAL_N_CTX, train_ctx) if train_ctx else INITIAL_N_CTX
    t0 = now_ns()
    try:
        engine, info = load(first_ctx)
    except HarnessError as exc:
        channel.send(CaseFailed(cause="load failed", detail=redact(str(exc))))
        return
    record.model_load = LoadResult(load_ms=(now_ns() - t0) / 1e6, rss_after_load_mib=rss_mib(),
                                   model_file_mib=job.model.size_bytes / 2**20, mmap=info.mmap, n_ctx=info.n_ctx,
                                   n_vocab=info.n_vocab)
    record.backend.device = info.device
    current = {"engine": engine}

    def resize(n_ctx: int):
        current["engine"].close()
        current["engine"], _ = load(n_ctx)
        channel.send(Phase(what=f"context resized to {n_ctx} tokens"))
        return current["engine"]

    special = cls.special_token_ids(job.model)
    seed_setting = cls.Settings.role("seed")
    identity = f"{cls.name}-{job.model.sha256[:16]}"
    lm = accuracy.BackendLM(
        engine, max_length=train_ctx or info.n_ctx, identity=identity, resize=resize if sized else None,
        chat_template=chat, prefix_token_id=special.get("bos"),
        progress=lambda kind, done, total: channel.send(RequestsDone(kind=kind, done=done, total=total)),
        concurrency=job.concurrency, seed=getattr(settings, seed_setting) if seed_setting else None,
        letter_tasks=frozenset(letter_leaves), allow_generated_letters=job.allow_generated_letters,
    )
    samples = job.selection.samples
    kwargs: dict[str, Any] = dict(
        model=lm, tasks=loaded.objects, task_manager=loaded.manager, log_samples=job.log_samples,
        apply_chat_template=job.apply_chat_template, confirm_run_unsafe_code=job.allow_code_execution,
        bootstrap_iters=job.bootstrap_iters,
    )
    if job.limit is not None:
        kwargs["limit"] = job.limit
    elif samples:
        kwargs["samples"] = {k: v for k, v in samples.items() if k in loaded.leaves}
    if job.num_fewshot is not None:  # otherwise each task's own (TruthfulQA's must stay 0)
        kwargs["num_fewshot"] = job.num_fewshot
    if job.seed is not None:
        kwargs.update(zip(("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed"), job.seed))
    if job.gen_kwargs:
        kwargs["gen_kwargs"] = job.gen_kwargs
    if job.request_cache:
        kwargs["use_cache"] = job.request_cache
    if job.system_instruction:
        kwargs["system_instruction"] = job.system_instruction
    if job.fewshot_as_multiturn is not None:
        kwargs["fewshot_as_multiturn"] = job.fewshot_as_multiturn
    import lm_eval

    channel.send(Phase(what="scoring"))
    results = None
    with MemorySampler() as mem:
        try:
            results = lm_eval.simple_evaluate(**kwargs)
        except LetterScoringError as exc:  # the API refuses what letter scoring needs: nothing to record
            channel.send(Refused(message=redact(str(exc))))
            return
        except HarnessError as exc:
            record.failures.append(Failure(cause="evaluation failed", detail=redact(str(exc))))
        except Exception as exc:
            sys.stderr.write(redact(traceback.format_exc()))
            record.failures.append(Failure(cause="evaluation failed", detail=redact(f"{type(exc).__name__}: {exc}")))
        finally:
            current["engine"] = lm.engine
            record.backend.settings = lm.engine.effective_settings()
            lm.engine.close()
    c = lm.counters
    requests_total = eval_results.requests_built(loaded.leaves) if results is not None else None
    received = c.requests_loglikelihood + c.requests_rolling + c.requests_generate
    from harness.core.record import TaskUsage

    usage = {task: TaskUsage(**vars(u)) for task, u in sorted(lm.usage.items())}
    info_hashes: dict[str, str] = {}
    samples_file = None
    if results is not None:
        from harness.measurement.letters import group_masses, protocol_for

        record.accuracy = eval_results.accuracy_results(results, {
            leaf: protocol_for(leaf, lm.letter_protocols, job.allow_generated_letters) for leaf in letter_leaves})
        if letter_leaves:
            record.accuracy += group_masses(record.accuracy, results)
        info_hashes = eval_results.task_config_hashes(results)
        if job.log_samples and job.samples_path:
            eval_results.write_samples(results, Path(job.samples_path), render=lm.rendered_prompt)
            samples_file = job.samples_path
    wall_s = (now_ns() - t_start) / 1e9
    record.evaluation = EvalInfo(
        lm_eval_version=eval_tasks.lm_eval_version(), tasks=job.selection.tasks, suite=job.selection.suite,
        limit=job.limit, samples={k: len(v) for k, v in samples.items()} if samples and job.limit is None else None,
        num_fewshot=job.num_fewshot, seed=job.seed, gen_kwargs=job.gen_kwargs, apply_chat_template=job.apply_chat_template,
        chat_template_sha256=chat.sha256 if chat else None, code_execution=job.allow_code_execution,
        skipped=job.selection.skipped, task_config_hashes=info_hashes,
        request_cache=f"{job.request_cache}_rank0.db" if job.request_cache else None, samples_file=samples_file,
        requests_total=requests_total,
        requests_recalled=max(0, requests_total - received) if requests_total is not None else None,
        cost=EvalCost(
            wall_s=wall_s, model_load_s=load_s, requests_loglikelihood=c.requests_loglikelihood,
            requests_loglikelihood_rolling=c.requests_rolling, requests_generate=c.requests_generate,
            contexts_evaluated=c.contexts, tokens_evaluated=c.tokens_evaluated,
            tokens_without_reuse=c.tokens_without_reuse, tokens_saved_by_reuse=c.tokens_saved_by_reuse,
            floor_tokens=c.floor_tokens, tokens_generated=c.tokens_generated, context_resizes=c.context_resizes,
            rollback_unsupported=c.rollback_unsupported, peak_rss_mib=mem.peaks.peak_rss_mib,
            generate_s=c.generate_s if c.requests_generate else None,
        ),
        system_instruction=job.system_instruction, fewshot_as_multiturn=job.fewshot_as_multiturn,
        concurrency=job.concurrency, usage=usage, api_cost=api_cost(job.api_price, usage),
    )
    if record.failures:
        record.status = "partial" if record.accuracy else "failed"
    record.wall_s = wall_s
    channel.send(RecordDone(record=record))


def _chat_template(cls, model: ModelInfo):
    from harness.measurement import chat_template

    found = cls.chat_template_source(model)
    if not found:
        raise TaskRefused(f"{model.ref} has no chat template; run without --apply-chat-template")
    source, bos, eos = found
    chat = chat_template.ChatTemplate(source, bos_token=bos, eos_token=eos)
    chat.render([{"role": "user", "content": "Hello"}])  # a template that fails on this fails before the model loads
    return chat


def _answer(exc: Exception) -> Refused | CaseFailed | None:
    """A refused task and bad input end the evaluation with an event; anything else is a crash."""
    if isinstance(exc, TaskRefused):
        return Refused(message=str(exc))
    if isinstance(exc, HarnessError):
        return CaseFailed(cause="evaluation failed", detail=redact(str(exc)))
    return None


def main() -> int:
    return serve_job(EvalJob, run_eval_job, _answer)


if __name__ == "__main__":
    sys.exit(main())
