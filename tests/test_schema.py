"""The published JSON Schema: in step with the record models, and strict enough to refuse a bad record."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.errors import ResultFileError
from harness.core.schema import SCHEMA_FILE, check_record, schema_text

REPO = Path(__file__).resolve().parent.parent


def test_committed_schema_is_what_the_models_generate():
    assert SCHEMA_FILE == REPO / "results" / "schema" / "run.schema.json"
    assert SCHEMA_FILE.read_text() == schema_text(), "stale: run python -m harness.core.schema and commit the file"
    check = subprocess.run([sys.executable, "-m", "harness.core.schema", "--check"], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_check_says_when_the_file_is_stale(tmp_path, monkeypatch):
    import harness.core.schema as schema

    stale = tmp_path / "run.schema.json"
    stale.write_text(schema_text().replace('"n_depth"', '"n_depth_old"', 1))
    monkeypatch.setattr(schema, "SCHEMA_FILE", stale)
    assert schema.main(["--check"]) == 1


def test_a_written_record_validates_and_a_broken_one_does_not(tmp_path):
    from harness.core.record import PerfResult
    from harness.output.store import write_record
    from test_store import _record

    r = _record()
    r.perf = [PerfResult(test="pp8 @ d16", n_prompt=8, n_gen=0, n_depth=16, reps=1, tps_mean=1.0, tps_stddev=0.0,
                         samples_tps=[1.0], samples_ms=[8000.0])]
    data = json.loads(write_record(r, tmp_path).read_text())  # the conftest sets HARNESS_CHECK_SCHEMA: checked on write
    check_record(data)
    for broken, where in ((dict(data, status="fine"), "status"),
                          (dict(data, perf=[dict(data["perf"][0], n_depth="deep")]), "perf/0/n_depth"),
                          ({k: v for k, v in data.items() if k != "model"}, "(top)")):
        with pytest.raises(ResultFileError, match=f"at {re.escape(where)}"):
            check_record(broken)
