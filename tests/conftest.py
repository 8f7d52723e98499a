"""Shared fixtures: the real bundled model, and the real CLI run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Each test session gets its own sha256/model cache, so tests never see a user's."""
    os.environ["HARNESS_CACHE_DIR"] = str(tmp_path_factory.mktemp("harness-cache"))


@pytest.fixture(scope="session", autouse=True)
def _records_match_the_published_schema():
    """Every record any test makes the harness write (in this process or a CLI it starts) is
    validated against results/schema/run.schema.json first; a mismatch fails that write."""
    os.environ["HARNESS_CHECK_SCHEMA"] = "1"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from harness.core.models import BUNDLED

    return BUNDLED["smollm2-135m"].locate()


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    from harness.core.models import resolve

    return resolve("smollm2-135m")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None) -> CliResult:
    """Run `harness ARGS` in a fresh process, exactly as a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or REPO)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli
