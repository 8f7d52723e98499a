"""Exit statuses, files that cannot be written, and a key given in place of its variable.

Each case happens for real: a bug raised in the harness's own process (a plugin backend
found by entry point), a disk that is really full (a tiny tmpfs mounted in a mount
namespace of its own), a folder that is really read-only (a read-only tmpfs) or really
not writable (a folder the process's user does not own, with root's powers dropped).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_checks import assert_one_line_error
from loopback_servers import REPO_ROOT, ScriptedServer
from sweep_helpers import FAULT_PLUGINS

# a key with no recognisable shape (no sk-/hf_ prefix, no secret-sounding variable name):
# only the harness's own handling of --api-key-env can keep it off the screen
SHAPELESS_KEY = "Zq8vLr2mXwPq4TnBy7Kd"


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("[harness]")]


def test_help_lists_the_exit_statuses(cli):
    r = cli("--help")
    text = " ".join(r.stdout.split())
    assert r.code == 0
    for words in ("Exit status: 0 done; 1 a measurement failed or a gate (--fail-on) found a regression; 2 bad input",
                  "3 internal error (the traceback is in the log file the error line names)",
                  "130 interrupted (Ctrl-C); 143 terminated (SIGTERM)", "docs/exit-codes.md"):
        assert words in text, text
    assert (REPO_ROOT_PATH / "docs" / "exit-codes.md").is_file()


REPO_ROOT_PATH = Path(REPO_ROOT)


def test_an_internal_error_is_one_line_naming_the_log_that_holds_the_traceback(cli, tmp_path):
    """A bug (here a plugin backend's, raised in the harness's own process) exits 3, not 1 as a
    failed measurement does; the traceback goes to a log file, with secrets removed."""
    secret = "correct-horse-battery-staple-42"
    cache = tmp_path / "cache"
    r = cli("bench", "-b", "faulty", "--set", "fault=bug_in_main", "--pp", "8", "--tg", "none",
            "--out", str(tmp_path / "out"),
            env={"PYTHONPATH": os.pathsep.join([str(FAULT_PLUGINS), os.environ.get("PYTHONPATH", "")]),
                 "HARNESS_CACHE_DIR": str(cache), "MY_SERVICE_PASSWORD": secret})
    assert r.code == 3, r.stderr
    (line,) = _error_lines(r.stderr)
    m = re.fullmatch(r"error: internal error \(KeyError: .*context_length.*\); the traceback is in (\S+) "
                     r"\(please include it in a bug report\)", line)
    assert m, line
    log = Path(m.group(1))
    assert log.parent == cache / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "resolve_model" in text and "KeyError" in text
    assert "command: harness bench -b faulty" in text
    assert secret not in text and secret not in r.stderr and secret not in r.stdout
    assert not (tmp_path / "out").exists()


def test_a_bug_in_the_load_test_worker_is_an_internal_error_with_the_workers_traceback(cli, tmp_path):
    """The bug raises in the worker process (a plugin's server_version): still status 3 and one
    line, and the log file holds the worker's traceback, not the harness's."""
    cache = tmp_path / "cache"
    r = cli("load", "--serve", "toy", "--model", "smollm2-135m", "--requests", "1", "--output-len", "2",
            "--out", str(tmp_path / "out"),
            env={"PYTHONPATH": str(Path(__file__).parent / "meta_plugins"), "HARNESS_CACHE_DIR": str(cache),
                 "TOY_FAULT": "bug_in_server_version"})
    assert r.code == 3, r.stderr
    (line,) = _error_lines(r.stderr)
    m = re.fullmatch(r"error: internal error \(the load test's worker: KeyError: 'version'\); the traceback is in "
                     r"(\S+) \(please include it in a bug report\)", line)
    assert m, line
    text = Path(m.group(1)).read_text()
    assert "harness.execution.traffic_worker" in text and "in server_version" in text
    assert "command: harness load --serve toy" in text
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ------------------------------------------------------------------ files that cannot be written


def _in_mount_namespace(mounts: list[tuple[str, Path]], argv: list[str], env: dict | None = None):
    """Run argv in a mount namespace of its own with tmpfs mounts (options, folder) there.

    Needs unshare(1) and the right to create the namespace (root, or unprivileged user
    namespaces); the test is skipped, saying so, where neither is available."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed, so no tmpfs can be mounted for the test")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    prefix = ["unshare", "--mount", "--propagation", "private"]
    if probe.returncode != 0:
        prefix = ["unshare", "--user", "--map-root-user", "--mount"]
        probe = subprocess.run([*prefix, "true"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip(f"cannot create a mount namespace here: {probe.stderr.decode().strip()}")
    script = " && ".join(f"mount -t tmpfs -o {opts} none {folder}" for opts, folder in mounts) + ' && exec "$@"'
    proc = subprocess.run([*prefix, "sh", "-c", script, "sh", *argv], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT, env={**os.environ, **(env or {})})
    return proc


def _load_args(url: str, prompts: Path, out: Path, requests: int) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "load", "--base-url", url, "--dataset", str(prompts),
            "-c", "1,2", "--requests", str(requests), "--output-len", "2", "--out", str(out)]


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_finished_point(tmp_path):
    """The disk fills up when the record is rewritten after the second load point: one line
    names the file and ENOSPC, the status is 2, and the file still holds the first point,
    whole, as the last successful write left it."""
    import shlex

    from harness.output.store import read_record

    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    kept = tmp_path / "kept"
    kept.mkdir()
    with ScriptedServer() as srv:
        # the same run on a roomy disk sizes the small one: room for the record after one
        # point, not for its rewrite after two beside it
        roomy = tmp_path / "roomy"
        ok = subprocess.run(_load_args(srv.url, prompts, roomy, 40), capture_output=True, text=True, cwd=REPO_ROOT)
        assert ok.returncode == 0, ok.stderr
        (two_points,) = roomy.glob("*.json")
        size_kib = int(two_points.stat().st_size * 1.25) // 1024 + 1
        small = tmp_path / "small"
        small.mkdir()
        # the tmpfs lives as long as its namespace: copy out what is left on it before that ends
        run = " ".join(shlex.quote(a) for a in _load_args(srv.url, prompts, small, 40))
        script = f"{run}; echo $? > {tmp_path}/rc; cp {small}/*.json {kept}/; ls -a {small} > {tmp_path}/left"
        proc = _in_mount_namespace([(f"size={size_kib}k", small)], ["sh", "-c", script])
    assert (tmp_path / "rc").read_text().strip() == "2", proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert re.fullmatch(rf"error: cannot write {re.escape(str(small))}/(\S+\.json): No space left on device \(ENOSPC\); "
                        r"free some space or choose another folder; the 1 finished load point is kept in "
                        rf"{re.escape(str(small))}/\1", line), line
    (record_file,) = kept.glob("*.json")
    record = read_record(record_file)
    assert record.status == "incomplete" and [p.label for p in record.load] == ["c=1"]
    assert record.load[0].completed == 40
    assert (tmp_path / "left").read_text().split() == [".", "..", record_file.name]  # no temporary file left


def test_a_read_only_folder_is_one_line_naming_the_file(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    out = tmp_path / "ro"
    out.mkdir()
    with ScriptedServer() as srv:
        proc = _in_mount_namespace([("ro,size=1m", out)], _load_args(srv.url, prompts, out, 2))
        posts = srv.posts()
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc.stderr)
    folder = re.escape(str(out))
    assert re.fullmatch(rf"error: --out {folder}: cannot write to {folder}: Read-only file system \(EROFS\); "
                        r"the file system is read-only: choose another folder", line), line
    assert "Traceback" not in proc.stderr
    assert not posts  # refused before anything was measured


def test_a_folder_without_write_permission_is_one_line_naming_the_file(tmp_path):
    """Root is not stopped by a folder's mode bits: the harness runs as root without the
    capabilities that override them (setpriv drops them from its bounding set), against a
    folder whose mode gives no one write permission."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to drop the capabilities that override file permissions")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    caps = "-dac_override,-dac_read_search,-fowner"
    try:
        with ScriptedServer() as srv:
            proc = subprocess.run(["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}",
                                   *_load_args(srv.url, prompts, out / "new", 2)],
                                  capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
            posts = srv.posts()
    finally:
        out.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc.stderr)
    folder = re.escape(str(out))
    assert re.fullmatch(rf"error: --out {folder}/new: cannot write to {folder}: Permission denied \(EACCES\); "
                        r"choose a folder you can write to", line), line
    assert list(out.iterdir()) == [] and not posts


# ------------------------------------------------------------------ a key given in place of its variable


@pytest.mark.parametrize("given", [SHAPELESS_KEY, "Zq8v-Lr2m.XwPq/4TnB+y7Kd"])
def test_a_key_given_in_place_of_its_variable_is_never_echoed(cli, tmp_path, given):
    """`--api-key-env THE-KEY-ITSELF` printed the key on stderr. Both forms (one that could be
    a variable's name, one that cannot) are refused in one line that does not repeat it, in
    harness load and harness eval, and it reaches no file and no log."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    cache = tmp_path / "cache"
    with ScriptedServer() as srv:
        runs = [
            cli("load", "--base-url", srv.url, "--api-key-env", given, "--dataset", str(prompts),
                "--out", str(tmp_path / "load"), env={"HARNESS_CACHE_DIR": str(cache)}),
            cli("eval", "--backend", "openai", "--base-url", srv.url, "--api-key-env", given, "--tasks", "gsm8k",
                "--limit", "1", "--out", str(tmp_path / "eval"), env={"HARNESS_CACHE_DIR": str(cache)}),
        ]
        posts = srv.posts()
    for r, out in zip(runs, ("load", "eval")):
        assert_one_line_error(r, tmp_path / out, r"--api-key-env")
        assert r.code == 2
        assert given not in r.stderr and given not in r.stdout
    assert not posts  # nothing was sent with it either
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != prompts:
            assert given not in path.read_text(errors="replace"), path


@pytest.mark.slow
def test_a_full_disk_mid_bench_prints_what_was_measured(tmp_path):
    """harness bench on the real model with a disk too small for its record: the figures are
    printed, then one line names the file that could not be written; status 2."""
    out = tmp_path / "tiny"
    out.mkdir()
    argv = [sys.executable, "-m", "harness.cli", "bench", "--pp", "8", "--tg", "4", "--reps", "1", "--threads", "1",
            "--format", "json", "--out", str(out)]
    proc = _in_mount_namespace([("size=4k", out)], argv)  # one page: less than a record
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert re.fullmatch(rf"error: cannot write {re.escape(str(out))}/\S+\.json: No space left on device \(ENOSPC\); "
                        r"free some space or choose another folder; the 1 result not saved is printed above \(0 saved\)",
                        line), line
    import json

    (printed,) = json.loads(proc.stdout)  # JSON output is a list of records
    assert printed["status"] == "ok" and [p["test"] for p in printed["perf"]] == ["pp8", "tg4"]
