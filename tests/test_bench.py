"""`harness bench` end to end: the real SmolLM2 GGUF through the real llama-cpp-python."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from gpu_env import llama_cpp_offloads, nvidia_gpu
from harness.backends.llamacpp import repack_default
from harness.output.store import read_record

PLUGINS = Path(__file__).parent / "plugins"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def threads_run(tmp_path_factory):
    """One real run over two thread counts, shared by the checks below."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("runs")
    res = run_cli("bench", "--pp", "16", "--tg", "8", "--reps", "2", "--threads", "1,2", "--format", "json", "--out", str(out))
    assert res.code == 0, res.stderr
    return res, out


def test_json_records_follow_the_contract(threads_run):
    res, _ = threads_run
    records = res.json()
    assert isinstance(records, list) and len(records) == 2
    assert [r["backend"]["settings"]["n_threads"] for r in records] == [1, 2]
    for r in records:
        assert r["schema_version"] == "1.0" and r["status"] == "ok"
        assert r["model"]["sha256"] and r["model"]["quantization"] == "Q4_1"
        assert r["backend"]["name"] == "llamacpp" and r["backend"]["version"] == "0.3.36"
        settings = r["backend"]["settings"]
        assert settings["n_ctx"] >= 17 and settings["n_batch"] == 2048 and settings["use_mmap"] is True
        assert settings["repack"] is repack_default()  # the default as resolved on this build and CPU
        # every layer where the build offloads (the default), none on a CPU-only build
        assert (settings["n_gpu_layers"] > 0) == llama_cpp_offloads()
        assert r["backend"]["device"] == ("gpu" if llama_cpp_offloads() else "cpu")
        assert r["environment"]["cpu_cores_physical"] >= 1
        tests = {p["test"]: p for p in r["perf"]}
        assert set(tests) == {"pp16", "tg8"}
        pp, tg = tests["pp16"], tests["tg8"]
        assert (pp["n_prompt"], pp["n_gen"], tg["n_prompt"], tg["n_gen"]) == (16, 0, 0, 8)
        for p in (pp, tg):
            assert p["reps"] == 2 and len(p["samples_tps"]) == 2 and len(p["samples_ms"]) == 2
            assert p["tps_mean"] == pytest.approx(sum(p["samples_tps"]) / 2)
            assert p["tps_mean"] > 0 and p["tps_stddev"] >= 0
            n = p["n_prompt"] or p["n_gen"]
            for tps, ms in zip(p["samples_tps"], p["samples_ms"]):
                assert tps == pytest.approx(n / (ms / 1000))
            assert p["peak_rss_mib"] > 50 and p["peak_uss_mib"] > 10
            # absent figures carry their reason, never a zero
            if nvidia_gpu() is None:
                assert p["peak_vram_mib"] is None and "peak_vram_mib" in p["unavailable"]
            elif llama_cpp_offloads():
                assert p["peak_vram_mib"] > 0
        assert len(pp["samples_ttft_ms"]) == 2 and pp["ttft_ms_mean"] >= min(pp["samples_ms"])
        assert tg["ttft_ms_mean"] is None


def test_threads_share_one_model_load(threads_run):
    records = threads_run[0].json()
    # both thread counts ran in one worker on one loaded model: the same load record
    assert records[0]["model_load"] == records[1]["model_load"]


def test_result_files_are_written_and_valid(threads_run):
    res, out = threads_run
    files = sorted(out.glob("*.json"))
    assert len(files) == 2
    ids = {read_record(f).run_id for f in files}
    assert ids == {r["run_id"] for r in res.json()}
    assert not list(out.glob(".*tmp"))


def test_markdown_table_like_llama_bench(cli, tmp_path):
    res = cli("bench", "--pp", "8", "--tg", "4", "--reps", "1", "--out", str(tmp_path))
    assert res.code == 0, res.stderr
    header, sep, *rows = res.stdout.strip().splitlines()
    cols = [c.strip() for c in header.strip("|").split("|")]
    dev = ["dev"] if llama_cpp_offloads() else []  # a device column once a run is not on the CPU
    assert cols[:5 + len(dev)] == ["model", "size", "params", "backend", *dev, "threads"]
    assert "test" in cols and "t/s" in cols
    assert "ngl" not in cols and "n_batch" not in cols  # constant at their defaults: hidden
    assert [r.split("|")[cols.index("test") + 1].strip() for r in rows] == ["pp8", "tg4"]
    assert "±" in rows[0]


def test_varying_setting_gets_a_column(cli, tmp_path):
    res = cli("bench", "--pp", "8", "--tg", "none", "--reps", "1", "--n-batch", "4,8", "--out", str(tmp_path))
    assert res.code == 0, res.stderr
    header = res.stdout.splitlines()[0]
    assert "n_batch" in header
    # n_batch is a load-time setting: two load groups, two records
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_weight_repacking_is_a_load_setting_in_the_record(cli, tmp_path):
    res = cli("bench", "--pp", "8", "--tg", "none", "--reps", "1", "--set", "repack=0", "--format", "json",
              "--out", str(tmp_path))
    assert res.code == 0, res.stderr
    [record] = res.json()
    assert record["status"] == "ok" and record["backend"]["settings"]["repack"] is False


def test_the_repack_setting_reaches_llama_cpp_and_multi_token_decodes_run(smollm2):
    import llama_cpp.llama_cpp as low

    from harness.backends.llamacpp import LlamaCppBackend

    for repack in (None, False):
        backend = LlamaCppBackend(smollm2, LlamaCppBackend.Settings(n_ctx=64, repack=repack))
        n_vocab = backend.load().n_vocab
        try:
            assert backend._llm.model_params.use_extra_bufts is (repack_default() if repack is None else repack)
            assert backend.evaluate(list(range(100, 116)), logits="last").shape == (n_vocab,)
            assert backend.effective_settings()["repack"] is backend._llm.model_params.use_extra_bufts
        finally:
            backend.close()
    assert low.llama_model_default_params().use_extra_bufts is True  # the patch ends with the load


def test_csv_output(cli, tmp_path):
    res = cli("bench", "--pp", "8", "--tg", "4", "--reps", "1", "--format", "csv", "--out", str(tmp_path))
    assert res.code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["test"] for r in rows] == ["pp8", "tg4"]
    assert float(rows[0]["tps_mean"]) > 0 and rows[0]["model_sha256"]


def test_crash_in_one_configuration_is_recorded_and_others_run(cli, tmp_path, monkeypatch):
    """A worker that dies from SIGSEGV becomes a failed record; the next group still runs."""
    from harness.core import registry
    from harness.core.config import PerfTests
    from harness.core.models import resolve
    from harness.execution.plan import build_plan
    from harness.execution.runner import run_plan

    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setenv("PYTHONPATH", str(PLUGINS))
    registry.available.cache_clear()
    try:
        cls = registry.get("crashy")
        tests = PerfTests(pp=[8], tg=[], reps=1)
        groups = build_plan(cls, [resolve("smollm2-135m")], {"crash_on_load": [True, False]}, tests)
        assert len(groups) == 2
        outcome = run_plan(groups, tests, tmp_path, ["test"])
    finally:
        registry.available.cache_clear()
    crashed, fine = outcome.records
    assert crashed.status == "failed" and "SIGSEGV" in crashed.failures[0].cause
    assert crashed.backend.settings["crash_on_load"] is True
    assert fine.status == "ok" and fine.perf[0].test == "pp8"
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert {read_record(p).status for p in outcome.paths} == {"failed", "ok"}
