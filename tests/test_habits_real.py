"""llama-bench's, lm-eval's and vllm bench serve's forms on the real bundled model, and a
model benchmarked where Ollama (or a split download) left it. Each run here is shared by
the checks after it; every record written is checked against the published schema
(conftest)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from model_stores import make_ollama_store

pytestmark = pytest.mark.slow

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def ollama_root(tmp_path_factory, smollm2_path):
    root = tmp_path_factory.mktemp("ollama") / "models"
    return root, make_ollama_store(root, smollm2_path)


@pytest.fixture(scope="module")
def llama_bench_run(tmp_path_factory, ollama_root):
    """One bench in llama-bench's words: two models (the bundled name and the same file in
    Ollama's store, comma-listed), repeated -p, -pg, two depths, KV cache types, split mode."""
    from conftest import run_cli

    root, made = ollama_root
    out = tmp_path_factory.mktemp("bench-habits")
    res = run_cli("bench", "-m", "smollm2-135m,ollama:smollm2:135m", "-p", "8", "-p", "16", "-n", "4",
                  "-pg", "8,4", "-d", "0", "-d", "24", "-r", "1", "-t", "1", "-ctk", "q8_0", "-ctv", "q8_0",
                  "-sm", "none", "-mg", "0", "-ts", "1", "-o", "jsonl", "--out", str(out),
                  env={"OLLAMA_MODELS": str(root)})
    assert res.code == 0, res.stderr[-3000:]
    return res, out, made


def test_jsonl_output_and_one_record_per_model(llama_bench_run):
    res, out, made = llama_bench_run
    lines = res.stdout.strip().splitlines()
    records = [json.loads(x) for x in lines]
    assert len(records) == 2 and len(list(out.glob("*.json"))) == 2
    assert [r["model"]["ref"] for r in records] == ["smollm2-135m", "ollama:smollm2:135m"]


def test_the_ollama_model_is_read_in_place_and_recorded_as_ollamas(llama_bench_run, smollm2):
    res, _, made = llama_bench_run
    bundled, ollama = (json.loads(x) for x in res.stdout.strip().splitlines())
    m = ollama["model"]
    assert m["path"] == str(made["blob"].resolve()) and m["source"] == "ollama"
    assert m["store"]["tool"] == "ollama" and m["store"]["name"] == "smollm2:135m" and m["store"]["digest"] == made["digest"]
    assert m["sha256"] == smollm2.sha256 == bundled["model"]["sha256"]
    assert ollama["status"] == "ok" and {p["test"] for p in ollama["perf"]} == {p["test"] for p in bundled["perf"]}


def test_llama_bench_test_names_depths_and_pg(llama_bench_run):
    res, _, _ = llama_bench_run
    record = json.loads(res.stdout.splitlines()[0])
    perf = {p["test"]: p for p in record["perf"]}
    assert list(perf) == ["pp8", "pp16", "tg4", "pp8+tg4", "pp8 @ d24", "pp16 @ d24", "tg4 @ d24", "pp8+tg4 @ d24"]
    for name, p in perf.items():
        assert p["n_depth"] == (24 if "@ d24" in name else 0)
        assert len(p["samples_ms"]) == 1 and p["tps_mean"] > 0
    pg = perf["pp8+tg4 @ d24"]
    assert (pg["n_prompt"], pg["n_gen"]) == (8, 4)
    assert pg["samples_tps"][0] == pytest.approx(12 / (pg["samples_ms"][0] / 1000))  # both parts count
    # the context holds the deepest test: 24 tokens of depth, then 8 + 4
    assert record["backend"]["settings"]["n_ctx"] >= 36


def test_kv_cache_types_and_split_settings_are_recorded(llama_bench_run):
    res, _, _ = llama_bench_run
    for line in res.stdout.splitlines():
        s = json.loads(line)["backend"]["settings"]
        assert (s["type_k"], s["type_v"], s["split_mode"], s["main_gpu"], s["tensor_split"]) == ("q8_0", "q8_0", "none", 0, [1.0])
    assert "-ctk" in json.loads(res.stdout.splitlines()[0])["command"]


def test_show_prints_the_same_records_as_sql_csv_and_a_json_list(cli, llama_bench_run):
    _, out, _ = llama_bench_run
    (one,) = sorted(out.glob("*.json"))[:1]
    js = cli("show", str(one), "-f", "json")
    assert js.code == 0 and isinstance(js.json(), list) and len(js.json()) == 1  # a list even for one record
    sql = cli("show", str(out), "-f", "sql")
    db = sqlite3.connect(":memory:")
    db.executescript(sql.stdout)
    rows = db.execute("select test, n_depth, setting_type_k from test order by run_id, test").fetchall()
    assert len(rows) == 16 and ("pp8 @ d24", 24, "q8_0") in rows
    rows = list(csv.DictReader(io.StringIO(cli("show", str(out), "-f", "csv").stdout)))
    assert {r["test"] for r in rows} >= {"pp8+tg4", "tg4 @ d24"}
    md = cli("show", str(out)).stdout
    assert "pp8+tg4 @ d24" in md


def test_a_depth_past_the_trained_context_is_refused(cli, tmp_path):
    from cli_checks import assert_one_line_error

    r = cli("bench", "-d", "8190", "-p", "16", "-n", "none", "--out", str(tmp_path))
    assert_one_line_error(r, tmp_path, r"the largest test needs 8206 tokens but smollm2-135m was trained for 8192")


@pytest.fixture(scope="module")
def split_model(tmp_path_factory, smollm2_path) -> Path:
    """The bundled GGUF rewritten as two split files (gguf's writer, as llama.cpp's gguf-split does)."""
    import gguf

    reader = gguf.GGUFReader(str(smollm2_path), "r")
    dest = tmp_path_factory.mktemp("split") / "smollm2.gguf"
    writer = gguf.GGUFWriter(str(dest), reader.fields["general.architecture"].contents(),
                             split_max_tensors=(len(reader.tensors) + 1) // 2)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parts = sorted(dest.parent.glob("smollm2-*-of-00002.gguf"))
    assert [p.name for p in parts] == ["smollm2-00001-of-00002.gguf", "smollm2-00002-of-00002.gguf"]
    return parts[0]


def test_a_split_gguf_is_benchmarked_from_its_first_part(cli, split_model, smollm2, tmp_path):
    r = cli("bench", "-m", str(split_model), "-p", "8", "-n", "4", "-r", "1", "-t", "1", "-o", "json", "--out", str(tmp_path))
    assert r.code == 0, r.stderr[-3000:]
    (record,) = r.json()
    m = record["model"]
    parts = sorted(split_model.parent.glob("smollm2-*.gguf"))
    assert m["split_files"] == [str(p.resolve()) for p in parts]
    assert m["size_bytes"] == sum(p.stat().st_size for p in parts)
    assert m["parameters"] == smollm2.parameters  # tensors of both parts
    import hashlib

    assert m["sha256"] == hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    assert record["status"] == "ok" and [p["test"] for p in record["perf"]] == ["pp8", "tg4"]


def test_lm_eval_forms_on_a_real_eval(cli, tmp_path):
    out = tmp_path / "out"
    task = "mmlu_snapshot_generative_anatomy"  # 135 documents: --limit 0.01 is 2 of them
    r = cli("eval", "--tasks", task, "--limit", "0.01", "--num_fewshot", "1", "--seed", "7",
            "--gen_kwargs", "max_gen_toks=6", "--log_samples", "--output_path", str(out), "--threads", "1",
            "--no-cache", "-f", "json", env=OFFLINE)
    assert r.code == 0, r.stderr[-3000:]
    (record,) = r.json()
    ev = record["evaluation"]
    assert ev["limit"] == 0.01 and ev["seed"] == [7, 7, 7, 7] and ev["gen_kwargs"] == "max_gen_toks=6"
    assert ev["num_fewshot"] == 1
    rows = [a for a in record["accuracy"] if a["task"] == task]
    assert rows and all(a["n"] == 2 and a["num_fewshot"] == 1 for a in rows)
    samples = [json.loads(x) for x in Path(ev["samples_file"]).read_text().splitlines()]
    args = samples[0]["arguments"]
    gen = args[0][1] if isinstance(args, list) else args["gen_args_0"]["arg_1"]
    assert gen["max_gen_toks"] == 6  # --gen_kwargs reached every request
    assert len(list(out.glob("*.json"))) == 1


def test_load_forms_of_vllm_bench_serve_on_a_served_model(cli, tmp_path):
    out = tmp_path / "out"
    # --serve with no --model serves the bundled default, as bench does
    r = cli("load", "--serve", "llamacpp", "--rate", "20", "--burstiness", "0.5", "--requests", "4",
            "--input-len", "8", "--output-len", "4", "--warmup", "0", "--goodput", "ttft:600000", "tpot:600000",
            "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "50,90", "-f", "json", "--out", str(out))
    assert r.code == 0, r.stderr[-3000:]
    (record,) = r.json()
    assert record["model"]["ref"] == "smollm2-135m"
    (p,) = record["load"]
    assert p["burstiness"] == 0.5 and p["request_rate_per_s"] == 20
    assert p["slo"] == {"ttft_ms": 600000.0, "tpot_ms": 600000.0} and p["goodput_per_s"] > 0
    assert set(p["percentiles"]) == {"ttft_ms", "e2el_ms"} and set(p["percentiles"]["ttft_ms"]) == {"p50", "p90"}
    ttfts = sorted(s["ttft_ms"] for s in p["samples"] if s["ok"])
    assert ttfts[0] <= p["percentiles"]["ttft_ms"]["p50"] <= p["percentiles"]["ttft_ms"]["p90"] <= ttfts[-1]
    md = cli("show", str(out)).stdout
    assert "TTFT p50 ms" in md and "E2EL p90 ms" in md
