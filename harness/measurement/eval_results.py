"""lm-eval's results as the record's accuracy entries: scores with their standard errors, the scoring
protocol and shots of each task and group, task config hashes, and the per-document samples file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable


# ----------------------------------------------------------------------------- results


def config_hash(config: dict) -> str:
    """sha256 of a task config as lm-eval reports it, without where it was read from."""
    cfg = json.loads(json.dumps(config, default=str))
    meta = cfg.get("metadata")
    if isinstance(meta, dict):
        meta.pop("config_source", None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


def task_config_hashes(results: dict) -> dict[str, str]:
    hashes = {name: config_hash(cfg) for name, cfg in (results.get("configs") or {}).items()}
    subtasks = results.get("group_subtasks") or {}

    def group(name: str) -> str:
        if name not in hashes:
            children = {c: group(c) if c in subtasks else hashes.get(c, "") for c in subtasks.get(name, [])}
            hashes[name] = hashlib.sha256(json.dumps(children, sort_keys=True).encode()).hexdigest()
        return hashes[name]

    for name in subtasks:
        group(name)
    return hashes


def requests_built(leaves: dict[str, Any]) -> int | None:
    """Requests lm-eval built for the tasks it just ran (each instance once per repeat):
    with the request cache, the model receives only those the cache could not answer."""
    try:
        return sum(max(1, int(getattr(i, "repeats", 1) or 1)) for task in leaves.values() for i in (task.instances or []))
    except Exception:  # an lm-eval whose tasks keep no instances: unknown, never a guess
        return None


SCORING = {"multiple_choice": "loglikelihood", "loglikelihood": "loglikelihood",
           "generate_until": "generative", "loglikelihood_rolling": "perplexity"}


def task_scorings(results: dict, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Task or group -> how its answers were scored, from each task's output_type (or, for a
    task scored another way, such as by letters, from ``overrides``)."""
    out = {name: SCORING.get(str((cfg or {}).get("output_type")), str((cfg or {}).get("output_type")))
           for name, cfg in (results.get("configs") or {}).items() if (cfg or {}).get("output_type")}
    out.update(overrides or {})
    subtasks = results.get("group_subtasks") or {}

    def group(name: str, seen: frozenset = frozenset()) -> str | None:
        if name in out:
            return out[name]
        kinds = {group(c, seen | {name}) for c in subtasks.get(name, []) if c not in seen} - {None}
        if kinds:
            out[name] = kinds.pop() if len(kinds) == 1 else "mixed"
        return out.get(name)

    for name in subtasks:
        group(name)
    return out


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f  # NaN: not computed


SKIP_KEYS = {"alias", "name", "sample_len", "sample_count", "samples"}


def accuracy_results(results: dict, scorings: dict[str, str] | None = None) -> list:
    """lm-eval's results dict -> AccuracyResult records (tasks, then groups); ``scorings``
    names the tasks scored otherwise than their output_type says."""
    from harness.core.record import AccuracyResult

    hashes = task_config_hashes(results)
    scorings = task_scorings(results, scorings)
    groups = set(results.get("groups") or {}) | set(results.get("group_subtasks") or {})
    entries = dict(results.get("results") or {})
    for name, entry in (results.get("groups") or {}).items():
        entries.setdefault(name, entry)
    parent = {child: g for g, children in (results.get("group_subtasks") or {}).items() for child in children}
    n_samples = results.get("n-samples") or {}
    n_shot = results.get("n-shot") or {}
    hib = results.get("higher_is_better") or {}
    versions = results.get("versions") or {}
    out = []
    for name, entry in entries.items():
        for key, value in entry.items():
            if key in SKIP_KEYS or "," not in key or "_stderr," in key:
                continue
            metric, _, filt = key.partition(",")
            count = (entry.get("sample_count") or {}).get(key) if isinstance(entry.get("sample_count"), dict) else None
            if count is None:
                count = n_samples.get(name, {}).get("effective", entry.get("sample_len"))
            shots = n_shot.get(name, group_shots(name, n_shot, results.get("group_subtasks") or {}))
            out.append(AccuracyResult(
                task=name, alias=entry.get("alias"), kind="group" if name in groups else "task", parent=parent.get(name),
                metric=metric, filter=filt or "none", value=_number(value),
                stderr=_number(entry.get(f"{metric}_stderr,{filt}")),
                n=int(count) if count is not None else None,
                n_total=n_samples.get(name, {}).get("original"),
                num_fewshot=int(shots) if isinstance(shots, (int, float)) else None,
                higher_is_better=(hib.get(name) or {}).get(metric),
                task_version=None if versions.get(name) is None else str(versions.get(name)),
                task_config_hash=hashes.get(name), scoring=scorings.get(name),
            ))
    return out


def group_shots(name: str, n_shot: dict, subtasks: dict) -> int | None:
    """A group's few-shot count: the one its tasks share (lm-eval reports none for a group)."""
    def leaves(n: str, seen: frozenset = frozenset()) -> list[str]:
        return [leaf for c in subtasks.get(n, []) if c not in seen for leaf in leaves(c, seen | {n})] \
            if n in subtasks else [n]

    counts = {n_shot.get(leaf) for leaf in leaves(name)}
    return counts.pop() if len(counts) == 1 and name in subtasks else None


def _first_text(value: Any) -> str | None:
    """A logged request's context: the first string among its arguments."""
    if isinstance(value, str):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for v in items:
        found = _first_text(v)
        if found is not None:
            return found
    return None


def write_samples(results: dict, path: Path, render: Callable[[str], str | None] | None = None) -> int:
    """lm-eval's per-document samples (--log-samples) as JSON Lines, written atomically.

    ``render`` gives the text a conversation was rendered to in process (the model's chat
    template applied), logged as ``rendered_prompt`` beside the messages."""
    from lm_eval.utils import handle_non_serializable

    from harness.output.store import write_atomic

    lines = []
    for task, samples in (results.get("samples") or {}).items():
        for s in samples:
            extra = {}
            if render is not None:
                context = _first_text(s.get("arguments"))
                text = render(context) if context is not None else None
                if text is not None:
                    extra["rendered_prompt"] = text
            lines.append(json.dumps({"task": task, **s, **extra}, default=handle_non_serializable, ensure_ascii=False))
    write_atomic(path, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)
