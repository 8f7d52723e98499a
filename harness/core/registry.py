"""Backend names -> classes, imported on first use.

Built-in backends live in backends/, one file each. Third-party packages add their
own through the ``harness.backends`` entry-point group (``name = "pkg.mod:Class"``).
Nothing here imports an engine: a backend module imports its engine inside load().
"""

from __future__ import annotations

import difflib
import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Iterable

from harness.core.backend import Backend, SettingMeta
from harness.core.errors import BackendError

ENTRY_POINT_GROUP = "harness.backends"

BUILTIN: dict[str, str] = {
    "llamacpp": "harness.backends.llamacpp:LlamaCppBackend",
    "openai": "harness.backends.openai_http:OpenAIHttpBackend",
    "vllm": "harness.backends.vllm_engine:VllmBackend",
}


@lru_cache(maxsize=1)
def available() -> dict[str, str]:
    """Every known backend name with its ``module:Class`` target."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def get(name: str) -> type[Backend]:
    targets = available()
    if name not in targets:
        close = difflib.get_close_matches(name, targets, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BackendError(f"unknown backend '{name}'{hint}; known backends: {', '.join(sorted(targets))}")
    module_name, _, class_name = targets[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"backend '{name}' could not be loaded from {targets[name]}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend '{name}' at {targets[name]} is not a harness Backend")
    return cls


def settings_metadata(backend_names: Iterable[str]) -> dict[str, SettingMeta]:
    """What these backends declare about their settings (harness.core.backend.setting), merged in
    the registry's order (built-ins first), the first declaration of a name winning; a
    backend that cannot be loaded here (a plugin since uninstalled) adds nothing."""
    wanted = set(backend_names)
    merged: dict[str, SettingMeta] = {}
    for name in [n for n in available() if n in wanted]:
        try:
            metadata = get(name).Settings.metadata()
        except BackendError:
            continue
        for key, meta in metadata.items():
            merged.setdefault(key, meta)
    return merged


def unattended() -> tuple[list[str], dict[str, str]]:
    """The backends that can run with no one there (installed, and no setting without a
    default, such as a server's URL), and why each other known backend cannot."""
    ok, skipped = [], {}
    for name in sorted(available()):
        try:
            cls = get(name)
            if cls.installed_version() is None:
                skipped[name] = "not installed"
                continue
        except Exception as exc:  # a broken plugin must not stop the others
            skipped[name] = f"cannot load: {exc}"
            continue
        required = [k for k, f in cls.Settings.model_fields.items() if f.is_required()]
        if required:
            skipped[name] = f"needs {', '.join(required)} (not run unattended)"
            continue
        ok.append(name)
    return ok, skipped
