"""Options -> the list of measured cases, grouped so each model loads once per group.

Every list-valued option multiplies the plan (llama-bench style). Cases that share a
model file and the backend's load-time settings form one load group: one process,
one model load, the other settings (threads, say) applied in turn.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from harness.core.backend import Backend, BackendSettings, setting_error
from harness.core.config import PerfTests
from harness.core.errors import ConfigError
from harness.core.models import ModelInfo


@dataclass
class Case:
    """One measured configuration: one model, one set of backend settings."""

    index: int
    model: ModelInfo
    settings: BackendSettings


@dataclass
class LoadGroup:
    backend: str
    model: ModelInfo
    cases: list[Case] = field(default_factory=list)


def expand_settings(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """{'a': [1, 2], 'b': [False]} -> every combination, in option order."""
    keys = [k for k, v in grid.items() if v]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _settings(backend_cls: type[Backend], model: ModelInfo, values: dict[str, Any], tests: PerfTests) -> BackendSettings:
    needed = backend_cls.context_for(tests.max_context())
    values = dict(values)
    context = backend_cls.Settings.role("context")  # the backend's context size, sized here when unset
    n_ctx = (values.get(context) if context else 0) or 0
    if n_ctx and n_ctx < needed:
        raise ConfigError(f"context too small: --n-ctx {n_ctx} but the largest test needs {needed} tokens; raise --n-ctx or shorten the tests")
    train = model.context_length_train
    if train and needed > train:
        raise ConfigError(f"context too small: the largest test needs {needed} tokens but {model.ref} was trained for {train}; use shorter tests")
    if context and not n_ctx:
        values[context] = needed
    try:
        return backend_cls.default_settings(model, **values)
    except ValidationError as exc:
        raise setting_error(backend_cls.name, exc) from None


def build_plan(backend_cls: type[Backend], models: list[ModelInfo], grid: dict[str, list[Any]], tests: PerfTests) -> list[LoadGroup]:
    groups: dict[tuple, LoadGroup] = {}
    index = 0
    for model in models:
        for values in expand_settings(grid) or [{}]:
            settings = _settings(backend_cls, model, values, tests)
            key = (model.path, settings.load_identity())
            group = groups.setdefault(key, LoadGroup(backend=backend_cls.name, model=model))
            group.cases.append(Case(index=index, model=model, settings=settings))
            index += 1
    return list(groups.values())
