"""A sweep's matrix file: its schema (models, backends with their settings, perf tests, suites) and its
expansion into cells, one model, one backend with one value of every setting and one piece of work each."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import __version__
from harness.commands.bench import check_installed, unsupported_tests
from harness.core import registry
from harness.core.backend import BackendSettings, serves
from harness.core.config import PerfTests
from harness.core.errors import ConfigError, HarnessError
from harness.core.models import ModelInfo
from harness.execution.plan import build_plan, expand_settings


DEFAULT_TIMEOUT_S = 3600.0
AUTO_BACKENDS = "auto"  # a backend entry standing for every installed backend that runs unattended

# ------------------------------------------------------------------ the matrix file


def _as_list(v: Any) -> Any:
    return v if isinstance(v, list) or v is None else [v]


class SuiteSpec(BaseModel):
    """One accuracy cell's work, as `harness eval` takes it: a bundled suite, or lm-eval
    task names, with an optional per-task document limit (which replaces a suite's sample)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: str | None = None
    tasks: list[str] | None = None
    limit: int | None = None

    @field_validator("tasks", mode="before")
    @classmethod
    def _tasks(cls, v: Any) -> Any:
        return _as_list(v)

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("limit must be at least 1; leave it out to run every document")
        return v

    @model_validator(mode="after")
    def _one(self) -> "SuiteSpec":
        if bool(self.suite) == bool(self.tasks):
            raise ValueError("give either suite: NAME or tasks: [T1, T2]")
        return self

    @property
    def name(self) -> str:
        what = f"suite {self.suite}" if self.suite else f"tasks {','.join(self.tasks)}"
        return what + (f" limit {self.limit}" if self.limit else "")


class BackendEntry(BaseModel):
    """One backend with its settings; any other key is a setting of that backend, a value or a list."""

    model_config = ConfigDict(extra="allow")

    name: str
    models: list[str] | None = None  # instead of the top-level list, for this backend only
    perf: PerfTests | None = None  # instead of the top-level perf tests
    timeout_s: float | None = None  # per cell, instead of the top-level one

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, v: Any) -> Any:
        return _as_list(v)

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError("timeout_s must be positive")
        return v

    @model_validator(mode="after")
    def _auto_takes_no_settings(self) -> "BackendEntry":
        if self.name == AUTO_BACKENDS and self.model_extra:
            raise ValueError(f"'{AUTO_BACKENDS}' stands for several backends, each with settings of its own, so it "
                             f"takes none (here: {', '.join(self.model_extra)}); name the backend to set them")
        return self

    def grid(self, aliases: dict[str, str]) -> dict[str, list[Any]]:
        """Every setting's values, a key in the backend's short names (``aliases``: threads,
        ngl) naming the setting it stands for."""
        out: dict[str, list[Any]] = {}
        for key, value in (self.model_extra or {}).items():
            name = key.replace("-", "_")
            name = aliases.get(name, name)
            values = _as_list(value)
            if not values:
                raise ValueError(f"setting '{key}' has no values")
            out[name] = values
        return out


class Matrix(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=list)
    backends: list[BackendEntry]
    perf: PerfTests | None = None  # `harness bench`'s tests, by its option names
    suites: list[SuiteSpec] = Field(default_factory=list)  # a name, or {suite|tasks, limit}
    allow_code_execution: bool = False  # suites' code-execution tasks run only with this
    cache: bool = True  # suites answer a request asked before from the request cache; false sends every one
    timeout_s: float = DEFAULT_TIMEOUT_S  # wall-clock limit of one cell
    min_free_disk_mib: float = 100.0  # refuse to start with less free space in the results folder

    @field_validator("models", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _as_list(v) or []

    @field_validator("suites", mode="before")
    @classmethod
    def _suites(cls, v: Any) -> Any:
        return [{"suite": x} if isinstance(x, str) else x for x in _as_list(v) or []]

    @field_validator("backends", mode="before")
    @classmethod
    def _backends(cls, v: Any) -> Any:
        v = _as_list(v) or []
        return [{"name": b} if isinstance(b, str) else b for b in v]

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("timeout_s must be positive")
        return v

    @model_validator(mode="after")
    def _something_to_do(self) -> "Matrix":
        if not self.backends:
            raise ValueError("name at least one backend")
        if self.perf is None and not self.suites and not any(b.perf for b in self.backends):
            raise ValueError("nothing to run: give perf tests, suites, or both")
        if not self.models and not all(b.models for b in self.backends):
            raise ValueError("name at least one model (top-level `models`, or `models` in every backend)")
        return self


def load_matrix(path: Path) -> tuple[Matrix, str, dict]:
    """The validated matrix, the sha256 of the file, and its data as written."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"matrix file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read matrix file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(raw)  # safe_load: a matrix file cannot construct Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a matrix file is a mapping with models, backends, perf and suites (see docs/sweeps.md)")
    try:
        matrix = Matrix.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            within = Matrix if len(err["loc"]) == 1 else SuiteSpec if err["loc"][0] == "suites" else PerfTests
            known = list(within.model_fields)
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            msg = f"unknown key{f' (did you mean {close[0]}?)' if close else ''}; known keys: {', '.join(known)}"
        raise ConfigError(f"{path}: {where}: {msg}") from None
    return matrix, hashlib.sha256(raw).hexdigest(), data


# ------------------------------------------------------------------------ suites


def suite_hash(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------- cells


@dataclass
class Cell:
    index: int  # 1-based
    kind: Literal["perf", "suite"]
    model: ModelInfo
    backend: str
    backend_version: str | None
    settings: BackendSettings
    user_settings: dict[str, Any]  # what the matrix set, for the label
    timeout_s: float
    tests: PerfTests | None = None
    suite: SuiteSpec | None = None
    suite_definition: dict | None = None  # the suite as defined, and the tasks selected from it
    cache: bool = True  # a suite cell's request cache
    key: str = ""
    estimate_s: float | None = None
    estimate_source: str = ""

    @property
    def label(self) -> str:
        settings = " ".join(f"{k}={_short(v)}" for k, v in self.user_settings.items())
        if self.kind == "perf":
            t = self.tests
            work = ",".join(t.names()) + f" x{t.reps}"
        else:
            work = self.suite.name
        return " ".join(x for x in (self.model.ref, self.backend, settings, work) if x)

    def content(self) -> dict:
        """Everything the cell's result depends on that the harness knows before running it."""
        work = {"perf": self.tests.model_dump()} if self.kind == "perf" else {
            "suite": self.suite.model_dump(), "suite_definition": suite_hash(self.suite_definition or {})}
        if self.kind == "suite" and not self.cache:
            # answers recalled from the cache are not measurements: a cell run with it is a
            # different cell (and a matrix that keeps the cache keeps its cells' keys)
            work["cache"] = False
        return {
            "kind": self.kind, "model_sha256": self.model.sha256, "backend": self.backend,
            "backend_version": self.backend_version, "settings": self.settings.model_dump(mode="json"),
            "work": work, "harness_version": __version__,
        }


def _short(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def _cell_key(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class _Spec:
    """A cell before its model is resolved."""

    model_ref: str
    backend_cls: type
    values: dict[str, Any]
    timeout_s: float
    tests: PerfTests | None
    suite: SuiteSpec | None


def backend_entries(matrix: Matrix, source: Path) -> tuple[list[tuple[int, BackendEntry]], dict[str, str]]:
    """The matrix's backend entries by their index in the file, ``auto`` replaced by every
    installed backend that runs unattended and is not named elsewhere in the matrix; and
    why each known backend ``auto`` left out was left out."""
    if not any(e.name == AUTO_BACKENDS for e in matrix.backends):
        return list(enumerate(matrix.backends)), {}
    named = {e.name for e in matrix.backends if e.name != AUTO_BACKENDS}
    unattended, skipped = registry.unattended()
    entries: list[tuple[int, BackendEntry]] = []
    for e, entry in enumerate(matrix.backends):
        if entry.name != AUTO_BACKENDS:
            entries.append((e, entry))
            continue
        entries += [(e, entry.model_copy(update={"name": name})) for name in unattended if name not in named]
    if not entries:
        why = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise ConfigError(f"{source}: backends: '{AUTO_BACKENDS}' found no installed backend that runs unattended ({why})")
    return entries, {name: why for name, why in skipped.items() if name not in named}


def expand(matrix: Matrix, source: Path) -> list[Cell]:
    """Every cell of the matrix, validated: the whole pre-flight except the results folder."""
    specs: list[_Spec] = []
    known_suites: dict[str, dict] = {}  # by SuiteSpec.name
    if matrix.suites:
        try:
            from harness.commands.evaluation import check_lm_eval
            from harness.measurement.suites import get_suite, select_tasks  # the accuracy pre-flight; no lm-eval import
        except ImportError:
            raise ConfigError(f"{source}: suites: this harness has no accuracy evaluation (harness.commands.evaluation is missing)") from None
        try:
            check_lm_eval()
        except HarnessError as exc:
            raise ConfigError(f"{source}: suites: {exc}") from None
    for n, spec in enumerate(matrix.suites):
        try:
            selection = select_tasks(",".join(spec.tasks) if spec.tasks else None, spec.suite, spec.limit,
                                     matrix.allow_code_execution)
        except HarnessError as exc:
            raise ConfigError(f"{source}: suites.{n}: {exc}") from None
        # what the suite evaluates is part of the cell's content: a changed sample reruns it
        known_suites[spec.name] = {"suite": get_suite(spec.suite).model_dump() if spec.suite else None,
                                   "selected": selection.model_dump(), "limit": spec.limit}
    for e, entry in backend_entries(matrix, source)[0]:
        where = f"{source}: backends.{e} ({entry.name})"
        try:
            backend_cls = registry.get(entry.name)
            check_installed(backend_cls)
        except HarnessError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            aliases = backend_cls.Settings.aliases()
            grid = entry.grid(aliases)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            backend_cls.check_setting_names(grid, also_known=aliases)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        perf = entry.perf or matrix.perf
        tests = perf if perf and perf.names() else None
        timeout = entry.timeout_s or matrix.timeout_s
        for model_ref in entry.models or matrix.models:
            for values in expand_settings(grid) or [{}]:
                if tests:
                    specs.append(_Spec(model_ref, backend_cls, values, timeout, tests, None))
                for suite in matrix.suites:
                    specs.append(_Spec(model_ref, backend_cls, values, timeout, None, suite))

    models: dict[tuple[str, str, str], ModelInfo] = {}
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs, 1):
        backend_cls = spec.backend_cls
        what = f"{source}: cell {i} of {len(specs)} ({spec.model_ref}, {backend_cls.name}" + \
            "".join(f" {k}={_short(v)}" for k, v in spec.values.items()) + ")"
        # the backend resolves (a GGUF for llama.cpp, a converted directory for vLLM, a served
        # model for openai), once per reference, backend and the settings it resolves with
        through = {k: spec.values[k] for k in backend_cls.resolve_keys if k in spec.values}
        model_key = (spec.model_ref, backend_cls.name, json.dumps(through, sort_keys=True, default=str))
        if model_key not in models:
            try:
                models[model_key] = backend_cls.resolve_model(spec.model_ref, through)
            except HarnessError as exc:
                raise ConfigError(f"{what}: {exc}; no cell was run") from None
        model = models[model_key]
        try:
            if spec.tests:
                groups = build_plan(backend_cls, [model], {k: [v] for k, v in spec.values.items()}, spec.tests)
                settings = groups[0].cases[0].settings
            else:
                settings = backend_cls.default_settings(model, **spec.values)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"{what}: setting '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None
        except HarnessError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        unsupported = unsupported_tests(backend_cls, settings, spec.tests) if spec.tests else []
        if "depth" in unsupported:
            raise ConfigError(f"{what}: perf.depth: backend '{backend_cls.name}' runs whole requests; tests at a "
                              "depth need a backend that steps a KV cache (llamacpp)")
        if "batch" in unsupported:
            raise ConfigError(f"{what}: perf.batch: backend '{backend_cls.name}' runs one request at a time; "
                              "batch throughput needs a batching backend (vllm)")
        suite_def = known_suites.get(spec.suite.name) if spec.suite else None
        if suite_def and (suite_def["suite"] or {}).get("requires_loglikelihood"):
            if not serves(backend_cls, settings, "loglikelihood"):
                raise ConfigError(f"{what}: backend '{backend_cls.name}' cannot score log-likelihoods, which "
                                  f"{spec.suite.name} needs (try suite open-vs-closed: generative forms and multiple-choice by letters)")
        cell = Cell(index=i, kind="perf" if spec.tests else "suite", model=model, backend=backend_cls.name,
                    backend_version=backend_cls.installed_version(), settings=settings, user_settings=spec.values,
                    timeout_s=spec.timeout_s, tests=spec.tests, suite=spec.suite,
                    suite_definition=suite_def, cache=matrix.cache)
        cell.key = _cell_key(cell.content())
        if cell.key in seen:
            raise ConfigError(f"{what}: repeats cell {seen[cell.key]} exactly; remove one of them")
        seen[cell.key] = i
        cells.append(cell)
    return cells


