"""The environment fingerprint stored with every result.

Built from an allow-list: the machine, the OS, and the versions of the software that
shapes the numbers. No environment variable is read into it except those named in
ENV_ALLOWLIST, and their values pass through redact() first.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

import harness
from harness.core import registry

# Variables that change how engines run; nothing else from the environment is kept.
ENV_ALLOWLIST = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "GGML_CUDA_NO_PINNED",
    "LLAMA_ARG_THREADS",
)

# Provider key shapes. The lengths keep ordinary names out: real keys run 30+ characters
# after the prefix, while a folder called "hf_compare5" or "sk-learn" is not a secret.
SECRET_PATTERN = re.compile(
    r"(?i)\b(sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{20,}|"
    r"glpat-[A-Za-z0-9_\-]{16,}|xox[abprs]-[A-Za-z0-9\-]{8,}|AKIA[0-9A-Z]{12,}|AIza[0-9A-Za-z_\-]{30,}|"
    r"eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}(?:\.[A-Za-z0-9_\-]+)?)"
)
# "Authorization: Bearer <token>", and credentials inside a URL (https://user:pass@host)
BEARER_PATTERN = re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/\-]{8,}=*")
URL_CREDENTIALS_PATTERN = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s:@\"']+:[^/\s@\"']+@")
# a name that says it holds a secret; "tokenizer", "tokens" and "secrets_dir" do not
_SECRET_WORD = r"(?:api[_\-]?key|access[_\-]?key|private[_\-]?key|secret|token|passw(?:or)?d|credentials?|auth)(?![a-z])"
# NAME=value, NAME: value, "NAME": "value" (a config dump, a command line, a JSON body);
# numbers, lists and objects are left alone ("max_token": 128 is not a secret)
ASSIGNMENT_PATTERN = re.compile(
    rf"(?i)\b([A-Za-z0-9_\-]*{_SECRET_WORD}[A-Za-z0-9_\-]*)(\"?\s*[=:]\s*\"?)(?![\[{{\"'])(?!\d+(?:\.\d+)?\b)([^\s\"',;&\\]{{6,}})"
)
# Environment variables whose values are secrets whatever they look like: their literal
# values are redacted wherever they appear, even a key with no recognisable prefix.
SECRET_ENV_NAME = re.compile(rf"(?i){_SECRET_WORD}")
# names that match SECRET_ENV_NAME but hold settings, not secrets
NOT_SECRET_ENV = {"SSH_AUTH_SOCK", "XAUTHORITY"}
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Redact this exact value from now on (an API key read from a variable the user named)."""
    if value and len(value) >= 6:
        _registered.add(value)


def _secret_values() -> list[str]:
    values = set(_registered)
    for name, value in os.environ.items():
        if name in NOT_SECRET_ENV or not SECRET_ENV_NAME.search(name):
            continue
        if len(value) >= 6 and value.lower() not in ("true", "false", "none", "null") and not value.isdigit():
            values.add(value)
    return sorted(values, key=len, reverse=True)  # longest first: a value inside another goes too


def redact(text: str) -> str:
    """Replace anything that looks like a token or key, and every secret variable's value.

    Applied to every result file, log line, error message and captured error output the
    harness writes. The replacement contains no quote or backslash, so redacting JSON text
    keeps it valid JSON.
    """
    if not text:
        return text
    for value in _secret_values():
        # the value as it is, and as it appears inside a JSON string
        for form in {value, json.dumps(value)[1:-1]}:
            if form in text:
                text = text.replace(form, "[REDACTED]")
    text = SECRET_PATTERN.sub("[REDACTED]", text)
    text = BEARER_PATTERN.sub(lambda m: f"{m.group(1)}{m.group(2)}[REDACTED]", text)
    text = URL_CREDENTIALS_PATTERN.sub(lambda m: f"{m.group(1)}[REDACTED]@", text)
    return ASSIGNMENT_PATTERN.sub(lambda m: f"{m.group(1)}{m.group(2)}[REDACTED]", text)


class RedactingStream:
    """A text stream that passes everything written to it through redact().

    harness.cli.main() puts one over stdout and stderr, so no command, printer or library
    can print a key, whatever it formats.
    """

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):  # flush, isatty, fileno, encoding, ...
        return getattr(self._stream, name)


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# instruction-set extensions that decide which kernels llama.cpp and torch run, as the
# kernel names them in /proc/cpuinfo (x86 "flags", Arm "Features": asimd is NEON, asimddp dot product)
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "asimdhp",
             "i8mm", "bf16", "sve", "sve2", "sme")


def cpu_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The CPU_FLAGS this CPU has, in CPU_FLAGS order (Arm's asimd is also listed as neon);
    None where the kernel does not say (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ["neon"] if platform.system() == "Darwin" and platform.machine() == "arm64" else None
    have: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            have.update(value.split())
            break
    if not have:
        return None
    if "asimd" in have:
        have.add("neon")
    return [f for f in CPU_FLAGS if f in have]


def _os_release() -> str | None:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME")
    except (OSError, AttributeError):
        return None


def _git_sha() -> str | None:
    root = Path(harness.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        sha = out.stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _gpu_clocks_and_power(pynvml, handle) -> dict[str, Any]:
    """Clocks (MHz) and power limits (W) that shape a GPU's numbers; each one NVML cannot
    read on this device is named under "unavailable" with NVML's reason."""
    reads = {
        "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "sm_clock_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "mem_clock_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "power_limit_w": lambda: pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000,
        "power_limit_enforced_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
        "power_limit_max_w": lambda: pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)[1] / 1000,
    }
    out: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for key, read in reads.items():
        try:
            out[key] = read()
        except Exception as exc:  # NVMLError_NotSupported and kin: the figure is absent, with why
            unavailable[key] = f"NVML: {exc}"
    if unavailable:
        out["unavailable"] = unavailable
    return out


def _gpus() -> dict[str, Any]:
    try:
        import pynvml
    except ImportError:
        return {"gpus": [], "gpu_unavailable": "nvidia-ml-py (pynvml) not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return {"gpus": [], "gpu_unavailable": f"NVML unavailable: {exc}"}
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append({
                "index": i,
                "name": name.decode() if isinstance(name, bytes) else name,
                "memory_total_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**20,
                **_gpu_clocks_and_power(pynvml, h),
            })
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return {
            "gpus": gpus,
            "gpu_driver": driver.decode() if isinstance(driver, bytes) else driver,
            "cuda_driver_version": f"{cuda // 1000}.{(cuda % 1000) // 10}",
        }
    finally:
        pynvml.nvmlShutdown()


@lru_cache(maxsize=1)
def fingerprint() -> dict[str, Any]:
    mem = psutil.virtual_memory()
    backends = {}
    for name in registry.available():
        try:
            cls = registry.get(name)
            backends[name] = {"version": cls.installed_version(), "engine": cls.engine_version()}
        except Exception as exc:  # a broken plugin must not stop a benchmark of another backend
            backends[name] = {"error": redact(str(exc))}
    env = {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpu_threads_logical": psutil.cpu_count(logical=True),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_total_mib": mem.total / 2**20,
        "os": platform.system(),
        "os_release": _os_release(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "harness_version": harness.__version__,
        "harness_git_sha": _git_sha(),
        "backends": backends,
        "packages": {p: _pkg_version(p) for p in ("lm-eval", "numpy", "gguf", "torch", "transformers")},
        "env": {k: redact(os.environ[k]) for k in ENV_ALLOWLIST if k in os.environ},
    }
    env.update(_gpus())
    return env


def hardware_key(env: dict[str, Any]) -> tuple:
    """The parts of a fingerprint that make two machines' numbers incomparable."""
    return (env.get("cpu_model"), env.get("cpu_cores_physical"), tuple(g.get("name") for g in env.get("gpus", [])))
