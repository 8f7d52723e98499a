"""Bad input through the CLI: one clear line, non-zero exit, no traceback, no result file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"


def _files(out: Path) -> list[Path]:
    return list(out.rglob("*")) if out.exists() else []


def _assert_refused(res, out: Path, *needles: str):
    assert res.code != 0
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in res.stderr + res.stdout
    for n in needles:
        assert n in lines[0], lines[0]
    assert _files(out) == []


@pytest.fixture
def files(tmp_path, smollm2_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    text = tmp_path / "notes.gguf"
    text.write_text("these are notes, not a model\n")
    cut = tmp_path / "cut.gguf"
    with smollm2_path.open("rb") as fh:
        cut.write_bytes(fh.read(3_000_000))
    return {"empty": empty, "text": text, "cut": cut, "missing": tmp_path / "nope.gguf"}


@pytest.mark.parametrize("case, args, needles", [
    ("missing", ["-m", "{missing}"], ["not found"]),
    ("empty", ["-m", "{empty}"], ["empty"]),
    ("text", ["-m", "{text}"], ["not a GGUF"]),
    ("cut", ["-m", "{cut}"], ["truncated"]),
    ("unknown model", ["-m", "llama-9000"], ["unknown model 'llama-9000'"]),
    ("unknown backend", ["-b", "llamacp"], ["unknown backend 'llamacp'", "llamacpp"]),
    ("zero pp", ["--pp", "0"], ["--pp", "at least 1"]),
    ("negative tg", ["--tg", "-4"], ["--tg", "at least 1"]),
    ("zero reps", ["--reps", "0"], ["--reps"]),
    ("not a number", ["--threads", "two"], ["--threads", "'two' is not a whole number"]),
    ("nothing to run", ["--pp", "none", "--tg", "none"], ["nothing to measure"]),
    ("context too small", ["--pp", "64", "--n-ctx", "16"], ["context too small"]),
    ("beyond training context", ["--pp", "9000"], ["context too small", "8192"]),
    ("bad format", ["--format", "xml"], ["--format"]),
    ("unknown option", ["--frobnicate"], ["--frobnicate"]),
])
def test_refused(cli, tmp_path, files, case, args, needles):
    out = tmp_path / "out"
    args = [a.format(**files) for a in args]
    res = cli("bench", *args, "--out", str(out))
    _assert_refused(res, out, *needles)


def test_backend_not_installed_says_how(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("bench", "-b", "uninstalled", "--out", str(out), env={"PYTHONPATH": str(PLUGINS)})
    _assert_refused(res, out, "not installed", "pip install imaginary-engine")


def test_help_works_without_engines():
    """--help must not import llama_cpp, torch, vllm or lm_eval."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.argv = ['harness', '--help']\n"
        "from harness.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('llama_cpp', 'torch', 'vllm', 'lm_eval', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "120"})
    assert "bench" in out.stdout
    assert "HEAVY []" in out.stdout


def test_models_and_backends_commands(cli):
    res = cli("models")
    assert res.code == 0, res.stderr
    assert "smollm2-135m" in res.stdout and "Q4_1" in res.stdout and "apache-2.0" in res.stdout
    assert "gemma3-270m" in res.stdout
    res = cli("backends")
    assert res.code == 0 and "llamacpp" in res.stdout and "0.3.36" in res.stdout


def test_env_fingerprint(cli):
    res = cli("env", env={"OMP_NUM_THREADS": "2", "MY_PRIVATE_VAR": "hunter2"})
    assert res.code == 0, res.stderr
    env = res.json()
    assert env["cpu_cores_physical"] >= 1 and env["python"]
    assert env["backends"]["llamacpp"]["version"] == "0.3.36"
    assert env["env"] == {"OMP_NUM_THREADS": "2"}
    assert "hunter2" not in res.stdout


@pytest.mark.parametrize("command", [["bench"], ["eval", "--suite", "quick"],
                                     ["load", "--base-url", "http://127.0.0.1:9/v1"]])
def test_out_that_is_a_file(cli, tmp_path, command):
    """Each command that writes records refuses an --out that is a file, before it measures."""
    out = tmp_path / "results"
    out.write_text("not a folder\n")
    res = cli(*command, "--out", str(out))
    assert res.code == 2
    (line,) = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert line == f"error: --out {out} is a file; give a folder for result files", res.stderr
    assert out.read_text() == "not a folder\n" and list(tmp_path.iterdir()) == [out]
