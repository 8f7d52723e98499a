"""Checks shared by the CLI tests."""

from __future__ import annotations

import re
from pathlib import Path


def assert_one_line_error(r, out_dir: Path, pattern: str) -> None:
    """Refused the way bad input must be: one `error:` line matching pattern, a non-zero
    exit, no traceback, no result file."""
    assert r.code != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("[harness]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not out_dir.exists() or not list(out_dir.glob("*.json"))
