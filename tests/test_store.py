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


# ------------------------------------------------------------------ the one record loader


def test_the_loader_reads_files_and_folders_once_each(tmp_path):
    from harness.output.store import load_records

    path = write_record(_record(), tmp_path / "runs")
    loaded = load_records([tmp_path / "runs", path])
    assert loaded.records == [_record()] and loaded.files == [path] and loaded.sweeps == []


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[:200], r"is not valid JSON \(truncated or damaged at line \d+\); rerun the benchmark"),
    (lambda text: text.replace('"schema_version": "1.', '"schema_version": "9.'),
     r"has schema 9\.\S+, newer than this harness reads \(\S+\); upgrade the harness"),
    (lambda text: '{"hello": 1}', r"is not a harness result file \(no schema_version\)"),
])
def test_the_loader_refuses_a_bad_file_in_a_folder_by_its_name(tmp_path, damage, message):
    from harness.output.store import load_records

    good = write_record(_record(), tmp_path / "runs")
    bad = tmp_path / "runs" / "zz-bad.json"
    bad.write_text(damage(good.read_text()))
    with pytest.raises(ResultFileError, match=f"^{re.escape(str(bad))} {message}") as err:
        load_records([tmp_path / "runs"])
    assert "\n" not in str(err.value)


def test_the_loader_names_the_argument_that_is_missing_or_empty(tmp_path):
    from harness.output.store import load_records

    with pytest.raises(ResultFileError, match=f"^base {re.escape(str(tmp_path / 'nowhere'))} does not exist$"):
        load_records([tmp_path / "nowhere"], "base")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultFileError, match=r"^result path .*empty holds no result files \(\*\.json\)$"):
        load_records([tmp_path / "empty"])


def test_a_folders_sweep_summary_is_read_only_when_asked_for(tmp_path):
    """show reads the summaries in a folder (its cells' records once each); compare, report and
    trend pass over them, since the records they list are in the folder already."""
    from harness.core.record import SweepCell, SweepRecord
    from harness.output.store import load_records, write_sweep

    out = tmp_path / "sweep"
    path = write_record(_record(), out)
    cell = SweepCell(index=1, key="k", label="c", kind="perf", model_ref="m", model_sha256="0" * 64,
                     backend="llamacpp", timeout_s=1.0, status="ok", result_file=path.name)
    write_sweep(SweepRecord(sweep_id="s", created_at="t", updated_at="t", harness_version="0.1.0",
                            matrix_file="m.yaml", matrix_sha256="0", cells=[cell]), out / "sweep.json")
    shown = load_records([out], summaries=True)
    assert shown.files == [path] and [s.sweep_id for s in shown.sweeps] == ["s"]
    compared = load_records([out])
    assert compared.files == [path] and compared.sweeps == []
    assert load_records([out / "sweep.json"]).files == [path]  # a summary named stands for its cells


# ------------------------------------------------------------------ the one atomic writer


def test_written_files_and_folders_are_shared_like_any_other(tmp_path):
    """mkstemp makes 0600 and mkdtemp 0700: the writer widens them to what the umask allows."""
    import os

    from harness.output.store import replacing

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "r.json", "{}")
        with replacing(tmp_path / "converted", folder=True) as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "converted").stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "r.json"]


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path):
    from harness.output.store import replacing

    target = tmp_path / "converted"
    with replacing(target, folder=True) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target, folder=True) as tmp:
            (tmp / "a").write_text("new, half")
            raise RuntimeError("the conversion failed")
    assert [p.name for p in tmp_path.iterdir()] == ["converted"] and (target / "a").read_text() == "old"
    with replacing(target, folder=True) as tmp:  # a finished one replaces it whole
        (tmp / "b").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b"]
