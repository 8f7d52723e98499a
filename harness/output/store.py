"""Result files: written atomically, read back validated.

Everything written here passes through environment.redact() first, so no token or key
reaches a result file or a log, whatever a backend or an engine put into the text.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path

from pydantic import ValidationError

from harness.core.environment import redact
from harness.core.errors import OutputFileError, ResultFileError
from harness.core.record import SCHEMA_VERSION, SWEEP_SCHEMA_VERSION, RunRecord, SweepRecord


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write text or bytes to a temporary file in the same folder, flush to disk, then rename.

    A file that cannot be written (a full disk, a read-only folder) is an OutputFileError
    naming ``path``; whatever was at ``path`` before is left as it was.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputFileError(path, exc) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; results and reports are for sharing
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputFileError(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _slug(text: str, empty: str = "model") -> str:
    """Letters, digits, '_', '.' and '-' only, never starting with '.' or '-': a plain file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-.")[:60].rstrip("-.") or empty


def record_filename(record: RunRecord) -> str:
    """STAMP-MODEL-BACKEND-RUNID.json, every part slugged: each comes from a record, which
    may have been read from a file or named by a plugin, so none may steer the path."""
    stamp = _slug(record.created_at.replace("-", "").replace(":", "")[:15], "undated")
    model = _slug(record.model.name or Path(record.model.path).stem)
    return f"{stamp}-{model}-{_slug(record.backend.name, 'backend')}-{_slug(record.run_id, 'run')}.json"


def is_plain_file_name(name: object) -> bool:
    """A bare file name: no folder part, no '..', not hidden, nothing a path could be steered with."""
    return (isinstance(name, str) and bool(name) and not name.startswith(".") and "/" not in name
            and "\\" not in name and "\0" not in name and Path(name).name == name)


def _check_summary_paths(path: Path, summary: SweepRecord) -> SweepRecord:
    """Every file a sweep summary names must be a plain file name in its own folder: --resume
    deletes the result files it replaces, and a reader opens them."""
    named = [(f"cell {c.index}'s result_file", c.result_file) for c in summary.cells if c.result_file is not None]
    named += [("superseded_files", f) for f in summary.superseded_files]
    for what, name in named:
        if not is_plain_file_name(name):
            raise ResultFileError(f"{path}: {what} {name!r} is not a plain file name inside {path.parent}; "
                                  "refused (the summary is damaged or was edited: move it aside)")
    return summary


def check_writable_dir(out_dir: Path, option: str = "--out") -> None:
    """Before anything is measured: ``out_dir`` (or the folder it would be made in) can be
    written, so a read-only or forbidden folder is refused before the work, not after it."""
    parent = out_dir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ResultFileError(f"{option} {out_dir}: {parent} is a file; give a folder for result files")
    if not os.access(parent, os.W_OK | os.X_OK):
        # access(2) says why: EACCES for permissions, EROFS for a read-only file system
        code = errno.EROFS if os.statvfs(parent).f_flag & os.ST_RDONLY else errno.EACCES
        raise OutputFileError(parent, OSError(code, os.strerror(code)), f"{option} {out_dir}: cannot write to")


def write_record(record: RunRecord, out_dir: Path) -> Path:
    path = out_dir / record_filename(record)
    text = redact(record.model_dump_json(indent=2)) + "\n"
    if os.environ.get("HARNESS_CHECK_SCHEMA"):  # the published schema must describe what is written
        from harness.core.schema import check_record

        check_record(json.loads(text))
    write_atomic(path, text)
    return path


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return -1


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ResultFileError(f"cannot read result file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path} is not valid JSON (truncated or damaged at line {exc.lineno}); rerun the benchmark that wrote it") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise ResultFileError(f"{path} is not a harness result file (no schema_version)")
    return data


def _validate(path: Path, data: dict, cls, schema_version: str):
    if _major(data["schema_version"]) > _major(schema_version):
        raise ResultFileError(f"{path} has schema {data['schema_version']}, newer than this harness reads ({schema_version}); upgrade the harness")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ResultFileError(f"{path} fails schema validation at '{where}': {first['msg']}") from None


def read_record(path: Path) -> RunRecord:
    """Load and validate one result file; refuse damaged or newer-schema files by name."""
    data = _read_json(path)
    if data.get("kind") == "sweep":
        raise ResultFileError(f"{path} is a sweep summary, not a run record; give it to `harness show`, or read it with harness.output.store.load_records")
    return _validate(path, data, RunRecord, SCHEMA_VERSION)


# ------------------------------------------------------------------- sweep summaries

SWEEP_SUMMARY_NAME = "sweep.json"  # what `harness sweep` calls its summary, in the sweep's folder


def write_sweep(summary: SweepRecord, path: Path) -> None:
    write_atomic(path, redact(summary.model_dump_json(indent=2)) + "\n")


def read_sweep(path: Path) -> SweepRecord:
    """Load and validate a sweep summary, with read_record's refusals."""
    data = _read_json(path)
    if data.get("kind") != "sweep":
        raise ResultFileError(f"{path} is not a sweep summary (kind '{data.get('kind', 'run')}')")
    return _check_summary_paths(path, _validate(path, data, SweepRecord, SWEEP_SCHEMA_VERSION))


def read_any(path: Path) -> RunRecord | SweepRecord:
    data = _read_json(path)
    if data.get("kind") == "sweep":
        return _check_summary_paths(path, _validate(path, data, SweepRecord, SWEEP_SCHEMA_VERSION))
    return _validate(path, data, RunRecord, SCHEMA_VERSION)


def sweep_cell_records(summary: SweepRecord, summary_path: Path) -> list[tuple[Path, RunRecord]]:
    """The run records a sweep summary lists, each read (and validated) from its file."""
    out = []
    for cell in summary.cells:
        if cell.result_file:
            path = summary_path.parent / cell.result_file
            out.append((path, read_record(path)))
    return out


def load_records(paths: list[Path]) -> tuple[list[RunRecord], list[SweepRecord]]:
    """Every run record the paths name: files, folders (their *.json), and sweep summaries
    (the cells' result files they list). Each file is read once; a damaged one is refused."""
    records: list[RunRecord] = []
    sweeps: list[SweepRecord] = []
    seen: set[Path] = set()

    def add(path: Path, record: RunRecord) -> None:
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            records.append(record)

    for path in expand_paths(paths, summaries=True):
        item = read_any(path)
        if isinstance(item, SweepRecord):
            sweeps.append(item)
            seen.add(path.resolve())
            for cell_path, record in sweep_cell_records(item, path):
                add(cell_path, record)
        else:
            add(path, item)
    return records, sweeps


# ------------------------------------------------------------------ per-sample logs


class JsonlLog:
    """A per-sample log: one JSON object a line, appended and flushed line by line.

    A crash loses at most the line being written; read_jsonl() skips a torn last line.
    Lines are redacted like every other file the harness writes.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a", buffering=1)
        except OSError as exc:
            raise OutputFileError(path, exc) from None

    def append(self, obj: dict) -> None:
        try:
            self._fh.write(redact(json.dumps(obj)) + "\n")
            self._fh.flush()
        except OSError as exc:
            raise OutputFileError(self.path, exc) from None

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                with contextlib.suppress(OSError):
                    self._fh.close()
                raise OutputFileError(self.path, exc) from None
            self._fh.close()

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of a per-sample log; a torn final line (a crash mid-write) is dropped."""
    out = []
    lines = path.read_text().split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # the last line, with no newline after it: torn by a crash
                break
            raise ResultFileError(f"{path} line {n} is not valid JSON; the log is damaged") from None
    return out


def _sweep_summary(path: Path) -> SweepRecord | None:
    """The sweep summary at path, or None when it is something else (or unreadable: the
    caller's read_record then refuses it by name)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return read_sweep(path) if isinstance(data, dict) and data.get("kind") == "sweep" else None


def expand_paths(paths: list[Path], summaries: bool = False) -> list[Path]:
    """Result files named directly, and every *.json inside named folders.

    A sweep summary named directly stands for the result files of its cells, so every
    reader of run records (compare, report) accepts one. A folder's sweep summaries
    (sweep.json) are left out: the run records they list are in the folder already. With
    ``summaries`` both are kept as they are, for a caller that reads them itself.
    """
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.json") if not q.name.startswith(".")
                              and (summaries or q.name != SWEEP_SUMMARY_NAME)))
        elif not summaries and (summary := _sweep_summary(p)) is not None:
            out.extend(p.parent / c.result_file for c in summary.cells if c.result_file)
        else:
            out.append(p)
    return out
