"""Typed configuration of a benchmark, built from CLI options or a file.

List-valued options follow llama-bench: comma-separated values, and the run is the
product of all lists. Validation messages name the option and the bad value.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from harness.core.errors import ConfigError


def parse_int_list(option: str, text: str | None, minimum: int = 1, allow_none: bool = False) -> list[int] | None:
    """'512,1024' -> [512, 1024]. 'none' -> [] where allowed (skip that kind of test)."""
    if text is None:
        return None
    text = text.strip()
    if allow_none and text.lower() in ("none", ""):
        return []
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise ConfigError(f"{option}: '{part}' is not a whole number (give a comma-separated list, e.g. {option} 512,1024)") from None
        if value < minimum:
            raise ConfigError(f"{option}: {value} is too small; every value must be at least {minimum}")
        values.append(value)
    if len(set(values)) != len(values):
        raise ConfigError(f"{option}: '{text}' repeats a value")
    return values


def parse_bool_list(option: str, text: str | None) -> list[bool] | None:
    if text is None:
        return None
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if p in ("1", "true", "on", "yes"):
            out.append(True)
        elif p in ("0", "false", "off", "no"):
            out.append(False)
        else:
            raise ConfigError(f"{option}: '{part}' is not on/off (use 0,1 or on,off)")
    return out


def parse_pg_list(option: str, items: list[str] | None) -> list[tuple[int, int]]:
    """llama-bench's -pg: each value PP,TG (repeat the option for more) -> [(PP, TG), ...]."""
    pairs = []
    for item in items or []:
        parts = [p.strip() for p in item.split(",")]
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ConfigError(f"{option}: '{item}' is not PP,TG (two whole numbers, e.g. {option} 512,128; repeat {option} for more)")
        pair = (int(parts[0]), int(parts[1]))
        if pair in pairs:
            raise ConfigError(f"{option}: {item} is given twice")
        pairs.append(pair)
    return pairs


def parse_split_list(option: str, text: str | None) -> list[tuple[float, ...]] | None:
    """llama-bench's -ts: comma-separated values, each a split of shares like 3/1 -> [(3.0, 1.0)]."""
    if text is None:
        return None
    out = []
    for part in text.split(","):
        try:
            shares = tuple(float(x) for x in part.replace(";", "/").split("/"))
        except ValueError:
            raise ConfigError(f"{option}: '{part}' is not a split like 3/1 (each GPU's share, slash-separated)") from None
        out.append(shares)
    return out


def parse_word_list(option: str, text: str | None, choices: tuple[str, ...] | None = None) -> list[str] | None:
    """'q8_0,f16' -> ['q8_0', 'f16'], each one of ``choices`` when given."""
    if text is None:
        return None
    values = [v.strip().lower() for v in text.split(",")]
    for v in values:
        if not v or (choices and v not in choices):
            raise ConfigError(f"{option}: '{v}' is not one of {', '.join(choices or ())}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{option}: '{text}' repeats a value")
    return values


def parse_limit(option: str, text: str | None) -> int | float | None:
    """lm-eval's --limit: a whole number of documents, or a fraction (0 < x < 1) of each task's."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{option}: '{text}' is not a number (a count such as 50, or a fraction such as 0.1)") from None
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)
    raise ConfigError(f"{option}: {text} is neither a count of at least 1 nor a fraction between 0 and 1")


def parse_seed(option: str, text: str | None) -> list[int] | None:
    """lm-eval's --seed: one number for all four seeds, or four comma-separated (random, numpy, torch, few-shot)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{option}: '{text}' is not one whole number or four comma-separated ones") from None
    if len(values) == 1:
        return values * 4
    if len(values) != 4:
        raise ConfigError(f"{option}: '{text}' gives {len(values)} seeds; give one, or four (random, numpy, torch, few-shot)")
    return values


def parse_gen_kwargs(option: str, text: str | None) -> str | None:
    """lm-eval's --gen_kwargs, KEY=VALUE,...: checked for its form here, passed to lm-eval as it is."""
    if text is None or not text.strip():
        return None
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{option}: '{part}' is not KEY=VALUE (e.g. {option} temperature=0,max_gen_toks=64)")
    return text.strip()


def perf_test_name(kind: str, n: int | tuple[int, int], depth: int = 0) -> str:
    """llama-bench's test names: pp512, tg128, pp512+tg128, with ' @ d4096' at a context depth."""
    base = f"pp{n[0]}+tg{n[1]}" if kind == "pg" else f"{kind}{n}"
    return f"{base} @ d{depth}" if depth else base


def _distinct(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError("repeats a value")
    return values


class PerfTests(BaseModel):
    """The perf tests of a run: `harness bench`'s options, or a matrix file's `perf:` mapping
    (where a single length may stand for a list, and an empty list or "none" skips that kind)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pp: list[int] = Field(default_factory=lambda: [512])
    tg: list[int] = Field(default_factory=lambda: [128])
    reps: int = 5
    # offline batch throughput (bench --batch): for each size B, B requests of batch_pp random
    # prompt tokens submitted at once, batch_tg tokens generated each
    batch: list[int] = Field(default_factory=list)
    batch_pp: int = 128
    batch_tg: int = 128
    # llama-bench's -pg: prompt then generation, timed together; -d: each test after that many
    # tokens already in the cache (untimed), 0 = an empty cache
    pg: list[tuple[int, int]] = Field(default_factory=list)
    depth: list[int] = Field(default_factory=lambda: [0])

    @field_validator("pp", "tg", "batch", "depth", "pg", mode="before")
    @classmethod
    def _list(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() == "none"):
            return []
        return v if isinstance(v, list) else [v]

    @field_validator("pp", "tg", "batch")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("every length must be at least 1")
        return _distinct(v)

    @field_validator("depth")
    @classmethod
    def _depths(cls, v: list[int]) -> list[int]:
        if any(n < 0 for n in v):
            raise ValueError("every depth must be at least 0")
        return _distinct(v)

    @field_validator("pg")
    @classmethod
    def _pairs(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        if any(n < 1 for pair in v for n in pair):
            raise ValueError("every prompt and generation length must be at least 1")
        return _distinct(v)

    @field_validator("reps", "batch_pp", "batch_tg")
    @classmethod
    def _at_least_one(cls, v: int, info: ValidationInfo) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be at least 1")
        return v

    def cases(self) -> list[tuple[str, int | tuple[int, int], int]]:
        """(kind, size, depth) of every llama-bench test, in llama-bench's order."""
        return [(kind, n, d) for d in self.depth
                for kind, sizes in (("pp", self.pp), ("tg", self.tg), ("pg", self.pg)) for n in sizes]

    def names(self) -> list[str]:
        return [perf_test_name(k, n, d) for k, n, d in self.cases()] + [f"batch{b}" for b in self.batch]

    def max_context(self) -> int:
        # each test starts from a cache holding `depth` tokens: ppN fills N more positions,
        # tgN N, pgP,T P + T
        sizes = [d + (n[0] + n[1] if k == "pg" else n) for k, n, d in self.cases()]
        return max(sizes + ([self.batch_pp + self.batch_tg] if self.batch else []) + [1])
