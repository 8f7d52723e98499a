"""llama.cpp's batched score_continuations against the step decoder, on the real SmolLM2 GGUF.

llama.cpp's CPU kernels round differently once a decode holds more tokens (a single
sequence scored in one pass and token by token already differs by tenths of a nat), so
where the batched path puts other documents into the same decode, "equal" means within
the step decoder's own spread between those two exact ways of evaluating, with the same
answer chosen for every document. Where the batch holds the same tokens as the step
decoder's single pass (one pair per call), the figures are identical.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from harness.measurement.accuracy import log_softmax
from harness.core.backend import score_by_steps

pytestmark = pytest.mark.slow

VAL = Path(__file__).resolve().parent.parent / "tasks" / "data" / "mmlu" / "val.jsonl.gz"
FEWSHOT = "The following are multiple choice questions (with answers) about science.\n\n"


@pytest.fixture(scope="module")
def engine(smollm2):
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings

    b = LlamaCppBackend(smollm2, LlamaCppSettings(n_ctx=1024, n_threads=1))
    b.load()
    yield b
    b.close()


@pytest.fixture(scope="module")
def documents(engine):
    """Real two-choice questions as (context, [continuations], correct index): half of them
    after a shared few-shot-style prefix, half without."""
    with gzip.open(VAL, "rt") as fh:
        rows = [json.loads(line) for line, _ in zip(fh, range(8))]
    docs = []
    for i, r in enumerate(rows):
        text = f"{FEWSHOT if i % 2 else ''}Question: {r['question'].strip()}\nAnswer:"
        ctx = [engine.bos_token or 1] + engine.tokenize(text, add_special=False)
        wrong = (r["answer"] + 1) % 4
        conts = [engine.tokenize(" " + r["choices"][k], add_special=False) for k in (r["answer"], wrong)]
        docs.append((ctx, conts))
    return docs


def pairs_of(documents):
    return [(ctx, cont) for ctx, conts in documents for cont in conts]


def token_by_token(engine, ctx, cont) -> float:
    engine.reset()
    rows = [engine.evaluate(ctx[:1], logits="last")]
    rows += [engine.evaluate([t], logits="last") for t in ctx[1:] + cont[:-1]]
    rows = rows[len(ctx) - 1:]
    return sum(float(log_softmax(rows[i])[t]) for i, t in enumerate(cont))


@pytest.fixture(scope="module")
def step(engine, documents):
    pairs = pairs_of(documents)
    one_pass = score_by_steps(engine, pairs)
    stepped = [token_by_token(engine, c, k) for c, k in pairs]
    # the step decoder's own spread per scored token: the same pair in one pass and token by token
    noise = max(abs(a[0] - b) / len(k) for a, b, (_, k) in zip(one_pass, stepped, pairs))
    return one_pass, noise


def within_noise(got: float, ref: float, noise: float, n_tokens: int) -> bool:
    # twice the step decoder's own per-token spread: the batched path and the step decoder
    # each sit somewhere within the kernels' rounding
    return abs(got - ref) <= 2 * noise * n_tokens + 0.1


def test_one_pair_per_call_is_exactly_the_step_decoder(engine, documents, step):
    one_pass, _ = step
    single = [engine.score_continuations([p])[0] for p in pairs_of(documents)]
    assert [s[0] for s in single] == pytest.approx([s[0] for s in one_pass], abs=1e-6)
    assert [s[1] for s in single] == [s[1] for s in one_pass]


def test_batched_equals_the_step_decoder_within_its_noise_with_the_same_answers(engine, documents, step):
    one_pass, noise = step
    pairs = pairs_of(documents)
    batched = engine.score_continuations(pairs)
    assert 0 < noise < 0.5  # the kernels' rounding is real but small
    for (lp, _), (ref, _), (_, cont) in zip(batched, one_pass, pairs):
        assert within_noise(lp, ref, noise, len(cont)), (lp, ref, noise, len(cont))
    k, decided = 0, 0
    for _ctx, conts in documents:
        n = len(conts)
        ours, ref = [b[0] for b in batched[k:k + n]], [s[0] for s in one_pass[k:k + n]]
        margin = abs(ref[0] - ref[1])
        # the same answer, unless the step decoder's own choice is a tie at the kernels' precision
        if margin > 2 * noise * max(map(len, conts)) + 0.1:
            assert np.argmax(ours) == np.argmax(ref), (ours, ref)
            decided += 1
        k += n
    assert decided >= len(documents) // 2  # the check is not vacuous
    # the order of the pairs does not change a figure: the batch is sorted inside
    assert engine.score_continuations(pairs[::-1])[::-1] == batched


def test_a_document_does_not_see_the_others_in_its_decode(engine, documents):
    """The same document beside different neighbours of the same lengths: identical figures
    (each token attends only to its own sequences' cells)."""
    pairs = pairs_of(documents)
    first = pairs[0]
    others = pairs[2:]
    # neighbours with the same token counts but other tokens: each id shifted by one
    shifted = [([c[0]] + [t + 1 for t in c[1:]], [t + 1 for t in k]) for c, k in others]
    a = engine.score_continuations([first] + others)[0]
    b = engine.score_continuations([first] + shifted)[0]
    assert a == b


def test_prefix_kept_between_batches(engine, documents, step, monkeypatch):
    """Small batches: the shared prefix crosses from one decode to the next as sequence 0."""
    import harness.backends.llamacpp as llamacpp

    one_pass, noise = step
    pairs = pairs_of(documents)
    monkeypatch.setattr(llamacpp, "SCORE_BATCH_TOKENS", 1)  # as few pairs per decode as the context holds
    monkeypatch.setattr(llamacpp, "SCORE_MAX_SEQS", 3)  # two sequences per decode
    engine._scorer.close()
    engine._scorer = None
    try:
        small = engine.score_continuations(pairs)
    finally:
        engine._scorer.close()
        engine._scorer = None
    for (lp, _), (ref, _), (_, cont) in zip(small, one_pass, pairs):
        assert within_noise(lp, ref, noise, len(cont)), (lp, ref, noise, len(cont))


def test_main_context_is_left_alone(engine):
    """Scoring runs on a context of its own: a sequence being decoded carries on as if nothing ran."""
    tokens = engine.tokenize("The capital of France is", add_special=True)
    paris = engine.tokenize(" Paris", add_special=False)
    engine.reset()
    engine.evaluate(tokens)
    undisturbed = engine.evaluate(paris, logits="last")
    engine.reset()
    engine.evaluate(tokens)
    engine.score_continuations([(tokens, paris), (tokens[:3], paris)])
    assert engine.n_past == len(tokens)
    assert np.array_equal(engine.evaluate(paris, logits="last"), undisturbed)
    engine.reset()


def test_bad_pairs_are_refused(engine):
    with pytest.raises(ValueError):
        engine.score_continuations([([], [5])])
    with pytest.raises(ValueError):
        engine.score_continuations([([1, 2], [])])
    assert engine.score_continuations([]) == []
