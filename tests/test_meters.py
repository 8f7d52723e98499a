"""Meters read real counters; what this machine lacks is None with a reason, never zero."""

from __future__ import annotations

import time

from harness.measurement.meters import EnergyMeter, GpuMeter, MemorySampler, RaplMeter, now_ns


def test_memory_sampler_sees_a_real_allocation():
    with MemorySampler(interval_s=0.01) as idle:
        time.sleep(0.05)
    with MemorySampler(interval_s=0.01) as busy:
        block = bytearray(300 * 2**20)
        for i in range(0, len(block), 4096):  # touch every page so it is resident
            block[i] = 1
        time.sleep(0.05)
        del block
    assert busy.peaks.peak_rss_mib - idle.peaks.peak_rss_mib > 250
    assert busy.peaks.peak_uss_mib is not None and busy.peaks.peak_uss_mib > 250


def test_memory_sampler_counts_the_processes_it_started():
    # engines such as vLLM hold the weights in a child process: the tree's peak must see it
    import subprocess
    import sys

    code = "b = bytearray(200 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('ready', flush=True)\ninput()"
    with MemorySampler() as mem:
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(2.5)  # past two tree walks (every 20 samples of 50 ms), with room for a busy machine
        child.communicate("\n", timeout=10)
    assert mem.peaks.peak_rss_tree_mib - mem.peaks.peak_rss_mib > 150, mem.peaks


def test_clock_is_monotonic_and_fine():
    a = now_ns()
    b = now_ns()
    assert b >= a
    time.sleep(0.01)
    assert now_ns() - a >= 9_000_000


def test_missing_counters_are_reported_with_reasons():
    gpu = GpuMeter()
    energy = EnergyMeter(gpu if gpu.ok else None)
    energy.start()
    window = energy.stop()
    if not gpu.ok:
        assert window.gpu_energy_j is None and window.unavailable["gpu_energy_j"]
    rapl = RaplMeter()
    if not rapl.ok:
        assert window.cpu_energy_j is None and window.unavailable["cpu_energy_j"] == rapl.reason
    else:
        assert window.cpu_energy_j is not None and window.cpu_energy_j >= 0
