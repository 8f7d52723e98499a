"""The environment fingerprint stored with every result.

Built from an allow-list: the machine, the OS, and the versions of the software that
shapes the numbers. No environment variable is read into it except those named in
ENV_ALLOWLIST, and their values pass through redact() first.
"""

from __future__ import annotations

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
from harness import registry

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

SECRET_PATTERN = re.compile(
    r"(?i)\b(sk-[A-Za-z0-9_\-]{8,}|hf_[A-Za-z0-9]{8,}|gh[pousr]_[A-Za-z0-9]{8,}|xox[abp]-[A-Za-z0-9\-]{8,}|"
    r"AKIA[0-9A-Z]{12,}|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})"
)


def redact(text: str) -> str:
    """Replace anything that looks like a token or key."""
    return SECRET_PATTERN.sub("[REDACTED]", text)


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
