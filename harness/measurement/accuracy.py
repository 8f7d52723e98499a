"""Accuracy through lm-eval on the backend contract.

``BackendLM`` is an ``lm_eval.api.model.LM`` (through lm-eval's ``TemplateLM``, which
splits context and continuation at the token boundary exactly as lm-eval's own models
do). Every number comes from the backend's logits, log-softmaxed in numpy:

* log-likelihood: the requests are grouped by context and the contexts sorted, so each
  context is evaluated once, and only the part it does not share with the previous
  one (``backend.truncate()`` rolls the KV cache back to the shared prefix). The
  first continuation token is scored from the context's last logits, the others from
  one pass over the continuation; ``is_greedy`` compares each token with the argmax.
  A backend whose cache cannot roll back starts over from an empty cache instead.
* rolling log-likelihood: lm-eval's own disjoint windows, scored the same way.
* generation: greedy (or sampled) tokens from ``backend.stream()``, stopped at the
  first stop sequence, reusing the prompt prefix already in the cache.

lm-eval's metrics, filters, aggregation and standard errors do the rest. What the
evaluation itself cost (tokens evaluated, tokens the reuse saved) is counted here."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from harness.core.backend import Backend, StepDecoder, TextGenerator
from harness.core.errors import BackendError, EvalError
from harness.measurement.chat_template import ChatTemplate


log = logging.getLogger(__name__)

# Rows of logits held at once when scoring many tokens (continuations, rolling windows):
# at most ~256 MiB of float32 whatever the vocabulary.
LOGITS_BUDGET_BYTES = 256 << 20
DEFAULT_MAX_GEN_TOKS = 256
CTX_ROUND = 256  # llama.cpp pads its context to 256 anyway
# (context, continuation) pairs per batch-scorer call: enough for an engine to batch well,
# few enough that progress and the request cache advance during a long task
BATCH_SCORER_PAIRS = 1024


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis, in float64."""
    x = logits.astype(np.float64, copy=False)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class TaskUsage:
    """One task's generation requests and the token counts the engine reported for them."""

    requests: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # reasoning tokens included, as the APIs count them
    reasoning_tokens: int | None = None
    prompt_tokens_cached: int | None = None
    retries: int = 0
    unreported: int = 0  # answers that came without a completion token count


@dataclass
class EvalCounters:
    """What the evaluation cost, in tokens; 'without reuse' is one full pass per request."""

    requests_loglikelihood: int = 0
    requests_rolling: int = 0
    requests_generate: int = 0
    contexts: int = 0  # distinct contexts scored
    tokens_evaluated: int = 0  # tokens passed through the model, generation steps included
    tokens_without_reuse: int = 0  # what one pass per request (lm-eval's hf/gguf way) would evaluate
    floor_tokens: int = 0  # each distinct context once + each continuation (minus its last token)
    tokens_generated: int = 0
    context_resizes: int = 0
    rollback_unsupported: bool = False
    generate_s: float = 0.0  # wall time inside generate_until (requests in flight overlap in it)

    @property
    def tokens_saved_by_reuse(self) -> int:
        return max(0, self.tokens_without_reuse - self.tokens_evaluated)


# ----------------------------------------------------------------------------- the LM


Progress = Callable[[str, int, int], None]  # request kind, done, total


class BackendLM(TemplateLM):
    """lm-eval's LM over one loaded Backend.

    ``resize(n_ctx)`` (optional) replaces the backend with one loaded for a larger
    context; it is called when the longest request of a batch does not fit, so the
    context is sized to the requests rather than to the model's maximum.
    """

    backend = "causal"  # lm-eval's TemplateLM reads this name: a decoder-only model

    def __init__(self, engine: Backend, *, max_length: int, identity: str,
                 resize: Callable[[int], Backend] | None = None, chat_template: ChatTemplate | None = None,
                 prefix_token_id: int | None = None, progress: Progress | None = None,
                 progress_every: int = 64, concurrency: int | None = None, seed: int | None = None,
                 letter_tasks: frozenset[str] = frozenset(), allow_generated_letters: bool = False):
        super().__init__()
        self.engine = engine
        self.max_length = max_length
        self.identity = identity
        self._resize = resize
        self._chat_template = chat_template
        self._prefix_token_id = prefix_token_id
        self._progress = progress
        self._progress_every = progress_every
        self._seq: list[int] = []  # what the engine's KV cache holds, as far as we asked it to
        self._chats: dict[str, bool] = {}  # conversation JSON -> add_generation_prompt
        self._takes_messages = isinstance(engine, TextGenerator) and "messages" in engine.prompt_forms(engine.settings)
        self.concurrency = concurrency
        self.seed = seed
        self.letter_tasks = letter_tasks
        self.allow_generated_letters = allow_generated_letters
        self.letter_protocols: dict[str, str] = {}  # letter-scored task -> how it was scored
        self.counters = EvalCounters()
        self.usage: dict[str, TaskUsage] = {}  # by task, from the engine's reported token counts
        self._encode = lru_cache(maxsize=8192)(self._encode_uncached)
        if isinstance(engine, StepDecoder):
            engine.reset()

    # -- identity and tokens ---------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        # names lm-eval's request-building cache; must be a safe file-name fragment
        return self.identity

    @property
    def eot_token_id(self) -> int:
        eos = self.engine.eos_token
        if eos is None:
            raise EvalError("the model has no end-of-sequence token; lm-eval needs one for empty contexts")
        return eos

    @property
    def prefix_token_id(self) -> int:
        # as lm-eval's hf model: the BOS token when the vocabulary has one, else EOS
        if self._prefix_token_id is not None:
            return self._prefix_token_id
        bos = self.engine.bos_token
        return bos if bos is not None else self.eot_token_id

    def _encode_uncached(self, string: str, add_special: bool | None) -> tuple[int, ...]:
        tokens = self.engine.tokenize(string, add_special=False)
        bos = self.engine.bos_token  # None unless the model asks for a BOS token
        # None: add BOS where the model wants one, unless the text already starts with it
        # (a rendered chat template often does)
        if add_special is not False and bos is not None and (not tokens or tokens[0] != bos):
            tokens = [bos] + tokens
        return tuple(tokens)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self._encode(string, add_special_tokens))

    def tok_decode(self, tokens: list[int]) -> str:
        return self.engine.detokenize(list(tokens))

    # -- chat ------------------------------------------------------------------------
    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self._chat_template.source if self._chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as lm-eval built it, kept as JSON messages (the request's context).

        A chat API is sent these messages; an in-process model renders them with its own
        template just before tokenizing. Both sides' requests (and --log-samples) therefore
        hold the same messages, which a reader can compare line by line.
        """
        if self._chat_template is None and not self._takes_messages:
            raise EvalError("this model file has no chat template; run without --apply-chat-template")
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in chat_history]
        key = json.dumps(messages, ensure_ascii=False)
        self._chats[key] = add_generation_prompt
        return key

    def _chat_messages(self, context: str) -> list[dict[str, str]] | None:
        return json.loads(context) if context in self._chats else None

    def _render(self, context: str) -> str:
        """A context as text: the chat template applied to it when it is a conversation."""
        if context not in self._chats:
            return context
        if self._chat_template is None:
            raise EvalError(f"backend '{self.engine.name}' needs a text prompt here, and the model has no chat template")
        return self._chat_template.render(json.loads(context), add_generation_prompt=self._chats[context])

    def rendered_prompt(self, context: str) -> str | None:
        """The text an in-process model was given for a conversation; None for a plain prompt
        or where the messages themselves were sent (a chat API)."""
        if context not in self._chats or self._chat_template is None:
            return None
        return self._render(context)

    def _encode_pair(self, context: str, continuation: str):
        return super()._encode_pair(self._render(context), continuation)

    # -- the KV cache ------------------------------------------------------------------
    def _ensure_context(self, needed: int) -> None:
        needed = self.engine.context_for(needed)
        if needed <= self.engine.n_ctx:
            return
        if self._resize is None:
            raise EvalError(f"a request needs {needed} tokens of context but the backend has {self.engine.n_ctx}")
        n_ctx = min(-(-needed // CTX_ROUND) * CTX_ROUND, max(self.max_length, needed))
        self.engine = self._resize(n_ctx)  # its load time counts in EvalCost.model_load_s
        self.counters.context_resizes += 1
        if isinstance(self.engine, StepDecoder):
            self.engine.reset()
        self._seq = []

    def _rollback(self, n: int) -> int:
        """Keep the first n cached tokens; returns how many are kept (0 when the cache cannot roll back)."""
        if n >= len(self._seq):
            return len(self._seq)
        if n == 0 or self.counters.rollback_unsupported:
            self.engine.reset()
            self._seq = []
            return 0
        try:
            self.engine.truncate(n)
        except BackendError:
            # e.g. a cache that cannot drop a suffix: from now on, start over each time
            self.counters.rollback_unsupported = True
            self.engine.reset()
            self._seq = []
            return 0
        del self._seq[n:]
        return n

    def _evaluate(self, tokens: list[int], want: str):
        try:
            out = self.engine.evaluate(tokens, logits=want)
        except BaseException:
            self._seq = []  # the cache state is unknown now
            try:
                self.engine.reset()
            except Exception:
                pass
            raise
        self._seq.extend(tokens)
        self.counters.tokens_evaluated += len(tokens)
        return out

    def _chunk_rows(self) -> int:
        return max(32, LOGITS_BUDGET_BYTES // (4 * max(1, self.engine.n_vocab)))

    def _score_following(self, first_logits: np.ndarray, tokens: list[int]) -> tuple[float, bool]:
        """Sum of log P(tokens[i] | cache + tokens[:i]) and whether every token is the argmax.

        ``first_logits`` are the logits after the cached sequence; tokens[:-1] are then
        evaluated in chunks with all logits.
        """
        lp = float(log_softmax(first_logits)[tokens[0]])
        greedy = int(np.argmax(first_logits)) == tokens[0]
        rest = tokens[:-1]
        step = self._chunk_rows()
        for i in range(0, len(rest), step):
            rows = self._evaluate(rest[i:i + step], "all")
            targets = np.asarray(tokens[i + 1:i + 1 + len(rows)])
            lps = log_softmax(rows)
            lp += float(lps[np.arange(len(targets)), targets].sum())
            greedy = greedy and bool((rows.argmax(axis=-1) == targets).all())
        return lp, greedy

    def _report(self, kind: str, done: int, total: int) -> None:
        if self._progress and (done == total or done % self._progress_every == 0):
            self._progress(kind, done, total)

    # -- log-likelihood ----------------------------------------------------------------
    def _fit(self, ctx: list[int], cont: list[int]) -> list[int]:
        """The context, cut from the left as lm-eval's hf model does when the pair is too long."""
        if len(cont) > self.max_length:
            raise EvalError(f"a continuation of {len(cont)} tokens does not fit the model's context of {self.max_length}")
        if len(ctx) + len(cont) - 1 > self.max_length:
            ctx = ctx[len(ctx) + len(cont) - 1 - self.max_length:]
        return ctx

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, kind: str = "loglikelihood",
                              report: bool = True) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple[int, ...], dict[tuple[int, ...], list[int]]] = {}
        for i, (_key, ctx, cont) in enumerate(requests):
            if not cont:
                results[i] = (0.0, True)  # log P(nothing) = 0
                continue
            ctx = self._fit(list(ctx), list(cont))
            groups.setdefault(tuple(ctx), {}).setdefault(tuple(cont), []).append(i)
            self.counters.tokens_without_reuse += len(ctx) + len(cont) - 1
        if groups:
            self._ensure_context(max(len(c) + len(k) - 1 for c, conts in groups.items() for k in conts))
        done = sum(r is not None for r in results)
        if "batch_scorer" in type(self.engine).capability_names(self.engine.settings):
            return self._score_batched(requests, groups, results, done, kind, report)
        if not isinstance(self.engine, StepDecoder):
            raise EvalError(f"backend '{self.engine.name}' cannot score log-likelihoods (it has neither a batch scorer "
                            "nor a step decoder)")
        for ctx_t in sorted(groups):
            ctx = list(ctx_t)
            kept = self._rollback(min(_common_prefix(self._seq, ctx), len(ctx) - 1))
            last = self._evaluate(ctx[kept:], "last")
            self.counters.contexts += 1
            self.counters.floor_tokens += len(ctx)
            for cont_t, indices in groups[ctx_t].items():
                cont = list(cont_t)
                self.counters.floor_tokens += len(cont) - 1
                if len(cont) > 1:
                    kept = self._rollback(len(ctx))
                    if kept < len(ctx):  # the cache could not roll back: evaluate the context again
                        self._evaluate(ctx[kept:], "none")
                answer = self._score_following(last, cont)
                for i in indices:
                    results[i] = answer
                    key = requests[i][0]
                    if key is not None and report:
                        self.cache_hook.add_partial("loglikelihood", key, answer)
                done += len(indices)
                if report:
                    self._report(kind, done, len(requests))
        return results  # type: ignore[return-value]

    def _score_batched(self, requests, groups, results, done: int, kind: str, report: bool):
        """The batch scorer's way: many (context, continuation) pairs per engine call, sorted
        so pairs that share a context are neighbours (an engine's prefix cache reuses it)."""
        pairs = [(ctx, cont, indices) for ctx in sorted(groups) for cont, indices in groups[ctx].items()]
        self.counters.contexts += len(groups)
        self.counters.floor_tokens += sum(len(c) for c in groups) + sum(len(k) - 1 for _, k, _ in pairs)
        for start in range(0, len(pairs), BATCH_SCORER_PAIRS):
            chunk = pairs[start:start + BATCH_SCORER_PAIRS]
            before = self.engine.scored_tokens_computed
            scores = self.engine.score_continuations([(list(c), list(k)) for c, k, _ in chunk])
            self.counters.tokens_evaluated += (sum(len(c) + len(k) - 1 for c, k, _ in chunk) if before is None
                                               else self.engine.scored_tokens_computed - before)
            for (_c, _k, indices), answer in zip(chunk, scores):
                answer = (float(answer[0]), bool(answer[1]))
                for i in indices:
                    results[i] = answer
                    key = requests[i][0]
                    if key is not None and report:
                        self.cache_hook.add_partial("loglikelihood", key, answer)
                done += len(indices)
            if report and self._progress:
                self._progress(kind, done, len(requests))
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        self.counters.requests_loglikelihood += len(requests)
        letters = [i for i, r in enumerate(requests) if getattr(r, "task_name", None) in self.letter_tasks]
        if not letters:
            return super().loglikelihood(requests, disable_tqdm=True)
        lettered = set(letters)
        others = [i for i in range(len(requests)) if i not in lettered]
        out: list[Any] = [None] * len(requests)
        if others:
            for i, answer in zip(others, super().loglikelihood([requests[i] for i in others], disable_tqdm=True)):
                out[i] = answer
        for i, answer in zip(letters, self._letter_scores([requests[i] for i in letters])):
            out[i] = answer
        return out

    # -- letter scoring (harness.measurement.letters) ------------------------------------------------
    def _letter_scores(self, requests) -> list[tuple[float, bool]]:
        """Each choice letter's log-probability at the first generated position after its
        chat-rendered question: one evaluation (or one generated token) per question, every
        choice of it read from the same distribution."""
        from harness.measurement import letters as L

        contexts: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            contexts.setdefault(req.args[0], []).append(i)
        results: list[Any] = [None] * len(requests)
        done = [0]

        def keep(context: str, top: list[tuple[str, float]], generated: bool) -> None:
            top = sorted(top, key=lambda t: -t[1])[:L.TOP_LOGPROBS]
            scores = L.letter_logprobs(top, len(L.LETTERS))
            for i in contexts[context]:
                req = requests[i]
                letter = str(req.args[1]).strip()
                if letter not in L.LETTERS:
                    raise EvalError(f"task '{req.task_name}' offered the choice {letter!r} where letter scoring "
                                    "expects a letter")
                results[i] = scores[L.LETTERS.index(letter)]
                self.cache_hook.add_partial("loglikelihood", req.args, results[i])
                protocol = L.GENERATED if generated else L.FIRST_TOKEN
                task = req.task_name
                if self.letter_protocols.get(task) not in (None, protocol):
                    protocol = "letters, mixed"  # some questions had log-probabilities, some not
                self.letter_protocols[task] = protocol
            done[0] += len(contexts[context])
            self._report("loglikelihood", done[0], len(requests))

        if isinstance(self.engine, StepDecoder):
            self._letters_in_process(contexts, keep)
        elif isinstance(self.engine, TextGenerator):
            self._letters_generated(contexts, keep, {c: requests[idx[0]].task_name for c, idx in contexts.items()})
        else:
            raise EvalError(f"backend '{self.engine.name}' can neither evaluate a prompt nor generate a token")
        return results

    def _letters_in_process(self, contexts: dict[str, list[int]], keep) -> None:
        from harness.measurement import letters as L

        prompts = {c: self.tok_encode(self._render(c)) for c in contexts}
        if prompts:
            self._ensure_context(max(len(p) for p in prompts.values()) + 1)
        # sorted prompts share prefixes with their neighbours (few-shot turns)
        for context in sorted(prompts, key=lambda c: prompts[c]):
            prompt = prompts[context]
            kept = self._rollback(min(_common_prefix(self._seq, prompt), len(prompt) - 1))
            logits = self._evaluate(prompt[kept:], "last")
            self.counters.contexts += 1
            self.counters.floor_tokens += len(prompt)
            self.counters.tokens_without_reuse += len(prompt)
            lps = log_softmax(np.asarray(logits, dtype=np.float64).reshape(-1))
            ids = np.argpartition(-lps, L.TOP_LOGPROBS)[:L.TOP_LOGPROBS]
            keep(context, [(self.tok_decode([int(t)]), float(lps[t])) for t in ids], False)

    def _letters_generated(self, contexts: dict[str, list[int]], keep, task_of: dict[str, str]) -> None:
        from harness.measurement import letters as L
        from harness.core.backend import GenerationRequest

        engine = self.engine
        forms = engine.prompt_forms(engine.settings)
        tokens_in = "tokens" in forms and engine.has_tokenizer(engine.settings)
        prompts = {context: self._generator_prompt(context, forms, tokens_in) for context in contexts}
        if tokens_in and prompts:
            self._ensure_context(max(len(p) for p in prompts.values()) + 1)
        answered: set[str] = set()

        def run(top: int) -> None:
            todo = [c for c in prompts if c not in answered]

            def hook(i: int, answer) -> None:
                context = todo[i]
                self._count_usage(task_of[context], answer)
                if answer.top_logprobs:
                    keep(context, answer.top_logprobs, False)
                elif top == 0 or self.allow_generated_letters:
                    keep(context, [(answer.text or "", 0.0)], True)
                else:
                    raise L.LetterScoringError(
                        f"backend '{engine.name}' ({engine.model.name or engine.model.ref}) answered without "
                        "log-probabilities for the generated token; letter scoring reads them (logprobs with "
                        "top_logprobs); add --allow-generated-letters to score the generated letter instead, a "
                        "protocol of its own")
                answered.add(context)

            engine.generate([GenerationRequest(prompt=prompts[c], max_tokens=1, temperature=0.0, seed=self.seed,
                                               top_logprobs=top) for c in todo],
                            concurrency=self.concurrency, on_result=hook)

        try:
            run(L.TOP_LOGPROBS)
        except BackendError as exc:
            if "logprob" not in str(exc).lower():
                raise
            if not self.allow_generated_letters:
                raise L.LetterScoringError(f"{exc}; letter scoring needs logprobs with top_logprobs "
                                           f"{L.TOP_LOGPROBS} (--allow-generated-letters scores the generated "
                                           "letter where an API refuses them)") from None
            run(0)  # the API refuses log-probabilities: the generated letter, as allowed

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = True) -> list[float]:
        self.counters.requests_rolling += len(requests)
        out: list[float] = []
        for n, req in enumerate(requests, 1):
            (string,) = req.args[:1]
            windows = [(None,) + make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(string, add_special_tokens=False), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens(windows, kind="loglikelihood_rolling", report=False)
            total = float(sum(lp for lp, _ in scores))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            self._report("loglikelihood_rolling", n, len(requests))
        return out

    # -- generation --------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = True) -> list[str]:
        """A step decoder generates here, reusing each prompt's shared prefix in its cache;
        any other backend through its text generator, every request at once."""
        from harness.measurement.meters import now_ns

        self.counters.requests_generate += len(requests)
        t0 = now_ns()
        try:
            if isinstance(self.engine, StepDecoder):
                return self._generate_stepped(requests)
            if isinstance(self.engine, TextGenerator):
                return self._generate_text(requests)
            raise EvalError(f"backend '{self.engine.name}' cannot generate text")
        finally:
            self.counters.generate_s += (now_ns() - t0) / 1e9

    def _gen_kwargs(self, gen_kwargs: dict, eos_text: str | None) -> tuple[list[str], int, float]:
        kwargs = normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text or None)
        max_gen = int(kwargs.pop("max_gen_toks"))
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        return until, max_gen, temperature

    def _generate_text(self, requests) -> list[str]:
        from harness.core.backend import GenerationRequest

        engine = self.engine
        forms = engine.prompt_forms(engine.settings)
        tokens_in = "tokens" in forms and engine.has_tokenizer(engine.settings)
        eos = engine.eos_token if tokens_in else None
        eos_text = self.tok_decode([eos]) if eos is not None else None
        prepared: list[tuple[Any, list[str], int, float]] = []
        for req in requests:
            context, gen_kwargs = req.args
            until, max_gen, temperature = self._gen_kwargs(gen_kwargs, eos_text)
            if tokens_in and max_gen >= self.max_length:
                raise EvalError(f"a task asks for {max_gen} new tokens but the model's context is {self.max_length}")
            prompt = self._generator_prompt(context, forms, tokens_in)
            if tokens_in:
                prompt = prompt[-(self.max_length - max_gen):]
            prepared.append((prompt, until, max_gen, temperature))
        if tokens_in and prepared:
            self._ensure_context(max(len(p) + g for p, _, g, _ in prepared))
        results: list[str] = [""] * len(requests)
        done = [0]

        def keep(i: int, answer) -> None:
            text = postprocess_generated_text(answer.text or "", prepared[i][1], None)
            results[i] = text
            self.cache_hook.add_partial("generate_until", requests[i].args, text)
            self._count_usage(getattr(requests[i], "task_name", None) or "", answer)
            done[0] += 1
            self._report("generate_until", done[0], len(requests))

        engine.generate([GenerationRequest(prompt=p, max_tokens=g, stop=tuple(u), temperature=t, seed=self.seed)
                         for p, u, g, t in prepared], concurrency=self.concurrency, on_result=keep)
        return results

    def _generator_prompt(self, context: str, forms, tokens_in: bool):
        """A request's context in the form a text generator takes: the conversation's messages
        where it takes messages, else token ids where it has a tokenizer, else text."""
        messages = self._chat_messages(context)
        if messages is not None and "messages" in forms:
            return messages
        if tokens_in:
            return self.tok_encode(self._render(context))
        return self._render(context)

    def _count_usage(self, task: str, answer) -> None:
        u = self.usage.setdefault(task, TaskUsage())
        u.requests += 1
        u.retries += answer.retries
        for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "prompt_tokens_cached"):
            value = getattr(answer, name)
            if value is not None:
                setattr(u, name, (getattr(u, name) or 0) + value)
        if answer.completion_tokens is None:
            u.unreported += 1
        else:
            self.counters.tokens_generated += answer.completion_tokens

    def _generate_stepped(self, requests) -> list[str]:
        eos_text = self.tok_decode([self.engine.eos_token]) if self.engine.eos_token is not None else None
        prepared = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text or None)
            max_gen = int(kwargs.pop("max_gen_toks"))
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            if max_gen >= self.max_length:
                raise EvalError(f"a task asks for {max_gen} new tokens but the model's context is {self.max_length}")
            prompt = self.tok_encode(self._render(context))
            prompt = prompt[-(self.max_length - max_gen):]  # cut from the left, as lm-eval's hf model
            prepared.append((prompt, until, max_gen, temperature, i))
        if prepared:
            self._ensure_context(max(len(p) + g for p, _, g, _, _ in prepared))
        results: list[str] = [""] * len(requests)
        # sorted prompts share prefixes with their neighbours (few-shot examples)
        for n, (prompt, until, max_gen, temperature, i) in enumerate(sorted(prepared, key=lambda x: x[0]), 1):
            results[i] = self._generate(prompt, until, max_gen, temperature)
            self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
            self._report("generate_until", n, len(requests))
        return results

    def _generate(self, prompt: list[int], until: list[str], max_gen: int, temperature: float) -> str:
        if not prompt:
            prompt = [self.prefix_token_id]
        kept = self._rollback(min(_common_prefix(self._seq, prompt), len(prompt) - 1))
        self.counters.tokens_without_reuse += len(prompt)
        longest_stop = max((len(s) for s in until), default=0)
        generated: list[int] = []
        text = ""
        stopped = False
        self._seq = []  # unknown while the engine generates
        stream = self.engine.stream(prompt[kept:], max_gen, ignore_eos=False, temperature=temperature)
        self.counters.tokens_evaluated += len(prompt) - kept
        try:
            for token in stream:
                generated.append(token)
                before = len(text)
                text = self.tok_decode(generated)
                # a stop sequence that just appeared ends within the new text
                tail = text[max(0, before - longest_stop):]
                if any(s and s in tail for s in until):
                    stopped = True
                    break
        except BaseException:
            self.engine.reset()
            raise
        finally:
            stream.close()
        # each generated token went through the model, except the one we stopped at
        steps = len(generated) - 1 if stopped else len(generated)
        self.counters.tokens_evaluated += steps
        self.counters.tokens_without_reuse += steps
        self.counters.tokens_generated += len(generated)
        # keep the prompt in the cache for the next request's shared prefix
        try:
            if self.counters.rollback_unsupported:
                raise BackendError("no rollback")
            self.engine.truncate(len(prompt))
            self._seq = list(prompt)
        except BackendError:
            self.counters.rollback_unsupported = True
            self.engine.reset()
        return postprocess_generated_text(text, until, None)


