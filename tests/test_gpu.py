"""The GPU paths on a real NVIDIA GPU: llama.cpp offload with -ngl, NVML's per-process
VRAM and device memory, the energy counter, the GPU roofline and `make nightly`.

Every test here is marked `gpu` and skips, with its reason, where there is no NVIDIA
GPU or llama-cpp-python was built without offload (benchmarks/gpu_check.sh builds it
with CUDA on a bare GPU machine and runs these).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from gpu_env import gpu_skip_reason

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)
# a bare GPU machine has no bundled model packages: gpu_check.sh names a carried GGUF
MODEL = os.environ.get("HARNESS_GPU_TEST_MODEL", "smollm2-135m")

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(gpu_skip_reason() is not None, reason=gpu_skip_reason() or "")]


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    """One bench of the bundled model with every layer on the GPU, shared by the checks below."""
    out = tmp_path_factory.mktemp("gpu-runs")
    res = run_cli("bench", "--model", MODEL, "-ngl", "99", "--pp", "256", "--tg", "64", "--reps", "3", "--format", "json", "--out", str(out))
    assert res.code == 0, res.stderr
    (record,) = res.json()
    return record


@pytest.fixture(scope="module")
def on_cpu(tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu-runs")
    res = run_cli("bench", "--model", MODEL, "-ngl", "0", "--pp", "256", "--tg", "none", "--reps", "3", "--format", "json", "--out", str(out))
    assert res.code == 0, res.stderr
    (record,) = res.json()
    return record


def _n_layers() -> int:
    from harness.core.models import resolve, read_gguf_metadata

    meta = read_gguf_metadata(Path(resolve(MODEL).path))
    arch = meta["general.architecture"]
    return int(meta[f"{arch}.block_count"])


def test_ngl_offloads_every_layer(offloaded):
    assert offloaded["status"] == "ok"
    assert offloaded["backend"]["device"] == "gpu"
    assert offloaded["backend"]["settings"]["n_gpu_layers"] == _n_layers()


def test_offload_beats_the_cpu_at_prompt_processing(offloaded, on_cpu):
    assert on_cpu["backend"]["device"] == "cpu" and on_cpu["backend"]["settings"]["n_gpu_layers"] == 0
    gpu_pp = next(p for p in offloaded["perf"] if p["test"] == "pp256")["tps_mean"]
    cpu_pp = on_cpu["perf"][0]["tps_mean"]
    # a GPU that runs a 135M model's prompt slower than the host's CPU is not offloading
    assert gpu_pp > cpu_pp, (gpu_pp, cpu_pp)


def test_nvml_memory_per_process_and_device(offloaded):
    model_mib = offloaded["model"]["size_bytes"] / 2**20
    for p in offloaded["perf"]:
        assert "peak_vram_mib" not in p["unavailable"], p["unavailable"]
        # the weights live on the device: the process holds at least most of the file there
        assert p["peak_vram_mib"] > 0.5 * model_mib, (p["peak_vram_mib"], model_mib)
        assert p["peak_vram_mib"] <= p["device_mem_used_mib"] <= p["device_mem_total_mib"]


def test_energy_counter_reads_joules(offloaded):
    for p in offloaded["perf"]:
        assert "gpu_energy_j" not in p["unavailable"], p["unavailable"]
        assert p["gpu_energy_j"] > 0
        seconds = sum(p["samples_ms"]) / 1e3
        # between an idle floor and the largest board power there is (~1.2 kW), over the timed repetitions
        assert p["gpu_energy_j"] / seconds < 1500, (p["gpu_energy_j"], seconds)


def test_roofline_uses_the_device_bandwidth(offloaded):
    tg = next(p for p in offloaded["perf"] if p["test"] == "tg64")
    assert tg["roofline_tps"] > 0 and tg["roofline_method"]
    assert "PyTorch device-to-device copy" in tg["roofline_method"] or "NVML" in tg["roofline_method"]
    # a GPU's bandwidth is far beyond this host's: the bound is in the thousands of t/s
    assert tg["roofline_tps"] > 1000
    assert 0 < tg["roofline_fraction"] < 1.2


def test_make_nightly_on_the_gpu(tmp_path):
    # the night compares with scipy and plots with matplotlib: too big to carry to a bare GPU machine
    pytest.importorskip("scipy")
    pytest.importorskip("matplotlib")
    out, history = tmp_path / "nightly", tmp_path / "history"
    matrix = tmp_path / "nightly.yaml"
    matrix.write_text(f"models: {MODEL}\nbackends: [{{name: llamacpp, ngl: 99}}]\nperf: {{pp: 128, tg: 32, reps: 3}}\n")
    proc = subprocess.run(
        ["make", "--no-print-directory", "-o", str(VENV / "bin" / "harness"), "nightly", f"VENV={VENV}",
         f"NIGHTLY_MATRIX={matrix}", f"NIGHTLY_OUT={out}", f"HISTORY_DIR={history}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (night,) = history.iterdir()
    (record_file,) = [f for f in night.glob("*.json") if f.name != "sweep.json"]
    record = json.loads(record_file.read_text())
    assert record["status"] == "ok" and record["backend"]["device"] == "gpu"
    assert all(p["peak_vram_mib"] and p["gpu_energy_j"] for p in record["perf"])
    assert (out / "report.html").exists() and ": ok" in (out / "summary.md").read_text()
