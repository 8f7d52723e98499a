"""How long a sweep's cells will take, from the speeds earlier results in its folder measured."""

from __future__ import annotations

import statistics
from pathlib import Path

import psutil

from harness.core import registry
from harness.core.errors import HarnessError, ResultFileError
from harness.execution.matrix import Cell
from harness.output.store import SWEEP_SUMMARY_NAME as SUMMARY_NAME, expand_paths, read_record


# --------------------------------------------------------------------- estimates


def threads_setting(backend: str) -> str | None:
    """The backend's thread-count setting (its "threads" role), where it is known here and has one."""
    try:
        return registry.get(backend).Settings.role("threads")
    except HarnessError:
        return None


def measured_speeds(out_dir: Path) -> dict[tuple, dict[str, list[float]]]:
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


