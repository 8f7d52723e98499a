"""The memory-bandwidth roofline's cached figure: measured once, re-measured when it reads low."""

import json

from harness.measurement import roofline


def test_a_cached_bandwidth_that_reads_low_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    path = roofline._cache_path("cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    # as a pass taken on a busy machine would leave it: far below any real figure
    path.write_text(json.dumps({"bytes_per_s": 1e6, "device": "cpu", "method": "stale"}))
    assert roofline.machine_bandwidth("cpu").bytes_per_s == 1e6  # cached: not measured again
    fresh = roofline.machine_bandwidth("cpu", remeasure=True)
    assert fresh.bytes_per_s > 1e8 and fresh.method != "stale"
    assert json.loads(path.read_text())["bytes_per_s"] == fresh.bytes_per_s
    # a new pass that reads lower than the cached one does not replace it
    path.write_text(json.dumps({"bytes_per_s": 1e15, "device": "cpu", "method": "high"}))
    assert roofline.machine_bandwidth("cpu", remeasure=True).bytes_per_s == 1e15
