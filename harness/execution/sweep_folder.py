"""A sweep's results folder: where it is, that it can take the results, and what --resume keeps of it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from harness import __version__
from harness.core.errors import ConfigError, ResultFileError
from harness.core.paths import DEFAULT_RESULTS_DIR
from harness.core.record import SweepCell, SweepRecord
from harness.execution.matrix import Cell
from harness.output.store import SWEEP_SUMMARY_NAME as SUMMARY_NAME, read_record, read_sweep


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


