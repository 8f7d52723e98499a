"""What the harness knows of a backend's settings and server comes from the backend: the
built-ins declare today's names, and a plugin that names nothing like llama.cpp gets its
own table columns, sweep keys, --threads and `harness load --serve`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.core.models import ModelInfo
from harness.core.record import BackendInfo, PerfResult, RunRecord
from harness.output.store import read_record, write_record
from cli_checks import assert_one_line_error

META_PLUGINS = Path(__file__).parent / "meta_plugins"
PLUGIN_ENV = {"PYTHONPATH": str(META_PLUGINS)}


@pytest.fixture
def toy():
    sys.path.insert(0, str(META_PLUGINS))
    try:
        import harness_meta_plugin

        yield harness_meta_plugin.ToyBackend
    finally:
        sys.path.remove(str(META_PLUGINS))


def test_builtin_backends_declare_the_names_records_and_tables_use():
    from harness.backends.llamacpp import LlamaCppSettings
    from harness.backends.openai_http import OpenAISettings
    from harness.backends.vllm_engine import VllmSettings
    from harness.core.registry import settings_metadata

    columns = {k: m.label for k, m in settings_metadata(["llamacpp", "vllm"]).items() if m.column}
    assert columns == {"n_threads": "threads", "n_threads_batch": "threads_batch", "n_gpu_layers": "ngl",
                       "n_batch": "n_batch", "n_ubatch": "n_ubatch", "flash_attn": "fa", "use_mmap": "mmap",
                       "tensor_parallel_size": "tp", "pipeline_parallel_size": "pipeline"}
    assert {"threads": "n_threads", "threads_batch": "n_threads_batch", "ngl": "n_gpu_layers", "mmap": "use_mmap",
            "fa": "flash_attn"}.items() <= LlamaCppSettings.aliases().items()
    assert LlamaCppSettings.reload_keys() == ("n_gpu_layers", "n_ctx", "n_batch", "n_ubatch", "flash_attn", "use_mmap",
                                              "type_k", "type_v", "split_mode", "main_gpu", "tensor_split", "repack")
    assert set(VllmSettings.reload_keys()) == set(VllmSettings.model_fields)
    assert OpenAISettings.reload_keys() == ("base_url", "model_name", "api", "api_key_env")
    assert [LlamaCppSettings.role(r) for r in ("threads", "context", "seed")] == ["n_threads", "n_ctx", "seed"]
    assert VllmSettings.role("threads") is None and OpenAISettings.role("context") == "n_ctx"


def test_a_plugins_settings_are_read_from_its_declarations(toy):
    s = toy.Settings
    assert s.aliases() == {"w": "workers", "threads": "workers", "chunk_size": "chunk"}
    assert s.reload_keys() == ("chunk", "lanes", "n_positions")
    assert s.role("threads") == "workers" and s.role("context") == "n_positions" and s.role("seed") is None
    assert toy.setting_for_option("--threads") == "workers" and toy.setting_for_option("--chunk") == "chunk"
    assert toy.can_serve()


def _toy_record(workers: int, chunk: int) -> RunRecord:
    model = ModelInfo(ref="m.gguf", path="/m.gguf", sha256="0" * 64, size_bytes=2**20)
    return RunRecord(run_id=f"toy{workers}{chunk}", created_at="2026-12-01T00:00:00Z", harness_version="0.1.0",
                     model=model, backend=BackendInfo(name="toy", settings={"workers": workers, "chunk": chunk,
                                                                            "lanes": workers, "n_positions": 64}),
                     perf=[PerfResult(test="pp16", n_prompt=16, n_gen=0, reps=1, tps_mean=10.0, tps_stddev=0.0,
                                      samples_tps=[10.0], samples_ms=[1600.0])])


def _columns(stdout: str) -> list[str]:
    return [c.strip() for c in stdout.splitlines()[0].strip("|").split("|")]


def test_a_plugin_gets_its_own_table_columns(cli, tmp_path):
    for workers in (1, 2):
        write_record(_toy_record(workers, 64), tmp_path)
    res = cli("show", str(tmp_path), env=PLUGIN_ENV)
    assert res.code == 0, res.stderr
    # its thread setting in every table, under its own label; chunk only off its default; lanes never
    assert _columns(res.stdout)[:6] == ["model", "size", "params", "backend", "w", "test"]
    write_record(_toy_record(1, 32), tmp_path)
    assert _columns(cli("show", str(tmp_path), env=PLUGIN_ENV).stdout)[4:7] == ["w", "chunk_size", "test"]


def test_a_sweep_matrix_takes_a_plugins_short_names(cli, tmp_path):
    m = tmp_path / "matrix.yaml"
    m.write_text("models: [smollm2-135m]\nbackends:\n  - name: toy\n    w: [1, 2]\n    chunk_size: 32\n"
                 "perf: {pp: [16], tg: [8], reps: 1}\n")
    res = cli("sweep", str(m), "--out", str(tmp_path / "out"), "--dry-run", env=PLUGIN_ENV)
    assert res.code == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "pp16,tg8 x1" in line]
    assert len(rows) == 2 and "workers=1 chunk=32" in rows[0] and "workers=2 chunk=32" in rows[1]
    m.write_text("models: [smollm2-135m]\nbackends:\n  - name: toy\n    n_threads: 2\nperf: {pp: [16], tg: [8], reps: 1}\n")
    assert_one_line_error(cli("sweep", str(m), "--out", str(tmp_path / "out"), env=PLUGIN_ENV), tmp_path / "out",
                          r"backend 'toy' has no setting 'n_threads'")


def test_load_serve_starts_a_plugins_own_server(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("load", "--serve", "toy", "--model", "smollm2-135m", "-c", "1", "--requests", "2", "--output-len", "2",
              "--out", str(out), env=PLUGIN_ENV)
    assert res.code == 0, res.stderr
    (path,) = out.glob("*.json")
    record = read_record(path)
    assert record.backend.settings["served_by"] == "toy" and record.backend.engine_version == "toy 0.0.0 server"
    assert record.backend.settings["model_name"] == "smollm2-135m" and record.load[0].completed == 2
    assert "starting the toy server" in res.stderr and "toy server ready" in res.stderr


def test_load_serve_refuses_a_backend_without_a_server(cli, tmp_path):
    res = cli("load", "--serve", "openai", "--out", str(tmp_path), env=PLUGIN_ENV)
    assert_one_line_error(res, tmp_path, r"--serve: unknown server 'openai'; use llamacpp, toy or vllm")
