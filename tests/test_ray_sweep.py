"""`harness sweep --ray`: the same matrix on a real local Ray cluster and locally.

The test starts a Ray cluster in its own process (2 CPUs, no dashboard, a 200 MB object
store) and points `harness sweep --ray ADDRESS` at it, as a user points a sweep at a
cluster of machines. The cells are real: the SmolLM2 GGUF through llama-cpp-python
(pp16, tg8, one repetition), and one cell of the fault plugin that aborts. On CPU only,
so multi-GPU placement and vLLM parallelism are not exercised here (see docs/ray.md).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from sweep_helpers import FAULT_PLUGINS, result_files

from harness.output.store import read_record, read_sweep

pytestmark = pytest.mark.slow

CELLS = ("models: [smollm2-135m]\nbackends:\n"
         "  - name: llamacpp\n    threads: 1\n    n_batch: [256, 512]\n"
         "  - name: faulty\n    threads: 1\n    fault: abort_with_env\n"
         "perf: {pp: [16], tg: [8], reps: 1}\n")
PLUGIN_ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(FAULT_PLUGINS), os.environ.get("PYTHONPATH")) if p)}
# Ray sets this for every task with num_cpus (to the task's CPUs); it is part of what the
# measuring process saw, so the record keeps it
RAY_TASK_ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster, started here and shut down at the end whatever happens. The
    fault plugin is on PYTHONPATH before it starts, so its workers find the plugin as the
    sweep's driver does (on a real cluster: the same packages on every node)."""
    import ray  # make setup installs it: missing, this test fails rather than skips
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = PLUGIN_ENV["PYTHONPATH"]
    try:
        ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
        yield ctx.address_info["gcs_address"], ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _content(record: dict) -> dict:
    """A record without what differs between any two runs: ids, times, the command line,
    and the measured figures (rates, durations, memory readings) of load and perf."""
    def measured(x):
        if isinstance(x, float):
            return "<measured>"
        if isinstance(x, list):
            return [measured(v) for v in x]
        if isinstance(x, dict):
            return {k: measured(v) for k, v in x.items()}
        return x

    out = {k: v for k, v in record.items() if k not in ("run_id", "created_at", "command", "wall_s")}
    out["model_load"] = measured(out["model_load"])
    out["perf"] = measured(out["perf"])
    for f in out["failures"]:
        f["stderr_tail"] = f["stderr_tail"] and f["stderr_tail"].replace(record["run_id"], "<run id>")
    return out


def _by_cell(out: Path) -> dict[int, dict]:
    summary = read_sweep(out / "sweep.json")
    return {c.index: json.loads((out / c.result_file).read_text()) for c in summary.cells if c.result_file}


@pytest.fixture(scope="module")
def both(ray_cluster, tmp_path_factory):
    """The same matrix file swept locally, then on the cluster; each one's wall time."""
    from conftest import run_cli

    address, _ = ray_cluster
    tmp = tmp_path_factory.mktemp("ray-sweep")
    m = tmp / "cells.yaml"
    m.write_text(CELLS)
    runs = {}
    for name, extra in (("local", []), ("ray", ["--ray", address])):
        t0 = time.monotonic()
        res = run_cli("sweep", str(m), "--out", str(tmp / name), *extra, env=PLUGIN_ENV)
        runs[name] = (res, tmp / name, time.monotonic() - t0)
    print(f"\nwall time, same matrix (3 cells): local {runs['local'][2]:.1f} s, "
          f"ray (cluster already up) {runs['ray'][2]:.1f} s")
    return runs, m, address


def test_cells_run_as_ray_tasks_and_the_crash_is_recorded_while_the_others_finish(both, ray_cluster):
    runs, _, _ = both
    res, out, _ = runs["ray"]
    assert res.code == 1, res.stderr  # one cell failed, the sweep finished
    assert "Traceback" not in res.stdout
    summary = read_sweep(out / "sweep.json")
    assert summary.status == "complete"
    assert [c.status for c in summary.cells] == ["ok", "ok", "failed"]
    crashed = summary.cells[2]
    assert "SIGABRT" in crashed.cause and "engine config" in crashed.stderr_tail
    record = read_record(out / crashed.result_file)
    assert record.status == "failed" and "SIGABRT" in record.failures[0].cause
    # every cell ran on the cluster's node, and the two light cells in separate Ray workers
    _, node_id = ray_cluster
    assert all(c.node and c.node["node_id"] == node_id and c.node["hostname"] == socket.gethostname()
               for c in summary.cells), [c.node for c in summary.cells]
    assert len({c.node["worker_id"] for c in summary.cells}) >= 2
    assert "| node" in res.stdout and socket.gethostname() in res.stdout
    assert f"ok on {socket.gethostname()}" in res.stderr
    # the measuring node's fingerprint, computed by the worker there
    ok = read_record(out / summary.cells[0].result_file)
    assert ok.environment["hostname"] == socket.gethostname()
    assert ok.environment["env"].get("OMP_NUM_THREADS") == "1"
    assert len(result_files(out)) == 3


def test_results_match_the_local_sweep_apart_from_timing(both):
    runs, _, _ = both
    local_res, local_out, _ = runs["local"]
    ray_res, ray_out, _ = runs["ray"]
    assert local_res.code == ray_res.code == 1, local_res.stderr + ray_res.stderr
    local, ray = _by_cell(local_out), _by_cell(ray_out)
    assert sorted(local) == sorted(ray) == [1, 2, 3]
    for index in local:
        a, b = _content(local[index]), _content(ray[index])
        env_a, env_b = a.pop("environment"), b.pop("environment")
        assert a == b, f"cell {index} differs"
        # the environment too, but for what Ray sets in a task's process
        if index < 3:
            assert {**env_a["env"], **RAY_TASK_ENV} == env_b["env"]
        env_a.pop("env"), env_b.pop("env")
        assert env_a == env_b
    # a measurement is a measurement: each rate is there, and positive
    for index in (1, 2):
        assert [p["test"] for p in ray[index]["perf"]] == ["pp16", "tg8"]
        assert all(p["tps_mean"] > 0 for p in ray[index]["perf"])


def test_resume_on_the_cluster_reruns_only_the_failed_cell(both):
    from conftest import run_cli

    runs, m, address = both
    _, out, _ = runs["ray"]
    before = read_sweep(out / "sweep.json")
    res = run_cli("sweep", str(m), "--out", str(out), "--resume", "--ray", address, env=PLUGIN_ENV)
    assert res.code == 1, res.stderr
    after = read_sweep(out / "sweep.json")
    assert [c.reused for c in after.cells] == [True, True, False]
    assert [c.result_file for c in after.cells[:2]] == [c.result_file for c in before.cells[:2]]
    assert after.cells[2].attempts == 2 and after.cells[2].status == "failed" and after.cells[2].node
    assert not (out / before.cells[2].result_file).exists()  # the rerun's result replaced it
    assert len(result_files(out)) == 3


def test_a_cell_no_node_can_hold_is_refused_before_anything_runs(cli, ray_cluster, tmp_path):
    address, _ = ray_cluster
    m = tmp_path / "big.yaml"
    m.write_text("models: [smollm2-135m]\nbackends:\n  - name: llamacpp\n    threads: [1, 3]\n"
                 "perf: {pp: [16], tg: [8], reps: 1}\n")
    out = tmp_path / "out"
    res = cli("sweep", str(m), "--out", str(out), "--ray", address)
    lines = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.code == 2 and len(lines) == 1, res.stderr
    assert "cell 2" in lines[0] and "3 CPU" in lines[0] and "no cell was run" in lines[0]
    assert "Traceback" not in res.stderr
    assert not out.exists() or (not (out / "sweep.json").exists() and result_files(out) == [])


def test_ray_missing_is_one_line_saying_how_to_install(cli, tmp_path):
    """Ray absent (an importable stand-in that fails as a missing package does): one line."""
    fake = tmp_path / "site"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    m = tmp_path / "m.yaml"
    m.write_text("models: [smollm2-135m]\nbackends: [llamacpp]\nperf: {pp: [16], tg: [8], reps: 1}\n")
    res = cli("sweep", str(m), "--out", str(tmp_path / "out"), "--ray", "local", env={"PYTHONPATH": str(fake)})
    assert res.code == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert res.stderr.startswith("error: --ray needs Ray, which is not installed") and "pip install" in res.stderr
    assert not (tmp_path / "out").exists()


def test_an_address_where_no_cluster_answers_is_one_line_at_once(cli, tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("models: [smollm2-135m]\nbackends: [llamacpp]\nperf: {pp: [16], tg: [8], reps: 1}\n")
    t0 = time.monotonic()
    res = cli("sweep", str(m), "--out", str(tmp_path / "out"), "--ray", "127.0.0.1:1")
    assert time.monotonic() - t0 < 60  # ray.init alone would wait minutes on it
    assert res.code == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert res.stderr.startswith("error: --ray 127.0.0.1:1: no Ray cluster answers there")
    assert not (tmp_path / "out").exists()
