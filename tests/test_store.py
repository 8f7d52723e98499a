"""Result files: atomic writes, and refusal of damaged, foreign or newer files by name."""

from __future__ import annotations

import json
import re

import pytest

from harness.core.errors import ResultFileError
from harness.core.models import ModelInfo
from harness.core.record import BackendInfo, RunRecord
from harness.output.store import read_record, write_atomic, write_record


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


@pytest.mark.parametrize("field, value", [
    ("backend", "../../escaped"), ("run_id", "../../../escaped"), ("created_at", "../../2026/x"),
    ("model", "/etc/cron.d/evil"), ("backend", ".hidden"), ("run_id", "a\x00b\\c"),
])
def test_every_part_of_a_result_file_name_is_slugged(tmp_path, field, value):
    """backend.name, run_id, created_at and the model's name all go into the file name: none
    of them may steer where the file goes, hide it, or make a name the file system refuses."""
    record = _record()
    if field == "backend":
        record.backend.name = value
    elif field == "model":
        record.model.name = value
    else:
        setattr(record, field, value)
    out = tmp_path / "out"
    path = write_record(record, out)
    assert path.parent == out and [p.name for p in tmp_path.rglob("*") if p.is_file()] == [path.name]
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.json", path.name), path.name
    assert ".." not in path.name
    assert read_record(path).run_id == record.run_id  # the record itself keeps what it said


@pytest.mark.parametrize("name", ["../victim.json", "/tmp/victim.json", "sub/x.json", ".hidden.json", "..", "",
                                  "a\\b.json"])
def test_a_summary_naming_a_file_outside_its_folder_is_refused(tmp_path, name):
    from harness.core.record import SweepCell, SweepRecord
    from harness.output.store import read_sweep, write_sweep

    cell = SweepCell(index=1, key="k", label="c", kind="perf", model_ref="m", model_sha256="0" * 64,
                     backend="llamacpp", timeout_s=1.0, status="ok", result_file=name)
    summary = SweepRecord(sweep_id="s", created_at="t", updated_at="t", harness_version="0.1.0", matrix_file="m.yaml",
                          matrix_sha256="0", cells=[cell])
    path = tmp_path / "sweep.json"
    write_sweep(summary, path)
    with pytest.raises(ResultFileError, match=r"cell 1's result_file .* is not a plain file name inside"):
        read_sweep(path)
    write_sweep(summary.model_copy(update={"cells": [], "superseded_files": [name]}), path)
    with pytest.raises(ResultFileError, match=r"superseded_files .* is not a plain file name"):
        read_sweep(path)
