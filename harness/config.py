"""Typed configuration of a benchmark, built from CLI options or a file.

List-valued options follow llama-bench: comma-separated values, and the run is the
product of all lists. Validation messages name the option and the bad value.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.errors import ConfigError


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


class PerfTests(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pp: list[int] = Field(default_factory=lambda: [512])
    tg: list[int] = Field(default_factory=lambda: [128])
    reps: int = 5
    # offline batch throughput (bench --batch): for each size B, B requests of batch_pp random
    # prompt tokens submitted at once, batch_tg tokens generated each
    batch: list[int] = Field(default_factory=list)
    batch_pp: int = 128
    batch_tg: int = 128

    @field_validator("reps")
    @classmethod
    def _reps(cls, v: int) -> int:
        if v < 1:
            raise ValueError("reps must be at least 1")
        return v

    def names(self) -> list[str]:
        return [f"pp{n}" for n in self.pp] + [f"tg{n}" for n in self.tg] + [f"batch{b}" for b in self.batch]

    def max_context(self) -> int:
        # each test starts from an empty cache: ppN fills N positions, tgN fills N
        return max(self.pp + self.tg + ([self.batch_pp + self.batch_tg] if self.batch else []) + [1])
