"""HumanEval, bundled and offline, with a self-contained pass@1 scorer.

Scoring runs model-written code. It happens only when the environment variable
HARNESS_ALLOW_CODE_EXECUTION=1 is set (the harness CLI sets it for --allow-code-execution);
otherwise `process_results` raises CodeExecutionNotAllowed. The task YAML is also marked
`unsafe_code: true`, so lm-eval itself refuses to start it unless the caller passes
`confirm_run_unsafe_code=True`; both gates come from the same user opt-in.

Each program runs in its own child Python process:
  * in a fresh temporary directory (its working directory and $HOME/$TMPDIR), removed after;
  * with a minimal environment (no inherited variables, so no tokens or proxies);
  * with resource limits: RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space),
    RLIMIT_FSIZE (largest file it may write), RLIMIT_NOFILE, RLIMIT_CORE=0;
  * under a wall-clock timeout, after which its whole process group is killed;
  * without network: inside `unshare --net --map-root-user` (a new user + network
    namespace with only a down loopback) when the kernel allows it; where it does not,
    a best-effort in-process guard replaces `socket` functions, and a warning says so;
  * after a "reliability guard" (as in openai/human-eval's execution.py) that disables
    destructive os/shutil/subprocess functions inside the child.
This is defence against accidents and careless code, not a security boundary against a
determined adversary: run untrusted models' code in a container or VM as well.

Settings (environment): HARNESS_CODE_EXEC_TIMEOUT (wall seconds per program, default 10),
HARNESS_CODE_EXEC_MEMORY_MB (address-space limit, default 2048).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import datasets

log = logging.getLogger(__name__)

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "humaneval" / "HumanEval.jsonl.gz"
ALLOW_ENV = "HARNESS_ALLOW_CODE_EXECUTION"
TIMEOUT_ENV = "HARNESS_CODE_EXEC_TIMEOUT"
MEMORY_ENV = "HARNESS_CODE_EXEC_MEMORY_MB"
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_OPEN_FILES = 64


class CodeExecutionNotAllowed(RuntimeError):
    pass


# ------------------------------------------------------------------------- data
def load_humaneval(**_metadata) -> datasets.DatasetDict:
    """DatasetDict with one `test` split (164 problems: task_id, prompt,
    canonical_solution, test, entry_point), as openai/openai_humaneval."""
    with gzip.open(DATA_FILE, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# ------------------------------------------------------------ filter and metric
def build_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """The stock lm-eval `create_test` filter: the program is prompt + completion."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def check_allowed() -> None:
    if os.environ.get(ALLOW_ENV) != "1":
        raise CodeExecutionNotAllowed(
            "humaneval scores a model by executing the code it wrote. That is off unless you "
            f"opt in: pass --allow-code-execution to the harness (or set {ALLOW_ENV}=1 and "
            "confirm_run_unsafe_code=True when calling lm-eval directly). Programs then run in a "
            "time- and memory-limited subprocess without network, in a temporary directory."
        )


def process_results(doc: dict, results: list) -> dict[str, float]:
    """pass@1 for one problem. `results` holds, per request, the filtered responses
    (after `create_test`, a list of prompt+completion programs, one per repeat). With n
    samples and c of them passing, the unbiased pass@1 estimate is c / n."""
    check_allowed()
    programs = results[0] if results and isinstance(results[0], (list, tuple)) else list(results)
    if not programs:
        return {"pass@1": 0.0}
    test_program = f"\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"
    passed = [run_program(str(p) + test_program).passed for p in programs]
    return {"pass@1": sum(passed) / len(passed)}


# ----------------------------------------------------------------- the sandbox
class Outcome:
    __slots__ = ("passed", "status", "returncode", "stderr_tail")

    def __init__(self, passed: bool, status: str, returncode: int | None, stderr_tail: str):
        self.passed, self.status, self.returncode, self.stderr_tail = passed, status, returncode, stderr_tail

    def __repr__(self) -> str:
        return f"Outcome(passed={self.passed}, status={self.status!r}, returncode={self.returncode})"


# Runs in the child: read the program, disable dangerous functions, execute it, and exit 0
# only if it ran to the end (a SystemExit raised by the program counts as a failure).
_RUNNER = r'''
import builtins, faulthandler, os, resource, shutil, subprocess, sys
_exit = os._exit
# argv: network mode, CPU seconds, address-space bytes, max file bytes, max open files
for _lim, _v in ((resource.RLIMIT_CPU, sys.argv[2]), (resource.RLIMIT_AS, sys.argv[3]),
                 (resource.RLIMIT_FSIZE, sys.argv[4]), (resource.RLIMIT_NOFILE, sys.argv[5]),
                 (resource.RLIMIT_CORE, "0")):
    _hard = resource.getrlimit(_lim)[1]
    _v = int(_v) if _hard == resource.RLIM_INFINITY else min(int(_v), _hard)
    resource.setrlimit(_lim, (_v, _v))
del resource, _lim, _v, _hard
src = open("program.py", encoding="utf-8").read()
code = compile(src, "program.py", "exec")
NO_NET = sys.argv[1] == "guard"

def _disabled(*a, **k):
    raise PermissionError("disabled in the HumanEval sandbox")

faulthandler.disable()
if NO_NET:
    import socket
    for _n in ("socket", "create_connection", "create_server", "socketpair", "fromfd",
               "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        if hasattr(socket, _n):
            setattr(socket, _n, _disabled)
for _n in ("kill", "killpg", "system", "putenv", "unsetenv", "remove", "removedirs", "rmdir",
           "fchdir", "setuid", "setgid", "setreuid", "setregid", "fork", "forkpty", "rename",
           "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
           "chroot", "lchflags", "lchmod", "lchown", "chdir", "execv", "execve", "execvp",
           "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp",
           "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "posix_spawn",
           "posix_spawnp", "popen", "_exit"):
    if hasattr(os, _n):
        setattr(os, _n, _disabled)
for _n in ("rmtree", "move", "chown"):
    setattr(shutil, _n, _disabled)
subprocess.Popen = _disabled
builtins.exit = builtins.quit = _disabled
builtins.help = _disabled
for _m in ("ipdb", "joblib", "resource", "psutil", "tkinter", "ctypes", "_ctypes"):
    sys.modules[_m] = None
del builtins, faulthandler, shutil, subprocess, _n, _m

try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit:
    sys.stderr.write("program raised SystemExit\n"); sys.stderr.flush(); _exit(3)
except BaseException as e:
    import traceback; traceback.print_exc(); sys.stderr.flush(); _exit(1)
sys.stdout.flush(); sys.stderr.flush()
_exit(0)
'''


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """The command prefix that puts the child in a new network namespace, or () if the
    kernel or the user may not create one."""
    exe = shutil.which("unshare")
    if not exe or not sys.platform.startswith("linux"):
        return ()
    for prefix in ((exe, "--net", "--map-root-user", "--"), (exe, "--net", "--")):
        try:
            r = subprocess.run(
                # inside, the only network interface must be the loopback
                [*prefix, sys.executable, "-I", "-S", "-c",
                 "lines = open('/proc/net/dev').read().splitlines()[2:]\n"
                 "names = {l.split(':')[0].strip() for l in lines}\n"
                 "raise SystemExit(0 if names <= {'lo'} else 7)"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=10, env={"PATH": "/usr/bin:/bin"},
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return prefix
    return ()


def network_isolation() -> str:
    """'netns' when programs run in their own network namespace, else 'guard'."""
    return "netns" if _netns_prefix() else "guard"


_warned = False


def run_program(program: str, timeout_s: float | None = None, memory_mb: int | None = None) -> Outcome:
    """Execute `program` (a complete Python module: solution + tests) in the sandbox.
    Passed means it ran to the end: exit status 0 within the limits."""
    global _warned
    check_allowed()
    if not hasattr(os, "fork"):
        raise RuntimeError("humaneval execution needs a POSIX system (Linux)")
    timeout_s = timeout_s or _float_env(TIMEOUT_ENV, 10.0)
    memory_mb = memory_mb or int(_float_env(MEMORY_ENV, 2048))
    prefix = _netns_prefix()
    if not prefix and not _warned:
        log.warning(
            "humaneval: cannot create a network namespace (unshare unavailable or not "
            "permitted); programs run with an in-process socket guard only"
        )
        _warned = True

    with tempfile.TemporaryDirectory(prefix="harness-humaneval-") as tmp:
        Path(tmp, "program.py").write_text(program, encoding="utf-8")
        Path(tmp, "runner.py").write_text(_RUNNER, encoding="utf-8")
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
        }
        # The runner sets the resource limits on itself before it reads the program (no
        # preexec_fn: that is unsafe when the calling process has threads).
        cmd = [
            *prefix, sys.executable, "-I", "-B", "runner.py", "netns" if prefix else "guard",
            str(int(timeout_s) + 1), str(memory_mb * 1024 * 1024), str(MAX_FILE_BYTES), str(MAX_OPEN_FILES),
        ]
        with open(Path(tmp, "stderr.txt"), "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            try:
                rc = proc.wait(timeout=timeout_s)
                status = "passed" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        if rc is not None and rc < 0:
            status = f"killed by signal {-rc}"
        with open(Path(tmp, "stderr.txt"), "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 2000))
            tail = fh.read().decode("utf-8", "replace")
    return Outcome(status == "passed", status, rc, tail)
