"""Where the bundled tasks live, the suites over them, and task folders checked up front.

Nothing here imports lm-eval: this is the pre-flight the CLI runs before any process
starts (unknown suite, a task folder that is missing or holds YAML that does not
parse). Resolving task names and loading their data needs lm-eval's TaskManager and
happens in harness.measurement.accuracy.

The bundled folder is ``tasks/`` at the top of a checkout. ``harness/tasks`` is a
symlink to it, and ``pyproject.toml`` ships the files under that name as package
data, so the same path works in an editable checkout and from an installed wheel.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from harness.core.errors import ConfigError
from harness.core.paths import PACKAGE_DIR

SUITES_FILE = "suites.yaml"


class TaskConfigError(ConfigError):
    """A task name, task file or task folder that cannot be used."""


def bundled_tasks_dir() -> Path:
    here = PACKAGE_DIR / "tasks"
    if not (here / SUITES_FILE).is_file():
        raise TaskConfigError(f"the bundled tasks are missing (no {here / SUITES_FILE}); reinstall the harness "
                              "(in a checkout: the harness/tasks symlink must point to ../tasks)")
    return here.resolve()


class Suite(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    description: str = ""
    tasks: list[str]
    code_execution_tasks: list[str] = Field(default_factory=list)
    requires_loglikelihood: bool = False
    letter_tasks: list[str] = Field(default_factory=list)  # multiple-choice tasks scored by letters
    samples: dict[str, list[int]] | None = None


def load_suites(tasks_dir: Path | None = None) -> dict[str, Suite]:
    path = (tasks_dir or bundled_tasks_dir()) / SUITES_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TaskConfigError(f"cannot read the suites file {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format_version") != 1:
        raise TaskConfigError(f"{path} is not a format_version 1 suites file")
    return {name: Suite(name=name, **body) for name, body in (data.get("suites") or {}).items()}


def get_suite(name: str) -> Suite:
    suites = load_suites()
    if name not in suites:
        close = difflib.get_close_matches(name, suites, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TaskConfigError(f"unknown suite '{name}'{hint}; suites: {', '.join(suites)}")
    return suites[name]


class _AnyTagLoader(yaml.SafeLoader):
    """Reads lm-eval task YAML for syntax only: ``!function x.y`` and other tags become None."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_yaml_files(folder: Path) -> list[Path]:
    """The files lm-eval reads as task configs: ``*.yaml`` and ``*_yaml`` include templates."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix == ".yaml" or p.name.endswith("_yaml"))
                  and "__pycache__" not in p.parts)


def check_tasks_dir(folder: Path) -> Path:
    """Refuse a folder that is missing or holds a task file that does not parse (file and line)."""
    folder = folder.expanduser()
    if not folder.exists():
        raise TaskConfigError(f"--tasks-dir {folder}: no such folder")
    if not folder.is_dir():
        raise TaskConfigError(f"--tasks-dir {folder} is a file; give a folder of lm-eval task YAML files")
    files = task_yaml_files(folder)
    if not files:
        raise TaskConfigError(f"--tasks-dir {folder} holds no task YAML files (*.yaml)")
    for path in files:
        try:
            yaml.load(path.read_text(), Loader=_AnyTagLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            problem = exc.problem or exc.context or "invalid YAML"
            raise TaskConfigError(f"task file {where}: {problem} (the YAML does not parse)") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise TaskConfigError(f"task file {path}: {exc} (the YAML does not parse)") from None
    return folder.resolve()


class TaskSelection(BaseModel):
    """What to evaluate, decided before any process starts."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str]
    suite: str | None = None
    samples: dict[str, list[int]] | None = None  # leaf task -> doc indices (lm-eval's samples=)
    code_execution_tasks: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)  # task -> why it was left out
    # requested names whose multiple-choice tasks are letter-scored (harness.measurement.letters)
    letter_tasks: list[str] = Field(default_factory=list)


def select_tasks(tasks: str | None, suite: str | None, limit: int | None, allow_code_execution: bool) -> TaskSelection:
    if bool(tasks) == bool(suite):
        raise ConfigError("give either --tasks T1,T2 or --suite NAME (one of them)")
    if suite:
        s = get_suite(suite)
        skipped = {} if allow_code_execution else {
            t: "executes model-written code; rerun with --allow-code-execution to include it" for t in s.code_execution_tasks}
        names = [t for t in s.tasks if t not in skipped]
        # --limit replaces the suite's fixed sample (lm-eval takes one or the other)
        samples = s.samples if limit is None else None
        if samples is not None:
            samples = {k: v for k, v in samples.items() if k not in skipped}
        return TaskSelection(tasks=names, suite=suite, samples=samples, skipped=skipped,
                             code_execution_tasks=[t for t in s.code_execution_tasks if t in names],
                             letter_tasks=[t for t in s.letter_tasks if t in names])
    names: list[str] = []
    for part in tasks.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"--tasks '{tasks}' has an empty name; give names separated by commas")
        if part not in names:
            names.append(part)
    return TaskSelection(tasks=names)
