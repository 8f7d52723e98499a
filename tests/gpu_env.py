"""What this machine can do on a GPU, for tests that depend on it (no model is loaded here)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def nvidia_gpu() -> str | None:
    """The first NVIDIA GPU's name through NVML, or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        return name.decode() if isinstance(name, bytes) else name
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


@lru_cache(maxsize=1)
def llama_cpp_offloads() -> bool:
    """Whether the installed llama-cpp-python was built with a GPU backend."""
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


def gpu_skip_reason() -> str | None:
    if nvidia_gpu() is None:
        return "no NVIDIA GPU visible through NVML"
    if not llama_cpp_offloads():
        return "llama-cpp-python was built without GPU offload (benchmarks/gpu_check.sh builds it with CUDA)"
    return None
