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
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pydantic import ValidationError

from harness.core.environment import redact
from harness.core.errors import OutputFileError, ResultFileError
from harness.core.record import SCHEMA_VERSION, SWEEP_SCHEMA_VERSION, RunRecord, SweepRecord


@contextlib.contextmanager
def replacing(path: Path, folder: bool = False) -> Iterator[Path]:
    """A temporary file (or, with ``folder``, folder) beside ``path`` for the caller to fill;
    when the block ends it takes the place of ``path`` in one rename, so a reader never sees
    half of it. The one place the harness writes by temporary file and rename.

    A file is flushed to disk before the rename. Whatever was at ``path`` before is left as
    it was when the block fails: the temporary is removed, and an OSError (a full disk, a
    read-only folder) is an OutputFileError naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise OutputFileError(path, exc) from None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        # mkstemp makes 0600 and mkdtemp 0700: results, reports and caches are for sharing
        os.chmod(tmp, (0o777 if folder else 0o666) & ~umask)
        if folder:
            shutil.rmtree(path, ignore_errors=True)  # a folder replaces only an empty one or none
        else:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise OutputFileError(path, exc) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write text or bytes to ``path`` through replacing(): all of it or, on failure, nothing."""
    with replacing(path) as tmp:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text, encoding="utf-8")


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
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultFileError(f"{option} {out_dir} is a file; give a folder for result files")
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


@dataclass
class LoadedRecords:
    """What result paths hold: the run records, the file each was read from, and the sweep summaries read."""

    records: list[RunRecord] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    sweeps: list[SweepRecord] = field(default_factory=list)


def load_records(paths: list[Path], what: str = "result path", summaries: bool = False) -> LoadedRecords:
    """Every run record the paths name: the one reader of result files for every command.

    A path is a result file, a folder (its *.json at any depth) or a sweep summary, which
    stands for its cells' result files. Each file is read once. A missing path, paths that
    hold no result files and a damaged, foreign or newer-schema file are refused in one
    line naming the path (``what`` says which argument it is: "base", "history").
    With ``summaries`` (harness show) the sweep summaries inside folders are read too, and
    a summary with no finished cell is something to show; otherwise a folder's summaries
    are passed over, since the result files they list are in the folder already.
    """
    for p in paths:
        if not p.exists():
            raise ResultFileError(f"{what} {p} does not exist")
    loaded = LoadedRecords()
    seen: set[Path] = set()

    def add(path: Path, record: RunRecord) -> None:
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            loaded.records.append(record)
            loaded.files.append(path)

    for path in expand_paths(paths, summaries):
        item = read_any(path)
        if isinstance(item, SweepRecord):
            loaded.sweeps.append(item)
            for cell_path, record in sweep_cell_records(item, path):
                add(cell_path, record)
        else:
            add(path, item)
    if not loaded.records and not (summaries and loaded.sweeps):
        raise ResultFileError(f"{what} {', '.join(map(str, paths))} holds no result files (*.json)")
    return loaded


def expand_paths(paths: list[Path], summaries: bool = False) -> list[Path]:
    """Files named directly, and every *.json inside named folders (hidden files left out,
    and the folders' sweep summaries, sweep.json, unless ``summaries``)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.json") if not q.name.startswith(".")
                              and (summaries or q.name != SWEEP_SUMMARY_NAME)))
        else:
            out.append(p)
    return out


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
