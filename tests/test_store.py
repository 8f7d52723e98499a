"""Result files: atomic writes, and refusal of damaged, foreign or newer files by name."""

from __future__ import annotations

import json

import pytest

from harness.errors import ResultFileError
from harness.models import ModelInfo
from harness.record import BackendInfo, RunRecord
from harness.store import read_record, write_atomic, write_record


def _record() -> RunRecord:
    model = ModelInfo(ref="m.gguf", path="/m.gguf", sha256="0" * 64, size_bytes=1)
    return RunRecord(run_id="abc123", created_at="2026-12-01T00:00:00Z", harness_version="0.1.0", model=model,
                     backend=BackendInfo(name="llamacpp", settings={"n_threads": 2}))


def test_round_trip(tmp_path):
    path = write_record(_record(), tmp_path)
    assert read_record(path) == _record()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_failed_write_leaves_nothing(tmp_path):

    with pytest.raises(TypeError):
        write_atomic(tmp_path / "x.json", 123)  # not text: the write fails midway
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_refused_by_name(tmp_path):
    path = write_record(_record(), tmp_path)
    path.write_text(path.read_text()[:200])
    with pytest.raises(ResultFileError, match=f"{path}.*not valid JSON"):
        read_record(path)


def test_newer_schema_is_refused(tmp_path):
    path = write_record(_record(), tmp_path)
    data = json.loads(path.read_text())
    data["schema_version"] = "2.0"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match="newer"):
        read_record(path)


def test_schema_violation_names_the_field(tmp_path):
    path = write_record(_record(), tmp_path)
    data = json.loads(path.read_text())
    data["perf"] = [{"test": "pp512"}]
    path.write_text(json.dumps(data))
    with pytest.raises(ResultFileError, match="perf.0"):
        read_record(path)


def test_foreign_json_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ResultFileError, match="not a harness result"):
        read_record(path)
