"""The code-execution sandbox (harness/measurement/sandbox.py) against programs that try to get out.

Each escape program catches its own attempt's error and asserts the attempt failed, so a
pass means "tried and was stopped"; the test then also looks on the host for any trace of
success (a file written, a connection accepted, a process left). The same program run
without the sandbox succeeds at its escape (the `unsandboxed` controls), so these tests can
fail. Everything runs the real bwrap, the real kernel namespaces and the real interpreter.
"""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.measurement import sandbox

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL = REPO / "tasks" / "data" / "humaneval" / "HumanEval.jsonl.gz"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux namespaces")


def run(program: str, **kwargs) -> sandbox.Outcome:
    return sandbox.run_python(textwrap.dedent(program), **kwargs)


def unsandboxed(program: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """The same program in a plain child Python: the control that shows the escape is real."""
    return subprocess.run([sys.executable, "-I", "-c", textwrap.dedent(program)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def processes_with(label: str) -> list[int]:
    """Host pids whose command line carries `label` (the sandbox's bwrap and python)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if label.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def host_is_fine() -> None:
    """The host still forks and runs a program promptly after the sandbox was killed."""
    t0 = time.monotonic()
    subprocess.run(["true"], check=True, timeout=10)
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------- the verdict
def test_a_program_that_runs_to_its_end_passes_and_a_failing_one_does_not():
    assert run("assert sum(range(4)) == 6\n").passed
    failed = run("assert sum(range(4)) == 7\n")
    assert not failed.passed and failed.status == "failed" and "AssertionError" in failed.detail


@pytest.mark.parametrize("exit_early", [
    "import posix; posix._exit(0)",
    "import os; os._exit(0)",
    "import sys; sys.exit(0)",
    "raise SystemExit",
    "import os; os.execv('/bin/true', ['true'])",
    "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
])
def test_exit_status_zero_without_running_the_tests_is_not_a_pass(exit_early):
    outcome = run(f"{exit_early}\nassert False, 'the tests'\n")
    assert not outcome.passed
    assert "the tests" not in outcome.detail  # it really left before the tests


def test_a_result_written_by_the_program_itself_is_not_a_pass():
    outcome = run(f"""
        import posix
        for guess in ("passed", "passed {'0' * 32}", "passed {secrets.token_hex(16)}"):
            fd = posix.open("{sandbox.RESULT_PATH}", posix.O_WRONLY | posix.O_TRUNC)
            posix.write(fd, guess.encode())
            posix.close(fd)
        posix._exit(0)
        """)
    assert not outcome.passed and outcome.status == "failed" and outcome.returncode == 0
    assert "token" in outcome.detail


# ------------------------------------------------------------------- file system
WRITE_ESCAPES = """
    import os
    written = []
    for target in TARGETS:
        try:
            with open(target, "w") as fh:
                fh.write("escaped")
            written.append(target)
        except OSError:
            pass
    with open("inside.txt", "w") as fh:  # its own working directory is writable
        fh.write("fine")
    assert open("inside.txt").read() == "fine"
    assert not written, written
"""


def test_writes_outside_the_working_directory_fail(tmp_path):
    home = Path.home()
    marker = f"harness-sandbox-{secrets.token_hex(4)}"
    targets = [str(tmp_path / marker), f"/tmp/{marker}", str(home / marker), f"/{marker}",
               f"/usr/{marker}", f"{os.path.dirname(os.path.realpath(sys.executable))}/{marker}",
               str(REPO / "results" / marker), f"/dev/shm/{marker}"]
    program = WRITE_ESCAPES.replace("TARGETS", repr(targets))
    try:
        outcome = run(program)
        assert outcome.passed, outcome
        for target in targets:
            assert not os.path.exists(target), f"the sandbox wrote {target}"
        control = unsandboxed(program, tmp_path)
        assert control.returncode != 0 and "AssertionError" in control.stderr
    finally:
        for target in targets:
            if os.path.exists(target):
                os.remove(target)


def test_the_working_directory_is_private_and_bounded(tmp_path):
    # nothing is left by an earlier run, and filling it stops at its size
    first = run("open('left.txt', 'w').write('x')\n")
    assert first.passed
    assert run("import os; assert os.listdir('.') == [], os.listdir('.')\n").passed
    full = run("""
        chunk = b"x" * (1 << 20)
        for i in range(200):
            with open(f"f{i}", "wb") as fh:
                fh.write(chunk * 4)
        """)
    assert not full.passed and ("OSError" in full.detail or "signal" in full.status), full


def test_home_and_results_files_cannot_be_read(tmp_path):
    secret = secrets.token_hex(16)
    home_file = Path.home() / f".harness-sandbox-secret-{secrets.token_hex(4)}"
    results_file = tmp_path / "results" / "run.json"
    results_file.parent.mkdir()
    results_file.write_text(secret)
    python_dirs = sandbox._interpreter()[1]
    program = f"""
        import os
        seen = []
        for path in ({str(home_file)!r}, {str(results_file)!r}):
            try:
                seen.append(open(path).read())
            except OSError:
                pass
        assert {secret!r} not in seen, "read a host file"
        # of the home folder, at most the way to the interpreter's own folder is there
        home = {str(Path.home())!r}
        for entry in (os.listdir(home) if os.path.isdir(home) else []):
            path = os.path.join(home, entry)
            assert any(d == path or d.startswith(path + "/") for d in {python_dirs!r}), path
        """
    try:
        home_file.write_text(secret)
        outcome = run(program)
        assert outcome.passed, outcome
        assert unsandboxed(program, tmp_path).returncode != 0
    finally:
        home_file.unlink(missing_ok=True)


def test_secrets_in_the_environment_and_proc_cannot_be_read(tmp_path, monkeypatch):
    secret = secrets.token_hex(16)
    monkeypatch.setenv("HARNESS_SANDBOX_TEST_SECRET", secret)
    program = f"""
        import os
        found = [k for k, v in os.environ.items() if {secret!r} in v]
        for pid in ("self", "1", {str(os.getpid())!r}, {str(os.getppid())!r}):
            for name in ("environ", "cmdline"):
                try:
                    if {secret!r}.encode() in open(f"/proc/{{pid}}/{{name}}", "rb").read():
                        found.append(pid + "/" + name)
                except OSError:
                    pass
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            pids = []
        for pid in pids:
            try:
                if {secret!r}.encode() in open(f"/proc/{{pid}}/environ", "rb").read():
                    found.append(pid)
            except OSError:
                pass
        assert not found, found
        assert set(os.environ) <= {{"PATH", "HOME", "TMPDIR", "LANG", "PYTHONHASHSEED", "OMP_NUM_THREADS", "PWD"}}, dict(os.environ)
        """
    outcome = run(program)
    assert outcome.passed, outcome
    control = subprocess.run([sys.executable, "-c", textwrap.dedent(program)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert control.returncode != 0 and "AssertionError" in control.stderr


# ------------------------------------------------------------------- network
def test_no_network_connection_reaches_a_listening_socket(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        port = server.getsockname()[1]
        program = f"""
            import socket
            connected = []
            for family, address in ((socket.AF_INET, ("127.0.0.1", {port})),
                                    (socket.AF_INET, ("1.1.1.1", 53)),
                                    (socket.AF_INET6, ("::1", {port}))):
                try:
                    with socket.socket(family, socket.SOCK_STREAM) as s:
                        s.settimeout(2)
                        s.connect(address)
                        s.sendall(b"escaped")
                        connected.append(address)
                except OSError:
                    pass
            try:
                socket.getaddrinfo("pypi.org", 443)
                connected.append("dns")
            except OSError:
                pass
            assert not connected, connected
            """
        outcome = run(program)
        assert outcome.passed, outcome
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing connected from the sandbox
        # the control connects to the same socket
        control = unsandboxed(program, tmp_path)
        assert control.returncode != 0
        conn, _ = server.accept()
        conn.close()


# ------------------------------------------------------------------- processes
def test_a_fork_bomb_is_stopped_and_the_host_is_fine():
    label = f"harness-sandbox-bomb-{secrets.token_hex(4)}"
    t0 = time.monotonic()
    bomb = run("""
        import os, posix
        while True:
            for fork in (os.fork, posix.fork):
                try:
                    fork()
                except OSError:
                    pass
        """, timeout_s=3, label=label)
    elapsed = time.monotonic() - t0
    assert not bomb.passed and bomb.status == "timeout"
    assert elapsed < 10
    assert processes_with(label) == []
    host_is_fine()
    # the first fork already fails (not only at a process limit), through every route
    counted = run("""
        import errno, os, posix, subprocess, multiprocessing
        made = 0
        for fork in (os.fork, posix.fork):
            try:
                if fork() == 0:
                    os._exit(0)
                made += 1
            except OSError as exc:
                assert exc.errno == errno.EAGAIN, exc
        try:
            subprocess.run(["true"])
            made += 1
        except OSError:
            pass
        try:
            p = multiprocessing.Process(target=print)
            p.start()
            made += 1
        except OSError:
            pass
        assert made == 0, made
        """)
    assert counted.passed, counted


def test_threads_still_work_but_are_bounded():
    assert run("""
        import threading
        out = []
        ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]
        for t in ts: t.start()
        for t in ts: t.join()
        assert sorted(out) == list(range(8))
        """).passed
    bomb = run("""
        import threading, time
        while True:
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        """, timeout_s=5)
    assert not bomb.passed and bomb.status == "failed" and ("RuntimeError" in bomb.detail or "Memory" in bomb.detail), bomb


def test_setsid_and_sleep_is_killed_at_the_timeout():
    label = f"harness-sandbox-setsid-{secrets.token_hex(4)}"
    t0 = time.monotonic()
    outcome = run("""
        import os, time
        try:
            os.setsid()
        except OSError:
            pass
        try:
            if os.fork() == 0:
                os.setsid()
        except OSError:
            pass
        time.sleep(60)
        """, timeout_s=2, label=label)
    elapsed = time.monotonic() - t0
    assert not outcome.passed and outcome.status == "timeout"
    assert 2 <= elapsed < 8
    assert processes_with(label) == []
    host_is_fine()


@pytest.mark.parametrize("allocation", [
    "bytearray(10 * 1024 ** 3)",
    "'x' * (10 * 1024 ** 3)",
    "__import__('mmap').mmap(-1, 10 * 1024 ** 3)",
    "[bytearray(1 << 26) for _ in range(160)]",
])
def test_a_10_gb_allocation_fails(allocation):
    t0 = time.monotonic()
    outcome = run(f"x = {allocation}\n", timeout_s=20)
    assert not outcome.passed and outcome.status == "failed"
    assert "MemoryError" in outcome.detail or "OSError" in outcome.detail, outcome
    assert time.monotonic() - t0 < 15


def test_cpu_time_is_limited():
    outcome = run("while True: pass\n", timeout_s=2)
    assert not outcome.passed and outcome.status in ("timeout", "killed by signal 9", "killed by signal 24")


# ------------------------------------------------------------------- the seccomp filter
def _run_bpf(program: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Classic BPF as the kernel runs a seccomp filter (the subset the filter uses)."""
    import struct

    insns = [struct.unpack("=HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x06:
            return k
        elif code in (0x15, 0x35, 0x45):
            taken = acc == k if code == 0x15 else acc >= k if code == 0x35 else bool(acc & k)
            pc += jt if taken else jf
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        pc += 1


@pytest.mark.parametrize("machine, arch, forks, clone, other", [
    ("x86_64", 0xC000003E, (57, 58), 56, (0, 1, 59, 435 - 1)),
    ("aarch64", 0xC00000B7, (), 220, (63, 64, 221, 93)),
])
def test_the_filter_stops_processes_and_nothing_else(machine, arch, forks, clone, other):
    prog = sandbox.seccomp_program(machine)
    allow, kill, eagain, enosys = 0x7FFF0000, 0x80000000, 0x50000 | 11, 0x50000 | 38
    for nr in forks:
        assert _run_bpf(prog, nr, arch) == eagain
    assert _run_bpf(prog, clone, arch, arg0=0x11) == eagain  # SIGCHLD: a process
    assert _run_bpf(prog, clone, arch, arg0=0x3D0F00) == allow  # pthread_create's flags: a thread
    assert _run_bpf(prog, 435, arch) == enosys  # clone3: libc falls back to clone
    for nr in other:
        assert _run_bpf(prog, nr, arch) == allow
    assert _run_bpf(prog, 57, 0x40000003) == kill  # another architecture's calls
    if machine == "x86_64":
        assert _run_bpf(prog, 0x40000000 | 57, arch) == kill  # x32


def test_an_unknown_architecture_is_refused():
    with pytest.raises(sandbox.SandboxUnavailable, match="riscv64"):
        sandbox.seccomp_program("riscv64")


# ------------------------------------------------------------------- refusing
def _available_bwraps() -> list[str]:
    found = [b for b in (shutil.which("bwrap"), sandbox._bundled_bwrap()) if b]
    return found or ["none"]


@pytest.mark.parametrize("binary", _available_bwraps())
def test_the_system_and_the_bundled_bwrap_both_contain_a_program(binary, monkeypatch, tmp_path):
    if binary == "none":
        pytest.skip("no bwrap here: the refusal tests cover this machine")
    monkeypatch.setenv(sandbox.BWRAP_ENV, binary)
    sandbox.bwrap.cache_clear()
    sandbox._probe.cache_clear()
    try:
        assert sandbox.bwrap() == binary
        assert run("assert 1 + 1 == 2\n").passed
        assert not run("import posix; posix._exit(0)\n").passed
        target = tmp_path / "escaped"
        assert run(f"""
            try:
                open({str(target)!r}, "w").write("x")
            except OSError:
                pass
            import os, socket
            try:
                os.fork()
                raise AssertionError("forked")
            except BlockingIOError:
                pass
            """).passed and not target.exists()
    finally:
        monkeypatch.delenv(sandbox.BWRAP_ENV)
        sandbox.bwrap.cache_clear()
        sandbox._probe.cache_clear()


@pytest.mark.parametrize("prefix", ["/", str(Path.home().parent)])
def test_an_interpreter_whose_folder_holds_the_home_folder_is_refused(monkeypatch, prefix):
    monkeypatch.setattr(sys, "base_prefix", prefix)
    monkeypatch.setattr(sys, "base_exec_prefix", prefix)
    with pytest.raises(sandbox.SandboxUnavailable, match="home folder"):
        sandbox._interpreter()


def test_no_bwrap_refuses_in_one_line(monkeypatch):
    monkeypatch.setenv(sandbox.BWRAP_ENV, "/nonexistent/bwrap")
    sandbox.bwrap.cache_clear()
    sandbox._probe.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxUnavailable) as err:
            sandbox.run_python("x = 1\n")
        assert "/nonexistent/bwrap" in str(err.value) and "\n" not in str(err.value)
    finally:
        monkeypatch.delenv(sandbox.BWRAP_ENV)
        sandbox.bwrap.cache_clear()
        sandbox._probe.cache_clear()


def test_where_namespaces_cannot_be_created_it_refuses_in_one_line(tmp_path):
    # the harness itself inside a bwrap that forbids further user namespaces: its own
    # sandbox cannot be made, so it must refuse rather than run the code unsandboxed
    script = ("from harness.measurement import sandbox\n"
              "try:\n    sandbox.run_python('open(\"/tmp/ran\", \"w\")')\n"
              "except sandbox.SandboxUnavailable as exc:\n    print('REFUSED', exc)\n")
    proc = subprocess.run(
        [sandbox.bwrap(), "--unshare-user", "--disable-userns", "--dev-bind", "/", "/", "--tmpfs", "/tmp",
         sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("REFUSED cannot create the code sandbox") and "user namespaces" in line, line
    assert "\n" not in line


# ------------------------------------------------------------------- HumanEval
def _humaneval() -> list[dict]:
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _tests(doc: dict) -> str:
    return f"\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail():
    docs = _humaneval()
    assert len(docs) == 164
    canonical = [d["prompt"] + d["canonical_solution"] + _tests(d) for d in docs]
    empty = [d["prompt"] + "    pass\n" + _tests(d) for d in docs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        good = list(pool.map(lambda p: sandbox.run_python(p, timeout_s=20), canonical))
        bad = list(pool.map(lambda p: sandbox.run_python(p, timeout_s=20), empty))
    failed = {d["task_id"]: o for d, o in zip(docs, good) if not o.passed}
    assert not failed, failed
    passed = [d["task_id"] for d, o in zip(docs, bad) if o.passed]
    assert not passed, passed


def test_harness_eval_refuses_code_execution_without_a_sandbox(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("eval", "--tasks", "humaneval", "--limit", "1", "--allow-code-execution", "--out", str(out),
              env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", sandbox.BWRAP_ENV: "/nonexistent/bwrap"})
    assert res.code == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("error: humaneval cannot run: ") and "/nonexistent/bwrap" in lines[0], lines[0]
    assert not out.exists() or not any(out.rglob("*")), "a refused run writes nothing"


@pytest.mark.slow
def test_harness_eval_scores_humaneval_through_the_sandbox(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("eval", "--tasks", "humaneval", "--limit", "1", "--allow-code-execution", "--no-cache",
              "--threads", "1", "--format", "json", "--out", str(out),
              env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert res.code == 0, res.stderr[-3000:]
    (record,) = res.json()  # JSON output is a list of records
    assert record["failures"] == [] and record["evaluation"]["code_execution"] is True
    (row,) = [a for a in record["accuracy"] if a["metric"] == "pass@1"]
    assert row["n"] == 1 and row["value"] in (0.0, 1.0)
