"""Real benchmark runs shared by test_compare.py and test_report.py (one set per session).

Two invocations of the real bench on the bundled SmolLM2 through llama-cpp-python:
  A: --threads 1,2  -> one record per thread count (split into two folders)
  B: --threads 1    -> a repeat of A's 1-thread configuration, a separate run
Sizes are small (pp32, tg16, 5 repetitions) so both take seconds, yet every test has
five raw samples per side, enough for a Mann-Whitney U test to reach p < 0.05.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

BENCH = ("--pp", "32", "--tg", "16", "--reps", "5")


@dataclass
class Runs:
    t1: Path  # folder: threads=1 (run A)
    t2: Path  # folder: threads=2 (run A)
    t1_again: Path  # folder: threads=1 (run B)

    @staticmethod
    def file(folder: Path) -> Path:
        (f,) = sorted(folder.glob("*.json"))
        return f

    def data(self, folder: Path) -> dict:
        return json.loads(self.file(folder).read_text())


def _bench(out: Path, threads: str) -> list[Path]:
    from conftest import run_cli

    res = run_cli("bench", *BENCH, "--threads", threads, "--format", "json", "--out", str(out))
    assert res.code == 0, res.stderr
    return sorted(out.glob("*.json"))


_RUNS: list[Runs] = []  # test modules import the fixture, so each gets its own copy of it: build once


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> Runs:
    if not _RUNS:
        _RUNS.append(_make_runs(tmp_path_factory))
    return _RUNS[0]


def _make_runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("compare-runs")
    files = _bench(root / "a", "1,2")
    t1, t2, t1_again = root / "t1", root / "t2", root / "t1-again"
    for folder in (t1, t2):
        folder.mkdir()
    for f in files:
        threads = json.loads(f.read_text())["backend"]["settings"]["n_threads"]
        shutil.copy(f, (t1 if threads == 1 else t2) / f.name)
    _bench(t1_again, "1")
    runs = Runs(t1, t2, t1_again)
    for folder in (t1, t2, t1_again):
        runs.file(folder)  # exactly one record each
    return runs


def write_variant(src: Path, dest_dir: Path, change) -> Path:
    """A copy of a real record with `change(data)` applied, as a new result file."""
    data = json.loads(src.read_text())
    change(data)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    dest.write_text(json.dumps(data, indent=2))
    return dest
