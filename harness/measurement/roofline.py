"""Decode speed against the memory-bandwidth roofline.

Generating one token reads every weight the forward pass uses once, plus the KV cache
of the tokens before it, so ``bandwidth / bytes_per_token`` is the most tokens per
second the memory can feed, whatever the arithmetic; ``tg t/s / roofline_tps`` is how
close decoding is to that physical limit.

Bytes per token come from the GGUF's tensor table (the ``gguf`` package), not the file
size: every tensor's stored bytes count once, except the token embedding table, which
is gathered (one row per token), unless the model has no separate output matrix and
its tied embedding is read whole as the output projection. The KV cache read for a
tgN test is the mean over its N steps (step i attends over i cells) of the K and V rows
of every layer, at llama.cpp's default f16 cache type.

Bandwidth: on the CPU, a streaming read measured here (threaded numpy column sums over
a buffer four times the last-level cache, best of several passes), once per machine:
the figure is cached under the environment fingerprint's hardware key. On an NVIDIA
GPU, a device-to-device copy through PyTorch when it has CUDA (bytes read per second:
half the copy's traffic), else NVML's memory clock x bus width x 2 (double data rate).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default cache type, f16
CPU_PASSES = 5
MIN_BUFFER_BYTES = 256 << 20
ROW = 4096


@dataclass(frozen=True)
class ModelBytes:
    weights: int  # bytes of weights read per generated token
    kv_per_cell: int  # bytes of K and V read per cached token, all layers
    method: str


@dataclass(frozen=True)
class Bandwidth:
    bytes_per_s: float
    device: str  # "cpu" or "gpu"
    method: str


def model_bytes(path: str | Path) -> ModelBytes:
    """Bytes one decode step reads, from the GGUF's tensor table and metadata."""
    from harness.core.models import _open_reader

    reader = _open_reader(Path(path))  # the harness's reader: it steps over the vocabulary arrays
    names = {t.name: t for t in reader.tensors}
    embd = names.get("token_embd.weight")
    tied = "output.weight" not in names
    total = sum(int(t.n_bytes) for t in reader.tensors)
    how = "every tensor once"
    if embd is not None and not tied:
        n_rows = int(embd.shape[-1])  # gguf shapes are innermost first: (n_embd, n_vocab)
        total -= int(embd.n_bytes) - int(embd.n_bytes) // max(1, n_rows)
        how += ", the token embedding one row"
    elif embd is not None:
        how += " (the token embedding is tied to the output and read whole)"
    arch = _field(reader, "general.architecture")
    layers = _field(reader, f"{arch}.block_count") or 0
    heads = _field(reader, f"{arch}.attention.head_count") or 1
    kv_heads = _field(reader, f"{arch}.attention.head_count_kv") or heads
    embd_len = _field(reader, f"{arch}.embedding_length") or 0
    k_len = _field(reader, f"{arch}.attention.key_length") or embd_len // max(1, heads)
    v_len = _field(reader, f"{arch}.attention.value_length") or k_len
    kv = int(layers) * int(kv_heads) * (int(k_len) + int(v_len)) * KV_BYTES_PER_ELEMENT
    return ModelBytes(weights=total, kv_per_cell=kv, method=how + "; KV cache f16, mean over the test's steps")


def _field(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        value = f.contents()
    except Exception:  # an array the fast reader stepped over
        return None
    if isinstance(value, list):  # per-layer arrays (some models): the largest
        value = max(value) if value else None
    return value


def bytes_per_token(mb: ModelBytes, n_gen: int) -> float:
    """Mean bytes read per step of a tgN test from an empty cache (step i attends over i cells)."""
    return mb.weights + mb.kv_per_cell * (n_gen + 1) / 2


# ----------------------------------------------------------------------------- bandwidth


def _llc_bytes() -> int:
    best = 0
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (d / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            best = max(best, int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return best


def measure_cpu_bandwidth(threads: int | None = None, passes: int = CPU_PASSES) -> Bandwidth:
    """A streaming read: each thread sums its slice of a float64 buffer (numpy releases the
    GIL in the reduction); the best pass's bytes over its wall time."""
    import psutil

    threads = threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
    size = max(MIN_BUFFER_BYTES, 4 * _llc_bytes())
    size -= size % (8 * threads)
    # rows of 4096 float64 summed column-wise: each row is streamed into an accumulator that
    # stays in L1, so the loop is SIMD adds at the speed memory delivers the rows
    buf = np.ones((size // 8 // ROW, ROW), dtype=np.float64)  # written once: every page is resident
    parts = np.array_split(buf, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(passes + 1):  # the first pass warms the pool and the TLB
            t0 = time.perf_counter()
            list(pool.map(lambda a: a.sum(axis=0), parts))
            best = min(best, time.perf_counter() - t0)
    size = buf.nbytes
    del buf, parts
    return Bandwidth(bytes_per_s=size / best, device="cpu",
                     method=f"numpy column sums of a {size >> 20} MiB float64 buffer (4x the LLC, at least 256 MiB), "
                            f"{threads} threads, best of {passes}")


def measure_gpu_bandwidth(index: int = 0) -> Bandwidth | None:
    try:
        import torch

        if torch.cuda.is_available():
            dev = torch.device("cuda", index)
            n = 1 << 30
            src = torch.empty(n, dtype=torch.uint8, device=dev)
            dst = torch.empty_like(src)
            dst.copy_(src)
            torch.cuda.synchronize(dev)
            best = float("inf")
            for _ in range(10):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                dst.copy_(src)
                stop.record()
                stop.synchronize()
                best = min(best, start.elapsed_time(stop) / 1e3)
            name = torch.cuda.get_device_name(dev)
            del src, dst
            torch.cuda.empty_cache()
            return Bandwidth(bytes_per_s=n / best, device="gpu",
                             method=f"PyTorch device-to-device copy of 1 GiB on {name}: bytes read per second, best of 10")
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)
            bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(h)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None
    return Bandwidth(bytes_per_s=clock_mhz * 1e6 * 2 * bus_bits / 8, device="gpu",
                     method=f"NVML peak: memory clock {clock_mhz} MHz x {bus_bits}-bit bus x 2 (double data rate)")


def _cache_path(device: str) -> Path:
    from harness.core.environment import fingerprint, hardware_key
    from harness.core.paths import cache_dir

    env = fingerprint()
    key = json.dumps([device, hardware_key(env), round(env.get("ram_total_mib") or 0)], default=str)
    return cache_dir() / f"bandwidth-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def machine_bandwidth(device: str, remeasure: bool = False) -> Bandwidth | None:
    """The machine's read bandwidth for ``device``, measured once and cached by its fingerprint.

    ``remeasure``: measure again and keep the higher figure (a pass taken while the machine
    was busy reads low, and a low figure would stay cached for good)."""
    from harness.output.store import write_atomic

    path = _cache_path(device)
    cached = None
    try:
        data = json.loads(path.read_text())
        cached = Bandwidth(bytes_per_s=float(data["bytes_per_s"]), device=data["device"], method=data["method"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if cached is not None and not remeasure:
        return cached
    bw = measure_gpu_bandwidth() if device == "gpu" else measure_cpu_bandwidth()
    if bw is None:
        return cached
    if cached is not None and cached.bytes_per_s >= bw.bytes_per_s:
        return cached
    write_atomic(path, json.dumps({"bytes_per_s": bw.bytes_per_s, "device": bw.device, "method": bw.method}))
    return bw


def annotate(result, model_path: str | Path | None, device: str) -> None:
    """Add roofline_tps, roofline_fraction and their method to a tgN PerfResult."""
    if not result.n_gen or result.n_prompt or result.batch:
        return
    if device not in ("cpu", "gpu", "cuda"):
        result.unavailable["roofline_tps"] = f"no memory bandwidth to hold a '{device}' engine against"
        return
    if not model_path or not str(model_path).endswith(".gguf"):
        result.unavailable["roofline_tps"] = "bytes per token are read from a GGUF tensor table; this model is not a GGUF file"
        return
    try:
        mb = model_bytes(model_path)
    except Exception as exc:  # a file the gguf package cannot read: the test stands without a roofline
        result.unavailable["roofline_tps"] = f"the GGUF tensor table could not be read: {type(exc).__name__}: {exc}"
        return
    bw = machine_bandwidth("cpu" if device == "cpu" else "gpu")
    if bw is None:
        result.unavailable["roofline_tps"] = "no way to measure the GPU's memory bandwidth (neither PyTorch with CUDA nor NVML)"
        return
    per_token = bytes_per_token(mb, result.n_gen)
    if result.tps_mean > bw.bytes_per_s / per_token:  # faster than the bound: the cached figure read low
        bw = machine_bandwidth("cpu" if device == "cpu" else "gpu", remeasure=True) or bw
    result.roofline_tps = bw.bytes_per_s / per_token
    result.roofline_fraction = result.tps_mean / result.roofline_tps
    result.roofline_method = (f"{bw.bytes_per_s / 1e9:.1f} GB/s ({bw.method}) / {per_token / 1e6:.2f} MB per token "
                              f"({mb.method})")
