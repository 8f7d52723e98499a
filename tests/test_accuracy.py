"""The lm-eval adapter on the real SmolLM2 GGUF through the real llama-cpp-python.

Expected values are computed here straight from the backend's logits, independently
of the adapter's bookkeeping (prefix reuse, rollback, grouping). llama.cpp's numbers
depend slightly on how tokens are split into batches, so a check is exact where the
test evaluates the same batches as the adapter and carries a tolerance where it does
not (one pass over context and continuation together).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import CachingLM  # noqa: E402

from harness.measurement.accuracy import BackendLM, log_softmax

from harness.measurement.chat_template import ChatTemplate

from harness.core.errors import EvalError  # noqa: E402

pytestmark = pytest.mark.slow

CONTEXT = "The following are multiple choice questions (with answers) about geography.\n\nWhat is the capital of France?\nA. Berlin\nB. Madrid\nC. Paris\nD. Rome\nAnswer:"
CHOICES = [" A", " B", " C", " D", " Paris, the capital and largest city of France"]


@pytest.fixture(scope="module")
def engine(smollm2):
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings

    b = LlamaCppBackend(smollm2, LlamaCppSettings(n_ctx=1024, n_threads=1))
    b.load()
    yield b
    b.close()


@pytest.fixture
def lm(engine):
    return BackendLM(engine, max_length=1024, identity="test", prefix_token_id=1)


def ll_request(ctx: str, cont: str, idx: int = 0) -> Instance:
    return Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=idx)


def split(engine, ctx: str, cont: str) -> tuple[list[int], list[int]]:
    """lm-eval's context/continuation split: encode the whole, cut at the context's length."""
    whole = engine.tokenize(ctx + cont, add_special=False)
    ctx_t = engine.tokenize(ctx, add_special=False)
    return ctx_t, whole[len(ctx_t):]


def same_batches(engine, ctx_t: list[int], cont_t: list[int]) -> tuple[float, bool]:
    """Score as the adapter evaluates: the context in one pass, then the continuation."""
    engine.reset()
    first = engine.evaluate(ctx_t, logits="last")
    rows = [first] + (list(engine.evaluate(cont_t[:-1], logits="all")) if len(cont_t) > 1 else [])
    lp = sum(float(log_softmax(rows[i])[t]) for i, t in enumerate(cont_t))
    return lp, all(int(np.argmax(rows[i])) == t for i, t in enumerate(cont_t))


def one_pass(engine, ctx_t: list[int], cont_t: list[int]) -> float:
    engine.reset()
    rows = engine.evaluate(ctx_t + cont_t[:-1], logits="all")
    return sum(float(log_softmax(rows[len(ctx_t) - 1 + i])[t]) for i, t in enumerate(cont_t))


def test_loglikelihood_equals_probabilities_from_the_logits(lm, engine):
    answers = lm.loglikelihood([ll_request(CONTEXT, c, i) for i, c in enumerate(CHOICES)])
    assert len(answers) == len(CHOICES)
    for cont, (lp, greedy) in zip(CHOICES, answers):
        ctx_t, cont_t = split(engine, CONTEXT, cont)
        expected, expected_greedy = same_batches(engine, ctx_t, cont_t)
        assert lp == pytest.approx(expected, abs=1e-6), cont
        assert greedy == expected_greedy
        # independent of batching: one pass over everything agrees up to llama.cpp's noise
        assert lp == pytest.approx(one_pass(engine, ctx_t, cont_t), abs=0.05 * len(cont_t) + 0.05), cont
        assert lp < 0
    # the four letters are a distribution's share: their probabilities sum to at most 1
    assert sum(math.exp(lp) for lp, _ in answers[:4]) <= 1.0 + 1e-9
    # one context evaluated once for five continuations; only the long one's tail costs extra
    long_t = split(engine, CONTEXT, CHOICES[-1])[1]
    assert lm.counters.contexts == 1
    assert lm.counters.tokens_evaluated == len(split(engine, CONTEXT, " A")[0]) + len(long_t) - 1
    assert lm.counters.tokens_saved_by_reuse > 3 * lm.counters.tokens_evaluated // 2


def test_shared_prefix_is_reused_across_contexts(lm, engine):
    shots = "Q: What is 2+2?\nA: 4\n\nQ: What is 3+3?\nA: 6\n\n"
    questions = ["Q: What is 5+5?\nA:", "Q: What is 1+1?\nA:", "Q: What is 7+2?\nA:"]
    reqs = [ll_request(shots + q, c, i * 2 + j) for i, q in enumerate(questions) for j, c in enumerate([" 10", " 2"])]
    answers = lm.loglikelihood(reqs)
    for req, (lp, _greedy) in zip(reqs, answers):
        ctx_t, cont_t = split(engine, *req.args)
        assert lp == pytest.approx(one_pass(engine, ctx_t, cont_t), abs=0.05 * len(cont_t) + 0.05)
    shot_tokens = len(engine.tokenize(shots, add_special=False))
    # the few-shot block went through the model once, not three times
    assert lm.counters.tokens_evaluated < lm.counters.floor_tokens - shot_tokens


def test_is_greedy_is_exact(engine):
    ctx_t = engine.tokenize("Once upon a time, there was a little", add_special=False)
    engine.reset()
    greedy = []
    logits = engine.evaluate(ctx_t, logits="last")
    for _ in range(4):
        greedy.append(int(np.argmax(logits)))
        logits = engine.evaluate([greedy[-1]], logits="last")
    lm = BackendLM(engine, max_length=1024, identity="test")  # a new adapter: it owns the engine's cache
    (lp, is_greedy), = lm._loglikelihood_tokens([(None, ctx_t, greedy)])
    assert is_greedy
    # the same tokens with the last one swapped for the runner-up are not greedy
    engine.reset()
    rows = engine.evaluate(ctx_t + greedy[:-1], logits="all")
    runner_up = int(np.argsort(rows[-1])[-2])
    lm = BackendLM(engine, max_length=1024, identity="test")
    (lp2, is_greedy2), = lm._loglikelihood_tokens([(None, ctx_t, greedy[:-1] + [runner_up])])
    assert not is_greedy2
    assert lp2 < lp


def test_token_boundary_follows_template_lm(lm, engine):
    # a trailing space in the context moves into the continuation (lm-eval's TemplateLM)
    (a, _), (b, _) = lm.loglikelihood([ll_request("The answer is", " 42"), ll_request("The answer is ", "42")])
    assert a == b
    # an empty context is conditioned on the prefix token (BOS, as lm-eval's hf model)
    (lp, _), = lm.loglikelihood([ll_request("", "Hello world")])
    cont_t = engine.tokenize("Hello world", add_special=False)
    expected, _ = same_batches(engine, [1], cont_t)
    assert lp == pytest.approx(expected, abs=1e-6)


def test_rolling_loglikelihood(lm, engine):
    text = "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy."
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    toks = engine.tokenize(text, add_special=False)
    expected, _ = same_batches(engine, [1], toks)
    assert total == pytest.approx(expected, abs=1e-6)

    # a window shorter than the text: every token is still scored exactly once
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    short = BackendLM(engine, max_length=8, identity="test", prefix_token_id=1)
    (total_short,) = short.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(toks, 1, 8, 1)]
    assert sum(len(p) for _, p in windows) == len(toks) and len(windows) > 2
    expected_short = sum(same_batches(engine, c, p)[0] for c, p in windows)
    assert total_short == pytest.approx(expected_short, abs=1e-6)
    assert total_short < total  # less context, lower likelihood


def gen_request(ctx: str, **kwargs) -> Instance:
    return Instance(request_type="generate_until", doc={}, arguments=(ctx, kwargs), idx=0)


def greedy_text(engine, prompt: str, n: int) -> str:
    engine.reset()
    toks = list(engine.stream(engine.tokenize(prompt, add_special=False), n))
    return engine.detokenize(toks)


def test_generate_until_stops_at_stop_sequences(engine):
    prompt = "Question: What is 2+2?\nAnswer: 4\n\nQuestion: What is 3+3?\nAnswer: 6\n\nQuestion: What is 5+4?\nAnswer:"
    full = greedy_text(engine, prompt, 40)
    five = greedy_text(engine, prompt, 5)
    assert "\n" in full and "Question:" in full  # the model goes on past the answer
    lm = BackendLM(engine, max_length=1024, identity="test")
    (line,) = lm.generate_until([gen_request(prompt, until=["\n"], max_gen_toks=40, do_sample=False)])
    assert line == full.split("\n")[0] and line.strip()
    assert lm.counters.tokens_generated < 40  # it stopped early, not after 40 tokens
    (upto,) = lm.generate_until([gen_request(prompt, until=["Question:"], max_gen_toks=40, do_sample=False)])
    assert upto == full.split("Question:")[0] and "\n" in upto
    # no stop sequence met: exactly max_gen_toks tokens
    (capped,) = lm.generate_until([gen_request(prompt, until=["@@@"], max_gen_toks=5, do_sample=False)])
    assert capped == five


def test_generation_reuses_the_prompt_prefix(lm, engine):
    shots = "Question: What is 2+2?\nAnswer: 4\n\nQuestion: What is 3+3?\nAnswer: 6\n\n"
    prompts = [shots + f"Question: What is {a}+1?\nAnswer:" for a in (5, 7, 8)]
    outs = lm.generate_until([gen_request(p, until=["\n"], max_gen_toks=8, do_sample=False) for p in prompts])
    for p, out in zip(prompts, outs):
        assert out == greedy_text(engine, p, 8).split("\n")[0]
    assert lm.counters.tokens_saved_by_reuse >= 2 * len(engine.tokenize(shots, add_special=False)) - 2


def test_request_cache_keeps_answers_finished_before_an_interruption(engine, tmp_path):
    done = []

    def interrupt_after_first(kind, n, total):
        done.append(n)
        if len(done) == 1:
            raise KeyboardInterrupt

    contexts = ["The sky is", "Grass is", "Snow is"]
    reqs = [ll_request(c, " blue", i) for i, c in enumerate(contexts)]
    first = BackendLM(engine, max_length=1024, identity="test", progress=interrupt_after_first, progress_every=1)
    with pytest.raises(KeyboardInterrupt):
        CachingLM(first, str(tmp_path / "cache.db")).loglikelihood(reqs)
    again = BackendLM(engine, max_length=1024, identity="test")
    answers = CachingLM(again, str(tmp_path / "cache.db")).loglikelihood(reqs)
    assert again.counters.requests_loglikelihood == len(reqs) - 1  # the finished one came from the cache
    fresh = BackendLM(engine, max_length=1024, identity="test").loglikelihood(reqs)
    assert [a[0] for a in answers] == pytest.approx([f[0] for f in fresh], abs=1e-6)


def test_context_grows_to_the_longest_request(smollm2, engine):
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings

    made = []

    def resize(n_ctx):
        made.append(n_ctx)
        small.close()
        b = LlamaCppBackend(smollm2, LlamaCppSettings(n_ctx=n_ctx, n_threads=1))
        b.load()
        return b

    small = LlamaCppBackend(smollm2, LlamaCppSettings(n_ctx=256, n_threads=1))
    small.load()
    lm = BackendLM(small, max_length=8192, identity="test", resize=resize)
    ctx = " ".join(["word"] * 400)
    (lp, _), = lm.loglikelihood([ll_request(ctx, " word")])
    assert made == [512] and lm.engine.n_ctx >= 401 and lm.counters.context_resizes == 1
    ctx_t, cont_t = split(engine, ctx, " word")
    assert lp == pytest.approx(one_pass(engine, ctx_t, cont_t), abs=0.1)
    lm.engine.close()


def test_thread_count_does_not_change_answers(smollm2):
    # why the request-cache key leaves the thread count out (harness.commands.evaluation)
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings

    toks = list(range(100, 164))
    out = []
    for threads in (1, 2):
        b = LlamaCppBackend(smollm2, LlamaCppSettings(n_ctx=512, n_threads=threads))
        b.load()
        out.append(b.evaluate(toks, logits="all"))
        b.close()
    assert np.array_equal(out[0], out[1])


SMOL_TEMPLATE_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_chat_template_from_the_gguf(smollm2_path):
    from harness.measurement.chat_template import gguf_special_ids, gguf_token_texts
    from harness.core.models import read_chat_template

    ids = gguf_special_ids(smollm2_path)
    texts = gguf_token_texts(smollm2_path, [ids["bos"], ids["eos"]])
    assert texts == {1: "<|im_start|>", 2: "<|im_end|>"}
    chat = ChatTemplate(read_chat_template(smollm2_path), texts[1], texts[2])
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    assert chat.render(msgs) == SMOL_TEMPLATE_SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    # lm-eval's gen_prefix: the last (assistant) message is continued, not closed
    prefilled = chat.render(msgs + [{"role": "assistant", "content": "The answer is"}], add_generation_prompt=False)
    assert prefilled.endswith("<|im_start|>assistant\nThe answer is")


def test_chat_template_is_sandboxed():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(EvalError, match="sandbox"):
        ChatTemplate(evil).render([{"role": "user", "content": "hi"}])
    with pytest.raises(EvalError, match="line 1"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(EvalError, match="no system"):
        ChatTemplate("{{ raise_exception('no system messages') }}").render([])


def test_chat_format_requests_through_lm_eval(smollm2_path, engine):
    from harness.measurement.chat_template import gguf_token_texts
    from harness.core.models import read_chat_template

    texts = gguf_token_texts(smollm2_path, [1, 2])
    lm = BackendLM(engine, max_length=1024, identity="test",
                   chat_template=ChatTemplate(read_chat_template(smollm2_path), texts[1], texts[2]))
    context = lm.apply_chat_template([{"role": "user", "content": "Hi"}])
    # the request holds the conversation itself (what a chat API is sent, what --log-samples shows) ...
    assert json.loads(context) == [{"role": "user", "content": "Hi"}] and lm.tokenizer_name == "test"
    # ... and the model's own template renders it just before tokenizing
    rendered = lm._render(context)
    assert rendered.startswith("<|im_start|>system") and rendered.endswith("<|im_start|>assistant\n")
    # the rendered markers are the model's special tokens, not text
    toks = lm.tok_encode(rendered)
    assert toks[0] == 1 and toks.count(2) == 2
    # a log-likelihood request on a conversation scores the rendered prompt
    (chat_answer,) = lm.loglikelihood([ll_request(context, "Hello", 0)])
    (text_answer,) = BackendLM(engine, max_length=1024, identity="test").loglikelihood([ll_request(rendered, "Hello", 0)])
    assert chat_answer[0] == pytest.approx(text_answer[0], abs=1e-6)
    plain = BackendLM(engine, max_length=1024, identity="test")
    with pytest.raises(EvalError, match="no chat template"):
        plain.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_a_cache_that_cannot_roll_back_gives_the_same_answers(smollm2, engine):
    """Some caches (recurrent, some sliding-window ones) cannot drop a suffix: truncate()
    raises; the adapter then starts over from an empty cache and must answer the same."""
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
    from harness.core.errors import BackendError

    class NoRollback(LlamaCppBackend):  # the real engine with rollback refused, as such a cache does
        def truncate(self, n_tokens):
            if n_tokens < self.n_past:
                self.reset()
                raise BackendError("this model's cache cannot roll back; re-evaluate from the start")

    stiff = NoRollback(smollm2, LlamaCppSettings(n_ctx=1024, n_threads=1))
    stiff.load()
    try:
        conts = CHOICES[::-1] + [" Berlin, which is in Germany"]  # long ones first: they need a rollback
        reqs = [ll_request(CONTEXT, c, i) for i, c in enumerate(conts)] + [ll_request("Q: 1+1?\nA:", " 2", 9)]
        lm_stiff = BackendLM(stiff, max_length=1024, identity="test")
        answers = lm_stiff.loglikelihood(reqs)
        assert lm_stiff.counters.rollback_unsupported
        expected = BackendLM(engine, max_length=1024, identity="test").loglikelihood(reqs)
        assert [a[0] for a in answers] == pytest.approx([e[0] for e in expected], abs=1e-6)
        assert [a[1] for a in answers] == [e[1] for e in expected]
        prompt = "Question: What is 2+2?\nAnswer:"
        gen = [gen_request(prompt, until=["\n"], max_gen_toks=6, do_sample=False)] * 2
        assert lm_stiff.generate_until(gen) == BackendLM(engine, max_length=1024, identity="test").generate_until(gen)
    finally:
        stiff.close()


def test_a_group_reports_the_shots_its_tasks_share():
    from harness.measurement.eval_results import group_shots

    subtasks = {"mmlu": ["stem", "other"], "stem": ["algebra", "anatomy"], "other": ["marketing"]}
    assert group_shots("mmlu", {"algebra": 5, "anatomy": 5, "marketing": 5}, subtasks) == 5
    assert group_shots("mmlu", {"algebra": 5, "anatomy": 0, "marketing": 5}, subtasks) is None  # mixed: not one count
    assert group_shots("anatomy", {"anatomy": 5}, subtasks) is None  # a task's own count is lm-eval's
