"""The prompts a load test sends: random ones of exact token lengths (through the model's own
tokenizer), or a dataset's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.core.errors import BackendNotInstalled, ConfigError
from harness.measurement.traffic_options import TrafficRequest


# ------------------------------------------------------------------ prompts


class LocalTokenizer:
    """A GGUF model's tokenizer through llama-cpp-python, vocabulary only (no weights)."""

    def __init__(self, gguf_path: str):
        try:
            import llama_cpp
        except ImportError:
            raise BackendNotInstalled("random prompts from a GGUF tokenizer need llama-cpp-python; run: make setup") from None
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=False):  # llama.cpp warns about context size even for a vocabulary
            self._llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
        vocab = self._llm._model.vocab
        self.normal_ids = np.array([i for i in range(self._llm.n_vocab())
                                    if not llama_cpp.llama_vocab_is_control(vocab, i)], dtype=np.int64)

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode(), add_bos=False, special=False)

    def detokenize(self, ids: list[int]) -> str:
        return self._llm.detokenize(list(ids)).decode("utf-8", "replace")


def random_prompt(tok: LocalTokenizer, n: int, rng: np.random.Generator) -> tuple[str, int]:
    """Text that re-tokenizes to n tokens, from random normal tokens (vLLM's random dataset idea).

    Decoding random ids and encoding the text again merges or splits some of them, so
    the ids are topped up or cut until the text's own token count is n (a few passes).
    """
    ids = rng.choice(tok.normal_ids, size=n).tolist()
    text = tok.detokenize(ids)
    for _ in range(10):
        got = tok.tokenize(text)
        if len(got) == n:
            return text, n
        ids = got[:n] if len(got) > n else got + rng.choice(tok.normal_ids, size=n - len(got)).tolist()
        text = tok.detokenize(ids)
    return text, len(tok.tokenize(text))


def dataset_prompts(path: Path) -> list[str]:
    """JSON lines with a "prompt" (or "text") field, or plain text, one prompt per line."""
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"--dataset {path}: line {lineno} is not valid JSON") from None
            text = data.get("prompt") or data.get("text")
            if not isinstance(text, str) or not text:
                raise ConfigError(f"--dataset {path}: line {lineno} has no \"prompt\" (or \"text\") string")
            prompts.append(text)
        else:
            prompts.append(line)
    if not prompts:
        raise ConfigError(f"--dataset {path} has no prompts")
    return prompts


@dataclass
class Prompt:
    text: str
    tokens: int | None  # as the harness's tokenizer counts them; the server's usage report wins


def build_prompts(req: TrafficRequest, count: int, tok: LocalTokenizer | None) -> list[Prompt]:
    rng = np.random.default_rng(req.seed)
    if req.dataset is not None:
        texts = dataset_prompts(req.dataset)
        order = rng.permutation(len(texts)).tolist()
        out = []
        for i in range(count):
            text = texts[order[i % len(texts)]]
            if tok is not None and req.input_len is not None:
                ids = tok.tokenize(text)[: req.input_len]
                text = tok.detokenize(ids)
            out.append(Prompt(text, len(tok.tokenize(text)) if tok is not None else None))
        return out
    if tok is None:
        raise ConfigError("random prompts need the model's tokenizer: give --model REF (the GGUF the server runs) "
                          "or --dataset FILE")
    return [Prompt(*random_prompt(tok, req.input_len, rng)) for _ in range(count)]


