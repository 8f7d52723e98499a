"""`harness bench`: pre-flight every input, plan, run, return the records.

All checks happen before the first process starts, so bad input leaves no result
file behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from harness import registry
from harness.config import PerfTests
from harness.errors import BackendNotInstalled, ConfigError
from harness.models import resolve
from harness.plan import build_plan
from harness.runner import Event, Outcome, run_plan


class BenchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str]
    backend: str
    pp: list[int]
    tg: list[int]
    reps: int
    grid: dict[str, list[Any] | None] = {}
    out_dir: Path
    command: list[str] = []


def check_installed(backend_cls: type[registry.Backend]) -> None:
    if backend_cls.installed_version() is None:
        raise BackendNotInstalled(f"backend '{backend_cls.name}' is not installed; install it with: {backend_cls.install_hint}")


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder for result files")


def run_bench(request: BenchRequest, on_event: Event | None = None) -> Outcome:
    if request.reps < 1:
        raise ConfigError("--reps must be at least 1")
    if not request.pp and not request.tg:
        raise ConfigError("nothing to measure: give at least one --pp or --tg length")
    backend_cls = registry.get(request.backend)
    check_installed(backend_cls)
    check_out_dir(request.out_dir)
    unknown = [k for k, v in request.grid.items() if v and k not in backend_cls.Settings.model_fields]
    if unknown:
        raise ConfigError(f"backend '{backend_cls.name}' has no setting {', '.join(unknown)}")
    models = [resolve(ref) for ref in request.models]
    tests = PerfTests(pp=request.pp, tg=request.tg, reps=request.reps)
    grid = {k: v for k, v in request.grid.items() if v}
    groups = build_plan(backend_cls, models, grid, tests)
    return run_plan(groups, tests, request.out_dir, request.command, on_event)
