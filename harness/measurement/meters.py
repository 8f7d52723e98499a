"""Everything that reads a clock, a memory counter or an energy counter.

Readings that this machine cannot provide come back as None with a reason; callers
record the reason instead of a zero.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MIB = 1024 * 1024


def now_ns() -> int:
    """The one clock used for measurements: monotonic, high resolution."""
    return time.perf_counter_ns()


@dataclass
class MemoryPeaks:
    peak_rss_mib: float | None = None
    peak_uss_mib: float | None = None
    peak_rss_tree_mib: float | None = None  # this process plus every process it started, summed
    peak_vram_mib: float | None = None  # NVML's figure for this process and the processes it started
    device_mem_used_mib: float | None = None
    device_mem_total_mib: float | None = None
    unavailable: dict[str, str] = field(default_factory=dict)


class MemorySampler:
    """Samples this process's memory in a background thread while a block runs.

    RSS comes from /proc/self/statm (about 20 us: every ``interval_s``). USS needs the
    kernel to total smaps, and the process tree needs every /proc/*/stat read (about
    1.3 ms), so they are read once every 2 s and 1 s, and at the start and end. On a
    2-core machine whose cores the engine's threads hold, a sampler that walked the tree
    five times a second cost tg128 about 2% (A/B over 30 alternating runs); at these
    rates the cost is within the noise (0.5%), as it is for RSS alone.
    """

    def __init__(self, gpu: "GpuMeter | None" = None, interval_s: float = 0.05, uss_every: int = 40,
                 tree_every: int = 20):
        self._proc = psutil.Process()
        self._gpu = gpu
        self._interval = interval_s
        self._uss_every = uss_every
        # engines such as vLLM keep the model in processes of their own: the process tree is
        # walked every tree_every samples (a walk reads /proc, so not every time)
        self._tree_every = tree_every
        self._tree_rss = 0
        self._pids = {self._proc.pid}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peaks = MemoryPeaks()
        self._rss = 0
        self._uss = 0
        self._uss_ok = True
        self._vram = 0

    def _sample_tree(self) -> None:
        rss = self._proc.memory_info().rss
        pids = {self._proc.pid}
        try:
            children = self._proc.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                rss += child.memory_info().rss
                pids.add(child.pid)
            except psutil.Error:  # ended between the listing and the reading
                continue
        self._pids = pids
        self._tree_rss = max(self._tree_rss, rss)

    def _sample(self, n: int) -> None:
        self._rss = max(self._rss, self._proc.memory_info().rss)
        if n % self._tree_every == 0:
            self._sample_tree()
        if self._uss_ok and n % self._uss_every == 0:
            try:
                self._uss = max(self._uss, self._proc.memory_full_info().uss)
            except (psutil.AccessDenied, AttributeError, OSError) as exc:
                self._uss_ok = False
                self.peaks.unavailable["peak_uss_mib"] = f"USS not readable: {exc}"
        if self._gpu is not None and self._gpu.ok and n % 5 == 0:
            self._vram = max(self._vram, self._gpu.process_vram_bytes(self._pids) or 0)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self._interval):
            self._sample(n)
            n += 1

    def __enter__(self) -> "MemorySampler":
        self._sample(0)
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample(0)
        self.peaks.peak_rss_mib = self._rss / MIB
        self.peaks.peak_rss_tree_mib = self._tree_rss / MIB
        if self._uss_ok:
            self.peaks.peak_uss_mib = self._uss / MIB
        if self._gpu is None or not self._gpu.ok:
            reason = self._gpu.reason if self._gpu else "no NVIDIA GPU in use"
            for key in ("peak_vram_mib", "device_mem_used_mib", "device_mem_total_mib"):
                self.peaks.unavailable[key] = reason
        else:
            self.peaks.peak_vram_mib = self._vram / MIB
            used, total = self._gpu.device_memory_bytes()
            self.peaks.device_mem_used_mib = used / MIB
            self.peaks.device_mem_total_mib = total / MIB


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / MIB


class GpuMeter:
    """NVML readings for the GPU this process uses (device 0 or CUDA_VISIBLE_DEVICES[0])."""

    def __init__(self) -> None:
        self.ok = False
        self.reason = ""
        self._handle = None
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py (pynvml) not installed"
            return
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            self.reason = f"NVML unavailable: {exc}"
            return
        try:
            if pynvml.nvmlDeviceGetCount() == 0:
                self.reason = "NVML found no GPU"
                return
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
            index = int(visible) if visible.isdigit() else 0
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.ok = True
        except Exception as exc:
            self.reason = f"NVML device query failed: {exc}"

    def process_vram_bytes(self, pids: set[int] | None = None) -> int | None:
        """VRAM NVML attributes to these processes (default: this one)."""
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:
            return None
        pids = pids or {os.getpid()}
        return sum(p.usedGpuMemory or 0 for p in procs if p.pid in pids)

    def device_memory_bytes(self) -> tuple[int, int]:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return int(info.used), int(info.total)

    def energy_mj(self) -> int | None:
        """Total energy counter in millijoules since driver load (Volta and newer)."""
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:
            return None


RAPL_ROOT = Path("/sys/class/powercap")


class RaplMeter:
    """CPU package energy from the RAPL powercap counters, where readable."""

    def __init__(self) -> None:
        self.ok = False
        self.reason = ""
        self._zones: list[tuple[Path, int]] = []
        if not RAPL_ROOT.exists():
            self.reason = "no RAPL powercap interface (/sys/class/powercap absent, e.g. in a VM)"
            return
        for zone in sorted(RAPL_ROOT.glob("intel-rapl:*")):
            if zone.name.count(":") != 1:  # package zones only; subzones are inside them
                continue
            try:
                (zone / "energy_uj").read_text()
                max_uj = int((zone / "max_energy_range_uj").read_text())
            except OSError as exc:
                self.reason = f"RAPL counters not readable: {exc}"
                continue
            self._zones.append((zone / "energy_uj", max_uj))
        if self._zones:
            self.ok = True
        elif not self.reason:
            self.reason = "no RAPL package zones found"

    def read_uj(self) -> list[int]:
        return [int(p.read_text()) for p, _ in self._zones]

    def joules_between(self, before: list[int], after: list[int]) -> float:
        total = 0
        for (_, max_uj), b, a in zip(self._zones, before, after):
            total += a - b if a >= b else a + max_uj - b  # the counter wraps
        return total / 1e6


@dataclass
class EnergyWindow:
    gpu_energy_j: float | None
    cpu_energy_j: float | None
    unavailable: dict[str, str]


class EnergyMeter:
    """Energy used between start() and stop(), from every counter this machine has."""

    def __init__(self, gpu: GpuMeter | None) -> None:
        self._gpu = gpu
        self._rapl = RaplMeter()
        self._gpu0: int | None = None
        self._cpu0: list[int] = []

    def start(self) -> None:
        self._gpu0 = self._gpu.energy_mj() if self._gpu and self._gpu.ok else None
        self._cpu0 = self._rapl.read_uj() if self._rapl.ok else []

    def stop(self) -> EnergyWindow:
        unavailable: dict[str, str] = {}
        gpu_j = cpu_j = None
        if self._gpu0 is not None:
            end = self._gpu.energy_mj()
            if end is not None:
                gpu_j = (end - self._gpu0) / 1000.0
        if gpu_j is None:
            unavailable["gpu_energy_j"] = (
                self._gpu.reason if self._gpu and not self._gpu.ok else
                "no NVIDIA GPU in use" if self._gpu is None else "GPU has no total-energy counter"
            )
        if self._rapl.ok:
            cpu_j = self._rapl.joules_between(self._cpu0, self._rapl.read_uj())
        else:
            unavailable["cpu_energy_j"] = self._rapl.reason
        return EnergyWindow(gpu_j, cpu_j, unavailable)
