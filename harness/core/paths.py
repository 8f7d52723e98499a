"""Where the harness keeps caches and results."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RESULTS_DIR = Path("results/runs")
# the installed package's folder: its data/ and tasks/ sit here, beside the layer packages
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """$HARNESS_CACHE_DIR, else $XDG_CACHE_HOME/harness, else ~/.cache/harness."""
    root = os.environ.get("HARNESS_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "harness"
    path.mkdir(parents=True, exist_ok=True)
    return path
