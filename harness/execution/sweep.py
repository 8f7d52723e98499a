"""`harness sweep FILE.yaml`: a matrix of models x backends x work, run cell by cell.

A matrix file names models, backends with their settings (lists multiply, as on the
command line), perf tests and accuracy suites. It expands into cells: one model, one
backend with one value of every setting, and one piece of work (the perf tests, or one
suite). Before the first cell runs, all of it is checked: every model resolves and passes
pre-flight, every backend is installed and knows its settings, every suite exists, the
results folder is writable with room to spare. Bad input is one line naming the cell and
nothing runs; in particular a wrong model path in the middle of the matrix is caught here,
before hours of earlier cells have been spent (a model file that disappears or changes
after pre-flight fails only its own cells, at their turn).

Each cell runs in its own worker process under a wall-clock timeout (runner.run_worker:
harness.execution.worker for perf cells, harness eval's harness.execution.eval_worker for suite cells).
A crash, a timeout or running out of memory becomes that cell's failure, with the cause
and the tail of its error output, and the sweep goes on. SIGINT or SIGTERM stop the
sweep: the running cell's processes are ended, it is marked interrupted, finished cells
stay. The summary (``sweep.json`` beside the cells' result files, kind "sweep") is
rewritten atomically after every cell, so it is never behind by more than the running cell.

``--resume`` keeps every cell whose content (model sha256, backend and its version,
settings, work, harness version) matches a cell that finished ok, after re-reading its
result file (a damaged one is refused by name), and runs the rest. A failed cell's old
result file is removed once its rerun has written a new one, so the folder holds one
result per cell; results of cells no longer in the matrix are kept and listed in
``superseded_files``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import signal
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import psutil
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness import __version__

from harness.core import registry
from harness.core.backend import BackendSettings, serves
from harness.commands.bench import check_installed, unsupported_tests
from harness.core.config import PerfTests
from harness.core.environment import fingerprint
from harness.core.errors import ConfigError, HarnessError, ResultFileError
from harness.measurement.meters import now_ns
from harness.core.models import ModelInfo
from harness.core.paths import DEFAULT_RESULTS_DIR
from harness.execution.plan import Case, LoadGroup, build_plan, expand_settings
from harness.core.events import Event, RequestsDone
from harness.core.record import Failure, RunRecord, SweepCell, SweepRecord
from harness.core.record_factory import failed_record, new_run_id, utc_now
from harness.execution.runner import OnEvent, run_group, run_job
from harness.output.store import SWEEP_SUMMARY_NAME as SUMMARY_NAME
from harness.output.store import expand_paths, read_record, read_sweep, write_record, write_sweep

DEFAULT_TIMEOUT_S = 3600.0
SUMMARY_TAIL_CHARS = 1500  # of the stderr tail, in the summary (the cell's record keeps 4000)

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
    for e, entry in enumerate(matrix.backends):
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
                    suite_definition=suite_def)
        cell.key = _cell_key(cell.content())
        if cell.key in seen:
            raise ConfigError(f"{what}: repeats cell {seen[cell.key]} exactly; remove one of them")
        seen[cell.key] = i
        cells.append(cell)
    return cells


# --------------------------------------------------------------------- estimates


def threads_setting(backend: str) -> str | None:
    """The backend's thread-count setting (its "threads" role), where it is known here and has one."""
    try:
        return registry.get(backend).Settings.role("threads")
    except HarnessError:
        return None


def _measured_speeds(out_dir: Path) -> dict[tuple, dict[str, list[float]]]:
    """tokens/s already measured in the results folder, by (model sha256, backend, threads)."""
    speeds: dict[tuple, dict[str, list[float]]] = {}
    if not out_dir.is_dir():
        return speeds
    for path in expand_paths([out_dir]):
        if path.name == SUMMARY_NAME:
            continue
        try:
            record = read_record(path)
        except ResultFileError:
            continue  # an estimate must not fail on a file that --resume will name
        key = (record.model.sha256, record.backend.name, record.backend.settings.get(threads_setting(record.backend.name)))
        for p in record.perf:
            if p.batch is None and "+" not in p.test:  # pp or tg alone: a batch's or pg's speed is neither
                speeds.setdefault(key, {}).setdefault(p.test[:2], []).append(p.tps_mean)
    return speeds


def estimate(cell: Cell, measured: dict[tuple, dict[str, list[float]]]) -> tuple[float | None, str]:
    """Rough seconds for a cell: start-up and load, plus tokens over a speed.

    The speed is one measured earlier in the results folder when there is one (same model
    file, backend and threads), else a guess from the model's size: prompt processing at
    about 40 GFLOP/s per thread (2 FLOP per parameter per token), generation limited by
    about 10 GB/s of memory bandwidth. A suite document counts as a 600-token few-shot
    prompt and 32 generated tokens. Either way this plans a sweep; it measures nothing.
    """
    threads_name = type(cell.settings).role("threads")
    threads = (getattr(cell.settings, threads_name) if threads_name else None) or psutil.cpu_count(logical=False) or 1
    params = cell.model.parameters or cell.model.size_bytes * 2
    found = measured.get((cell.model.sha256, cell.backend, threads)) or {}
    pp_tps = statistics.median(found["pp"]) if found.get("pp") else threads * 40e9 / (2 * params)
    tg_tps = statistics.median(found["tg"]) if found.get("tg") else min(threads, 4) / 4 * 10e9 / cell.model.size_bytes
    source = "measured" if found else "guessed"
    overhead = 3.0 + cell.model.size_bytes / 1e9  # worker start, imports, model load
    if cell.kind == "perf":
        t = cell.tests
        work = 0.0
        for kind, n, depth in t.cases():  # every repetition and the warm-up fill the cache to its depth first
            prompt, gen = (n, 0) if kind == "pp" else (0, n) if kind == "tg" else n
            work += (t.reps + 1) * ((depth + prompt) / pp_tps + gen / tg_tps)
        # a batch counted as its requests one after another: a batching engine takes less
        work += sum((t.reps + 1) * b * (t.batch_pp / pp_tps + t.batch_tg / tg_tps) for b in t.batch)
        return overhead + work, source
    selected = (cell.suite_definition or {}).get("selected") or {}
    if selected.get("samples"):
        n_docs = sum(len(v) for v in selected["samples"].values())
    elif cell.suite.limit:
        n_docs = cell.suite.limit * len(selected.get("tasks") or [1])  # a group counts once: rough
    else:
        return None, "unknown (full task sets)"
    return overhead + n_docs * (600 / pp_tps + 32 / tg_tps), source


def format_duration(s: float | None) -> str:
    if s is None:
        return "?"
    s = round(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


# ------------------------------------------------------------------------ folder


def default_out_dir(matrix_file: Path) -> Path:
    return DEFAULT_RESULTS_DIR / f"sweep-{matrix_file.stem}"


def _existing_parent(path: Path) -> Path:
    p = path.absolute()
    while not p.exists():
        p = p.parent
    return p


def check_out_dir(out_dir: Path, min_free_mib: float, create: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder for the sweep")
    parent = _existing_parent(out_dir)
    free_mib = shutil.disk_usage(parent).free / 2**20
    if free_mib < min_free_mib:
        raise ConfigError(f"only {free_mib:.0f} MiB free under {parent}; a sweep needs at least {min_free_mib:g} MiB "
                          "(min_free_disk_mib in the matrix file); free some space or choose another --out")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write to {parent}; choose another --out")
    if create:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {out_dir}: {exc.strerror}") from None


# ------------------------------------------------------------------------ resume


@dataclass
class ResumeState:
    previous: SweepRecord | None = None
    kept: dict[str, SweepCell] = field(default_factory=dict)  # key -> finished cell to keep
    rerun: dict[str, SweepCell] = field(default_factory=dict)  # key -> earlier attempt to replace
    superseded: list[str] = field(default_factory=list)


def plan_resume(cells: list[Cell], out_dir: Path) -> ResumeState:
    """What an earlier run of this sweep left: cells to keep, cells to run again.

    The summary and every result file it offers for reuse are read with the same
    refusals as everywhere else: a damaged or newer-schema file stops the resume with
    its name, rather than being silently rerun or trusted.
    """
    summary_path = out_dir / SUMMARY_NAME
    state = ResumeState()
    if not summary_path.exists():
        return state
    try:
        previous = read_sweep(summary_path)
    except ResultFileError as exc:
        raise ResultFileError(f"cannot resume: {exc}; move it aside to start the sweep afresh") from None
    state.previous = previous
    keys = {c.key for c in cells}
    by_key: dict[str, SweepCell] = {}
    for old in previous.cells:
        by_key[old.key] = old
        if old.key not in keys and old.result_file and old.status in ("ok", "partial"):
            state.superseded.append(old.result_file)
    state.superseded.extend(f for f in previous.superseded_files if f not in state.superseded)
    for cell in cells:
        old = by_key.get(cell.key)
        if old is None:
            continue
        if old.status != "ok" or not old.result_file:
            state.rerun[cell.key] = old
            continue
        path = out_dir / old.result_file
        if not path.exists():
            state.rerun[cell.key] = old.model_copy(update={"result_file": None})
            continue
        try:
            record = read_record(path)
        except ResultFileError as exc:
            raise ResultFileError(f"cannot resume: {exc}; move it aside to rerun cell {cell.index} ({cell.label})") from None
        if record.status != "ok" or record.run_id != old.run_id or record.model.sha256 != cell.model.sha256 \
                or record.harness_version != __version__:
            state.rerun[cell.key] = old
            continue
        state.kept[cell.key] = old
    return state


# --------------------------------------------------------------------------- run


class StopOnSignal:
    """SIGINT and SIGTERM ask the sweep to stop; runner.run_group polls the answer.

    Nothing is raised from the handler, so a stop can never land between writing a
    result file and recording it in the summary.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame) -> None:
        self.reason = self.reason or signal.Signals(signum).name

    def __enter__(self) -> "StopOnSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __call__(self) -> str | None:
        return self.reason


class SweepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    matrix_file: Path
    out_dir: Path | None = None
    resume: bool = False
    dry_run: bool = False
    command: list[str] = []


@dataclass
class SweepPlan:
    matrix_file: Path
    matrix: Matrix
    matrix_sha256: str
    matrix_data: dict
    cells: list[Cell]
    out_dir: Path
    resume: ResumeState
    model_stamps: dict[str, tuple[int, int]]  # model path -> (size, mtime) as pre-flight saw it

    @property
    def total_estimate_s(self) -> float:
        return sum(c.estimate_s or 0 for c in self.cells if c.key not in self.resume.kept)

    @property
    def unknown_estimates(self) -> int:
        return sum(1 for c in self.cells if c.estimate_s is None and c.key not in self.resume.kept)


@dataclass
class SweepOutcome:
    summary: SweepRecord
    summary_path: Path
    records: list[RunRecord]


def prepare(request: SweepRequest) -> SweepPlan:
    """Parse, expand and check everything; write nothing."""
    matrix, sha, data = load_matrix(request.matrix_file)
    cells = expand(matrix, request.matrix_file)
    stamps: dict[str, tuple[int, int]] = {}
    for cell in cells:
        if cell.model.path not in stamps:
            try:
                st = Path(cell.model.path).stat()
            except OSError as exc:
                raise ConfigError(f"cell {cell.index} ({cell.label}): model file {cell.model.path}: {exc.strerror}") from None
            stamps[cell.model.path] = (st.st_size, st.st_mtime_ns)
    out_dir = request.out_dir or default_out_dir(request.matrix_file)
    check_out_dir(out_dir, matrix.min_free_disk_mib, create=False)
    summary_path = out_dir / SUMMARY_NAME
    if summary_path.exists() and not request.resume:
        raise ConfigError(f"{out_dir} already holds a sweep ({summary_path}); continue it with --resume, "
                          "or give another --out")
    resume = plan_resume(cells, out_dir) if request.resume else ResumeState()
    measured = _measured_speeds(out_dir)
    for cell in cells:
        cell.estimate_s, cell.estimate_source = estimate(cell, measured)
    return SweepPlan(request.matrix_file, matrix, sha, data, cells, out_dir, resume, stamps)


def _summary_cell(cell: Cell) -> SweepCell:
    return SweepCell(index=cell.index, key=cell.key, label=cell.label, kind=cell.kind, model_ref=cell.model.ref,
                     model_sha256=cell.model.sha256, backend=cell.backend, backend_version=cell.backend_version,
                     settings=cell.settings.model_dump(mode="json"),
                     perf=cell.tests.model_dump() if cell.tests else None,
                     suite=cell.suite.name if cell.suite else None, timeout_s=cell.timeout_s)


def _model_unchanged(model: ModelInfo, stamps: dict[str, tuple[int, int]]) -> str | None:
    """Why a model file can no longer be used as pre-flight saw it, or None."""
    path = Path(model.path)
    try:
        st = path.stat()
    except OSError:
        return f"model file missing since pre-flight: {path}"
    if (st.st_size, st.st_mtime_ns) != stamps[model.path]:
        return f"model file changed since pre-flight (its sha256 would not match the record): {path}"
    return None


class CellJob(BaseModel):
    """One cell as the process that runs it needs it: plain data, so that it can travel to
    another node of a Ray cluster (harness.execution.ray_sweep) as well as run here."""

    model_config = ConfigDict(extra="forbid")

    index: int
    kind: Literal["perf", "suite"]
    model: ModelInfo
    backend: str
    settings: dict[str, Any]
    timeout_s: float
    tests: PerfTests | None = None
    suite: SuiteSpec | None = None
    allow_code_execution: bool = False
    command: list[str] = []


class CellResult(BaseModel):
    """What running a cell gave: its record (a failure is a record too), or the reason it was
    stopped before it had one; nothing of it is written yet."""

    record: RunRecord | None = None
    stopped: str | None = None
    wall_s: float | None = None  # the whole cell: process start, load, work
    node: dict[str, str] | None = None  # the Ray node that ran it; None here


def cell_job(cell: Cell, plan: "SweepPlan", command: list[str]) -> CellJob:
    return CellJob(index=cell.index, kind=cell.kind, model=cell.model, backend=cell.backend,
                   settings=cell.settings.model_dump(mode="json"), timeout_s=cell.timeout_s, tests=cell.tests,
                   suite=cell.suite, allow_code_execution=plan.matrix.allow_code_execution, command=command)


def unrun_record(job: CellJob, failure: Failure | str, run_id: str | None = None) -> RunRecord:
    """The record of a cell that ended without one of its own (it never started, or its
    process gave none). Its environment is that of the machine making it: the node's."""
    return failed_record(failure, run_id=run_id, backend=job.backend, settings=job.settings, model=job.model,
                         command=job.command)


class _CellEvents:
    """A cell's worker events for the sweep's screen: each under the cell's index, an
    accuracy run's request counts a line per quarter, not per request."""

    def __init__(self, index: int, on_event: OnEvent | None):
        self.index, self.on_event = index, on_event
        self.shown: dict[str, int] = {}

    def __call__(self, event: Event) -> None:
        if self.on_event is None:
            return
        if isinstance(event, RequestsDone):
            if not event.total:
                return
            quarter = 4 * event.done // event.total
            if quarter <= self.shown.get(event.kind, 0):
                return
            self.shown[event.kind] = quarter
        self.on_event(event.model_copy(update={"index": self.index}))


def _execute_suite_cell(job: CellJob, on_event: OnEvent | None, stop: Callable[[], str | None] | None,
                        scratch_dir: Path) -> CellResult:
    """An accuracy cell: harness eval's own job and worker (harness.commands.evaluation), with the
    cell's settings, timeout and the sweep's stop."""
    from harness.commands.evaluation import EvalRequest, check_lm_eval, request_cache_prefix
    from harness.commands.evaluation import prepare as prepare_eval

    spec = job.suite
    # out_dir only passes eval's folder check: a sweep cell logs no samples, its record comes back
    request = EvalRequest(model=job.model.path, backend=job.backend, suite=spec.suite,
                          tasks=",".join(spec.tasks) if spec.tasks else None, limit=spec.limit,
                          out_dir=scratch_dir, allow_code_execution=job.allow_code_execution,
                          command=job.command, timeout_s=job.timeout_s)
    try:
        eval_job = prepare_eval(request)
    except HarnessError as exc:
        return CellResult(record=unrun_record(job, f"evaluation refused: {exc}"))
    # the matrix's model reference and every setting of the cell, not only the thread count
    # `harness eval` takes; the request cache is keyed by exactly these settings
    eval_job.model = job.model
    eval_job.settings = dict(job.settings)
    if eval_job.request_cache:
        eval_job.request_cache = str(request_cache_prefix(job.model, registry.get(job.backend), eval_job.settings,
                                                          check_lm_eval(), eval_job.apply_chat_template))
    report = run_job("harness.execution.eval_worker", eval_job, _CellEvents(job.index, on_event), job.timeout_s, stop)
    if report.stopped:
        return CellResult(stopped=report.stopped)
    if report.records:
        return CellResult(record=report.records[0])
    if report.refused and report.exit.ended_by is None:
        failure = Failure(cause=f"evaluation refused: {report.refused}", stderr_tail=report.exit.stderr_tail)
    else:
        failure = report.failure()
    return CellResult(record=unrun_record(job, failure, run_id=eval_job.run_id))


def execute_cell(job: CellJob, on_event: OnEvent | None = None, stop: Callable[[], str | None] | None = None,
                 scratch_dir: Path | None = None) -> CellResult:
    """Run one cell in a worker process of its own under the cell's timeout; a crash, a
    timeout or running out of memory becomes its failure record. Writes no result file:
    the caller does (a local sweep here; on a Ray cluster the driver, once the record is back).
    ``stop`` ends it early (see runner.run_worker); without one, an exception (a Ray
    cancellation's KeyboardInterrupt) does, taking the worker and all it started with it."""
    started = now_ns()
    if job.kind == "suite":
        result = _execute_suite_cell(job, on_event, stop, scratch_dir or Path(tempfile.gettempdir()))
    else:
        settings = registry.get(job.backend).Settings(**job.settings)
        group = LoadGroup(backend=job.backend, model=job.model,
                          cases=[Case(index=job.index, model=job.model, settings=settings)])
        outcome = run_group(group, job.tests, None, job.command, _CellEvents(job.index, on_event),
                            timeout_s=job.timeout_s, stop=stop)
        result = CellResult(stopped=outcome.stopped) if outcome.stopped else CellResult(record=outcome.records[0])
    result.wall_s = (now_ns() - started) / 1e9
    return result


Begin = Callable[[CellJob], "CellResult | None"]


class LocalCells:
    """The cells one after another on this machine, each in its own worker process."""

    def __init__(self, on_event: OnEvent | None, scratch_dir: Path):
        self.on_event = on_event
        self.scratch_dir = scratch_dir

    def run(self, jobs: list[CellJob], begin: Begin, stop: Callable[[], str | None],
            log: Callable[[str], None]) -> Iterator[tuple[CellJob, CellResult]]:
        for job in jobs:
            if stop():
                return
            result = begin(job) or execute_cell(job, self.on_event, stop, self.scratch_dir)
            yield job, result
            if result.stopped:
                return


def run_sweep(plan: SweepPlan, command: list[str], log: Callable[[str], None],
              on_event: OnEvent | None = None, executor: Any = None) -> SweepOutcome:
    """Run the cells that are not kept, through ``executor`` (LocalCells by default; a
    harness.execution.ray_sweep.RayCells spreads them over a cluster). Whatever runs them, their
    records are written here, one by one as they come back, and so is the summary."""
    out_dir = plan.out_dir
    check_out_dir(out_dir, plan.matrix.min_free_disk_mib, create=True)
    executor = executor or LocalCells(on_event, out_dir)
    summary_path = out_dir / SUMMARY_NAME
    previous = plan.resume.previous
    summary = SweepRecord(
        sweep_id=previous.sweep_id if previous else new_run_id(),
        created_at=previous.created_at if previous else utc_now(), updated_at=utc_now(),
        harness_version=__version__, command=command, matrix_file=str(plan.matrix_file),
        matrix_sha256=plan.matrix_sha256, matrix=plan.matrix_data, environment=fingerprint(),
        superseded_files=plan.resume.superseded,
    )
    for cell in plan.cells:
        kept = plan.resume.kept.get(cell.key)
        if kept:
            summary.cells.append(kept.model_copy(update={"index": cell.index, "label": cell.label, "reused": True}))
        else:
            earlier = plan.resume.rerun.get(cell.key)
            summary.cells.append(_summary_cell(cell).model_copy(update={"attempts": earlier.attempts if earlier else 0}))
    write_sweep(summary, summary_path)
    stamps = plan.model_stamps
    n = len(plan.cells)
    by_index = {cell.index: (cell, entry) for cell, entry in zip(plan.cells, summary.cells)}
    jobs = []
    for cell, entry in zip(plan.cells, summary.cells):
        if entry.reused:
            log(f"cell {cell.index}/{n} {cell.label}: kept from an earlier run ({entry.result_file})")
        else:
            jobs.append(cell_job(cell, plan, command))

    def begin(job: CellJob) -> CellResult | None:
        """The cell is about to run: say so in the summary (a sweep killed meanwhile reruns
        it on --resume); a model file changed since pre-flight fails it here."""
        cell, entry = by_index[job.index]
        log(f"cell {cell.index}/{n} {cell.label}: running (timeout {cell.timeout_s:g} s)")
        entry.attempts += 1
        entry.status = "running"
        write_sweep(summary, summary_path)
        problem = _model_unchanged(cell.model, stamps)
        return CellResult(record=unrun_record(job, problem)) if problem else None

    with StopOnSignal() as stop:
        for job, result in executor.run(jobs, begin, stop, log):
            cell, entry = by_index[job.index]
            entry.node = result.node
            if result.stopped:
                entry.status, entry.cause = "interrupted", f"stopped by {result.stopped}"
                write_sweep(summary, summary_path)
                log(f"cell {cell.index}/{n} {cell.label}: interrupted by {result.stopped}")
                continue
            record = result.record
            path = write_record(record, out_dir)
            earlier = plan.resume.rerun.get(cell.key)
            entry.status = record.status
            entry.cause = record.failures[0].cause if record.failures else None
            tail = next((f.stderr_tail for f in record.failures if f.stderr_tail), None)
            entry.stderr_tail = tail[-SUMMARY_TAIL_CHARS:] if tail else None
            entry.result_file = path.name
            entry.run_id, entry.finished_at = record.run_id, utc_now()
            entry.wall_s = result.wall_s
            summary.updated_at = utc_now()
            write_sweep(summary, summary_path)
            if earlier and earlier.result_file and earlier.result_file != path.name:
                # the rerun's result replaces the failed one: one result per cell in the folder
                (out_dir / earlier.result_file).unlink(missing_ok=True)
            where = f" on {result.node['hostname']} ({result.node['ip']})" if result.node else ""
            log(f"cell {cell.index}/{n} {cell.label}: {record.status}{where}" + (f": {entry.cause}" if entry.cause else ""))
        unfinished = any(c.status in ("pending", "running", "interrupted") for c in summary.cells)
        summary.interrupted_by = stop() if unfinished else None
    summary.status = "interrupted" if summary.interrupted_by else "complete"
    summary.updated_at = utc_now()
    write_sweep(summary, summary_path)
    # every cell's record as it is on disk (redacted), in matrix order
    records = [read_record(out_dir / c.result_file) for c in summary.cells if c.result_file]
    return SweepOutcome(summary, summary_path, records)
