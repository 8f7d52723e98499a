"""Result files: written atomically, read back validated."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from pydantic import ValidationError

from harness.errors import ResultFileError
from harness.record import SCHEMA_VERSION, RunRecord


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, flush to disk, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "model"


def record_filename(record: RunRecord) -> str:
    stamp = record.created_at.replace("-", "").replace(":", "")[:15]
    model = _slug(record.model.name or Path(record.model.path).stem)
    return f"{stamp}-{model}-{record.backend.name}-{record.run_id}.json"


def write_record(record: RunRecord, out_dir: Path) -> Path:
    path = out_dir / record_filename(record)
    write_atomic(path, record.model_dump_json(indent=2) + "\n")
    return path


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return -1


def read_record(path: Path) -> RunRecord:
    """Load and validate one result file; refuse damaged or newer-schema files by name."""
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
    if _major(data["schema_version"]) > _major(SCHEMA_VERSION):
        raise ResultFileError(f"{path} has schema {data['schema_version']}, newer than this harness reads ({SCHEMA_VERSION}); upgrade the harness")
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ResultFileError(f"{path} fails schema validation at '{where}': {first['msg']}") from None


def expand_paths(paths: list[Path]) -> list[Path]:
    """Result files named directly, and every *.json inside named folders."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.json") if not q.name.startswith(".")))
        else:
            out.append(p)
    return out
