"""lm-eval's tasks for a run: resolved by lm-eval's TaskManager from the bundled folder and the user's,
their data read and checked before a model loads."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


# ----------------------------------------------------------------------------- tasks


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def quiet_lm_eval() -> None:
    """lm-eval logs a great deal at INFO/WARNING; the worker keeps errors only."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in ("lm_eval", "lm-eval", "datasets", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def stock_task_names() -> set[str]:
    """Every task, group and tag name stock lm-eval knows, cached per lm-eval version.

    Indexing lm-eval's own task files reads every one of its ~14k YAML files, so it happens
    only when a name is not among the bundled tasks, and once per lm-eval version.
    """
    from lm_eval.tasks import TaskManager

    from harness.core.paths import cache_dir
    from harness.output.store import write_atomic

    path = cache_dir() / f"lm-eval-{lm_eval_version()}-task-names.json"
    try:
        return set(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    names = set(TaskManager(include_defaults=True).all_tasks)
    write_atomic(path, json.dumps(sorted(names)))
    return names


def task_manager_for(names: list[str], dirs: list[str]):
    """A TaskManager that knows every name: the bundled and user folders alone when they
    suffice (fast), with lm-eval's stock tasks under them otherwise. Later folders win."""
    import difflib

    from lm_eval.tasks import TaskManager

    from harness.measurement.suites import TaskConfigError

    tm = TaskManager(include_path=list(dirs), include_defaults=False)
    missing = [n for n in names if n not in tm.all_tasks and not Path(n).is_file()]
    if not missing:
        return tm
    stock = stock_task_names()
    unknown = [n for n in missing if n not in stock]
    if unknown:
        known = sorted(set(tm.all_tasks) | stock)
        parts = []
        for n in unknown:
            close = difflib.get_close_matches(n, known, n=5, cutoff=0.6)
            parts.append(f"'{n}'" + (f" (close matches: {', '.join(close)})" if close else ""))
        raise TaskConfigError(f"unknown task {'; '.join(parts)}; bundled tasks and suites: see tasks/README.md, "
                              "or add a folder of task YAML files with --tasks-dir")
    return TaskManager(include_path=list(dirs), include_defaults=True)


@dataclass
class LoadedTasks:
    manager: Any
    objects: list[Any]  # Task / Group objects, one per requested name (a tag gives several)
    leaves: dict[str, Any]  # leaf task name -> Task
    owner: dict[str, str] = field(default_factory=dict)  # leaf task name -> the requested name it came from

    def output_types(self) -> dict[str, str]:
        return {name: task.OUTPUT_TYPE for name, task in self.leaves.items()}

    def needing_logprobs(self) -> list[str]:
        return [n for n, t in self.output_types().items() if t != "generate_until"]

    def executing_code(self) -> list[str]:
        return [n for n, t in self.leaves.items() if getattr(t, "UNSAFE_CODE", False)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def load_tasks(names: list[str], dirs: list[str]) -> LoadedTasks:
    """Resolve and build the requested tasks (their data is read here): one clear error each."""
    from harness.measurement.suites import TaskConfigError

    tm = task_manager_for(names, dirs)
    objects: list[Any] = []
    leaves: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name in names:
        try:
            loaded = tm.load([name])
        except FileNotFoundError as exc:
            raise TaskConfigError(f"task '{name}': a data file is missing: {exc.filename or _first_line(exc)}") from None
        except Exception as exc:  # lm-eval and datasets raise many kinds; the first line names the problem
            hint = ""
            if "hub" in str(exc).lower() or isinstance(exc, (ConnectionError, OSError)):
                hint = ("; its data comes from the Hugging Face hub, which is not reachable (the bundled tasks "
                        "need no network: mmlu_snapshot, gsm8k, truthfulqa_mc1, truthfulqa_mc2, humaneval)")
            raise TaskConfigError(f"task '{name}' could not be loaded: {type(exc).__name__}: {_first_line(exc)}{hint}") from None
        if name in loaded["groups"]:
            objects.append(loaded["groups"][name])
        elif name in loaded["tasks"]:
            objects.append(loaded["tasks"][name])
        else:  # a tag: its tasks
            objects.extend(loaded["tasks"].values())
        for leaf, task in loaded["tasks"].items():
            if leaf in owner:
                raise TaskConfigError(f"task '{leaf}' is asked for twice (in '{owner[leaf]}' and in '{name}'); give it once")
            owner[leaf] = name
            leaves[leaf] = task
    return LoadedTasks(manager=tm, objects=objects, leaves=leaves, owner=owner)


